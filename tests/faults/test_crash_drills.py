"""Crash drills on the embedded default (SQLite, the filesystem broker): SIGKILL the Celery
worker during aggregations, the control plane during uploads and an agent mid-round, start
each again, and check that no update was lost or counted twice, that every round made
exactly one model version, that every stored file matches its checksum, that the audit
chain holds, and that the job ends with the same models as an undisturbed job of the same
study.

The kills fall at random moments drawn from a seeded generator (``FEDHEALTH_DRILL_SEED``).
The worker's kills alternate between two triggers: the round was enqueued (the kill lands
wherever the delay puts it), and the round was claimed. For the second, the control plane
pauses after each claim (``FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS``, set by the drills
only), so the kill lands between the claim and the commit every time. Each drill prints
where its kills landed and how long recovery took (``pytest -s``).
``FEDHEALTH_FULL_DRILLS=1`` kills the worker 20 times instead of 3.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest
from faults_support import (
    AGENT_KILLS,
    CLAIM_KILL_DELAY_MAX,
    DRILL_SEED,
    MAX_KILLS_PER_ROUND,
    NUM_ROUNDS,
    WEB_KILLS,
    WORKER_KILLS,
    Federation,
    RoundRow,
    Row,
    check_everything,
    drill_folder,
    federation,
    final_digest,
    healthy,
    log,
    runner_module,
    summary,
    uploads_in_log,
    utc_now,
    wait_for,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Federation, Row]]:
    """One federation for the module, and the record of an undisturbed job on it."""
    with drill_folder("crash-drills-") as data_dir, federation(runner_module(), data_dir) as fed:
        job_id = fed.start_job()
        assert fed.wait_for_job(job_id) == "completed"
        reference = check_everything(fed, job_id, None)
        summary("reference", {"job": job_id, "rounds": NUM_ROUNDS, "final_sha256": final_digest(reference)})
        yield fed, reference


def _recoveries(record: Row, kills: list[Row]) -> list[float]:
    """Seconds from each kill to its round's closing (kills after the round's work was done
    left nothing to recover)."""
    closed = {r["number"]: datetime.fromisoformat(r["closed_at"]) for r in record["rounds"]}
    return [
        round((closed[k["round"]] - k["killed_at"]).total_seconds(), 2)
        for k in kills
        if not k["round_done_at_kill"]
    ]


def _figures(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    return {"count": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


# --- the Celery worker during aggregations ---------------------------------------------------


class AggregationKills:
    """Kills the aggregation worker at random moments of aggregations, starting it again each
    time. The moment is a random delay after an event seen in the round's row, the two
    events in turn, the claim first: the round was claimed (its ``aggregation_attempts`` went
    up; the worker is then in its pause point, before the maths and the commit) or enqueued
    (it became AGGREGATING, or the sweep enqueued it again)."""

    def __init__(self, fed: Federation, job_id: int, rng: random.Random) -> None:
        assert fed.watcher is not None
        self.fed, self.job_id, self.rng, self.watcher = fed, job_id, rng, fed.watcher
        self.seen: dict[int, tuple[str | None, int]] = {}
        self.enqueued_attempts: dict[int, int] = {}
        self.per_round: Counter[int] = Counter()
        self.kills: list[Row] = []

    def run(self, count: int) -> list[Row]:
        while len(self.kills) < count:
            trigger = ("claimed", "enqueued")[len(self.kills) % 2]
            delay = self.rng.uniform(0, 0.06 if trigger == "enqueued" else CLAIM_KILL_DELAY_MAX)
            row, event = self._next_event(trigger)
            self._kill(row, trigger, event, delay)
        return self.kills

    def _next_event(self, trigger: str) -> tuple[RoundRow, str]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for row in self.watcher.rounds(self.job_id):
                event = self._event(row)
                if event is not None and (event == trigger or event == "claimed"):
                    return row, event
            if self.watcher.job_state(self.job_id) != "running":
                raise AssertionError(f"the job ended after {len(self.kills)} kills")
            time.sleep(0.0005)
        raise AssertionError("no aggregation to kill within 120 s")

    def _event(self, row: RoundRow) -> str | None:
        """'enqueued' or 'claimed' if the row changed so since last seen, else None."""
        if row.state != "aggregating" or self.per_round[row.number] >= MAX_KILLS_PER_ROUND:
            return None
        previous = self.seen.get(row.number)
        self.seen[row.number] = (row.aggregating_since, row.attempts)
        if previous == (row.aggregating_since, row.attempts):
            return None
        if row.attempts > (previous[1] if previous else 0):
            return "claimed"
        self.enqueued_attempts[row.number] = row.attempts
        return "enqueued"

    def _kill(self, row: RoundRow, trigger: str, event: str, delay: float) -> None:
        time.sleep(delay)
        self.fed.kill("aggregator")
        killed_at = utc_now()
        after = self.watcher.round(self.job_id, row.number)
        assert after is not None
        self.kills.append(
            {
                "round": row.number,
                "trigger": event,
                "delay_ms": round(1000 * delay, 1),
                "landed": self._landing(after),
                "round_done_at_kill": after.state == "closed",
                "killed_at": killed_at,
            }
        )
        self.per_round[row.number] += 1
        started = time.monotonic()
        self.fed.start_worker("aggregator", "aggregation")
        self.kills[-1]["restart_s"] = round(time.monotonic() - started, 2)
        log(f"worker kill {len(self.kills)}: {self.kills[-1]}")

    def _landing(self, after: RoundRow) -> str:
        if after.state == "closed":
            return "after the commit"
        if after.attempts > self.enqueued_attempts.get(after.number, 0):
            return "during the aggregation (claimed, not committed)"
        queued = any(p.name.endswith(".aggregation.msg") for p in (self.fed.data_dir / "broker").iterdir())
        return "before it was taken from the queue" if queued else "after it was taken, before the claim"


def test_the_worker_killed_during_aggregations_loses_nothing(stack: tuple[Federation, Row]) -> None:
    fed, reference = stack
    rng = random.Random(DRILL_SEED)
    started = time.monotonic()
    job_id = fed.start_job()
    kills = AggregationKills(fed, job_id, rng).run(WORKER_KILLS)
    assert fed.wait_for_job(job_id) == "completed"
    record = check_everything(fed, job_id, reference)
    recoveries = _recoveries(record, kills)
    landed = Counter(k["landed"] for k in kills)
    summary(
        "worker kills during aggregation",
        {
            "seed": DRILL_SEED,
            "kills": len(kills),
            "landed": dict(landed),
            "recovery_s": _figures(recoveries),
            "restart_s": _figures([k["restart_s"] for k in kills]),
            "aggregation_attempts": [r["attempts"] for r in record["rounds"] if r["kind"] == "train"],
            "final_sha256_equal": final_digest(record) == final_digest(reference),
            "blobs": record["blob_check"],
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert len(kills) == WORKER_KILLS
    after_claims = [k["landed"] for k in kills if k["trigger"] == "claimed"]
    assert after_claims, "no kill was timed from a claim"
    assert set(after_claims) == {"during the aggregation (claimed, not committed)"}, kills


# --- the control plane during uploads --------------------------------------------------------


def _uploads_in_flight(fed: Federation, job_id: int, number: int) -> int:
    """Agents whose log shows their upload for the round begun but not yet accepted."""
    prefix = f"[job {job_id} round {number}] "
    texts = [fed.log_text(fed.agent_name(index)) for index in range(len(fed.sites))]
    return sum(prefix + "uploading update" in t and prefix + "update accepted" not in t for t in texts)


def _kill_web_in_round(fed: Federation, job_id: int, number: int, rng: random.Random) -> Row:
    """SIGKILL gunicorn at a random moment of round ``number``'s uploads: a random delay after
    the round opened, or after its first update arrived; start it again on the same port."""
    assert fed.watcher is not None
    watcher = fed.watcher
    trigger = rng.choice(["round opened", "first update"])
    delay = rng.uniform(0.04, 0.16) if trigger == "round opened" else rng.uniform(0, 0.03)
    downtime = rng.uniform(0.3, 2.0)

    def triggered() -> bool:
        row = watcher.round(job_id, number)
        return row is not None and (trigger == "round opened" or row.updates > 0)

    wait_for(f"round {number}: {trigger}", triggered, 120, 0.001)
    time.sleep(delay)
    fed.kill("web")
    killed_at = utc_now()
    in_flight = _uploads_in_flight(fed, job_id, number)
    current = watcher.round(job_id, number)
    assert current is not None
    time.sleep(downtime)
    fed.start_web()
    return {
        "round": number,
        "trigger": trigger,
        "delay_ms": round(1000 * delay),
        "updates_stored_at_kill": current.updates,
        "uploads_in_flight_at_kill": in_flight,
        "round_done_at_kill": current.state not in {"open", "collecting"},
        "down_s": round(downtime, 2),
        "killed_at": killed_at,
    }


def test_the_control_plane_killed_during_uploads_loses_nothing(stack: tuple[Federation, Row]) -> None:
    fed, reference = stack
    rng = random.Random(DRILL_SEED + 1)
    started = time.monotonic()
    job_id = fed.start_job()
    kills: list[Row] = []
    for number in range(1, WEB_KILLS + 1):
        kills.append(_kill_web_in_round(fed, job_id, number, rng))
        log(f"web kill {len(kills)}: {kills[-1]}")
    assert fed.wait_for_job(job_id) == "completed"
    record = check_everything(fed, job_id, reference)
    summary(
        "control plane kills during uploads",
        {
            "seed": DRILL_SEED + 1,
            "kills": len(kills),
            "updates_stored_at_kill": [k["updates_stored_at_kill"] for k in kills],
            "uploads_in_flight_at_kill": [k["uploads_in_flight_at_kill"] for k in kills],
            "recovery_s": _figures(_recoveries(record, kills)),
            "final_sha256_equal": final_digest(record) == final_digest(reference),
            "blobs": record["blob_check"],
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert healthy(fed.settings.url)


# --- an agent mid-round ----------------------------------------------------------------------


def _kill_agent_at(
    fed: Federation, job_id: int, index: int, number: int, step: str, delay: float
) -> Row | None:
    """SIGKILL site ``index``'s agent ``delay`` seconds after its state shows ``step`` for round
    ``number``; None if the round got past that step before it was seen. The agent is first
    stopped (SIGSTOP), so that its own state and what the server holds at the moment of the
    kill can both be read without a race."""
    assert fed.watcher is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = (fed.agent_state(index) or {}).get("current") or {}
        if current.get("job_id") == job_id and current.get("round_number", 0) >= number:
            if current["round_number"] > number or current["step"] == "uploaded":
                return None
            if current["step"] == step:
                time.sleep(delay)
                fed.pause(fed.agent_name(index))
                time.sleep(0.3)  # a request already sent in full is answered meanwhile
                at_kill = (fed.agent_state(index) or {}).get("current") or {}
                server_had_it = fed.watcher.has_update(job_id, number, fed.institution_ids[index])
                fed.kill(fed.agent_name(index))
                return {
                    "site": index + 1,
                    "round": number,
                    "seen_step": step,
                    "delay_ms": round(1000 * delay, 1),
                    "step_at_kill": at_kill.get("step"),
                    "server_had_it": server_had_it,
                }
        time.sleep(0.0003)
    raise AssertionError(f"site {index + 1} did not reach round {number} within 120 s")


def test_an_agent_killed_mid_round_resumes_without_a_second_upload(stack: tuple[Federation, Row]) -> None:
    fed, reference = stack
    rng = random.Random(DRILL_SEED + 2)
    started = time.monotonic()
    job_id = fed.start_job()
    kills: list[Row] = []
    misses = 0
    number = 1
    while len(kills) < AGENT_KILLS and number <= NUM_ROUNDS:
        index = len(kills) % len(fed.sites)
        step = "trained" if len(kills) % 2 == 0 else "downloaded"
        delay = rng.uniform(0, 0.04) if step == "trained" else rng.uniform(0, 0.02)
        kill = _kill_agent_at(fed, job_id, index, number, step, delay)
        number += 1
        if kill is None:
            misses += 1
            continue
        time.sleep(rng.uniform(0.2, 1.0))
        fed.start_agent(index)
        kills.append(kill)
        log(f"agent kill {len(kills)}: {kill}")
    assert fed.wait_for_job(job_id) == "completed"
    record = check_everything(fed, job_id, reference)  # includes: each agent sent one update per round
    for kill in kills:
        text = fed.log_text(fed.agent_name(kill["site"] - 1))
        sent = uploads_in_log(text, job_id)[kill["round"]]
        assert len(sent) == 1, (
            f"site {kill['site']} sent {len(sent)} different updates in round {kill['round']}"
        )
        resumed = (
            f"[job {job_id} round {kill['round']}] resuming: sending the update prepared before the restart"
        )
        kill["resumed_upload"] = resumed in text
        kill["upload_attempts"] = text.count(f"[job {job_id} round {kill['round']}] uploading update")
        if kill["step_at_kill"] == "trained" and not kill["server_had_it"]:
            assert kill["resumed_upload"], f"site {kill['site']} did not resume round {kill['round']}"
        if kill["server_had_it"]:
            assert kill["upload_attempts"] == 1, kill  # the server had it: no task, no second upload
    summary(
        "agent kills mid-round",
        {
            "seed": DRILL_SEED + 2,
            "kills": kills,
            "missed_rounds": misses,
            "final_sha256_equal": final_digest(record) == final_digest(reference),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert len(kills) == AGENT_KILLS, f"only {len(kills)} kills landed in {NUM_ROUNDS} rounds"
    for index in range(len(fed.sites)):
        child = fed.processes.children[fed.agent_name(index)]
        assert child.poll() is None, f"the agent of site {index + 1} exited with {child.returncode}"
