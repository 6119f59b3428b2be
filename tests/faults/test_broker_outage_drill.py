"""The broker outage drill on the production stack (PostgreSQL, Redis as the Celery broker):
Redis is stopped with SIGKILL in the middle of a job and started again after a few seconds,
empty (it keeps nothing on disk, so every message it held is gone). The rounds must go on
once it is back, with nothing lost: the database holds every state, agents talk to the web
only, and the sweep enqueues again an aggregation whose message was lost.

The drill runs its own redis-server on a free port, never the machine's shared one.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from faults_support import (
    DRILL_SEED,
    NUM_ROUNDS,
    Federation,
    Row,
    check_everything,
    drill_folder,
    federation,
    final_digest,
    log,
    runner_module,
    summary,
    utc_now,
    wait_for,
)
from kombu.exceptions import OperationalError
from service_support import POSTGRES_URL, missing_on_this_machine, require_services

pytestmark = pytest.mark.faults


def test_a_broker_that_refuses_the_aggregation_does_not_fail_the_upload(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The enqueue after the quorum's commit: a broker error is logged, not raised (the
    agent's upload was stored; the sweep enqueues the round again)."""
    from training import queue, tasks

    def refuse(round_id: int) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.round_aggregate_task, "delay", refuse)
    with caplog.at_level(logging.WARNING, logger="training.queue"):
        queue.round_aggregate_enqueue(42)
    assert "the sweep will enqueue it again" in caplog.text


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        missing_on_this_machine("needs the redis-server program (Debian: apt-get install redis-server)")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Federation, Row]]:
    """A federation on PostgreSQL (the ``test`` database, flushed) with a private Redis, and
    the record of an undisturbed job on it."""
    require_services("postgres")
    _require_redis_server()
    runner = runner_module()
    port = runner.free_port()
    broker_url = f"redis://127.0.0.1:{port}/0"
    with (
        drill_folder("broker-drill-") as data_dir,
        federation(runner, data_dir, POSTGRES_URL, broker_url, port) as fed,
    ):
        job_id = fed.start_job()
        assert fed.wait_for_job(job_id) == "completed"
        reference = check_everything(fed, job_id, None)
        summary("reference (PostgreSQL, Redis)", {"job": job_id, "final_sha256": final_digest(reference)})
        yield fed, reference


def _round_progress(fed: Federation, job_id: int) -> list[tuple[int, str, int]]:
    assert fed.watcher is not None
    return [(r.number, r.state, r.updates) for r in fed.watcher.rounds(job_id)]


def test_rounds_continue_after_a_redis_outage(stack: tuple[Federation, Row]) -> None:
    fed, reference = stack
    assert fed.watcher is not None
    watcher = fed.watcher
    rng = random.Random(DRILL_SEED + 3)
    number, delay, outage = rng.randint(1, NUM_ROUNDS - 1), rng.uniform(0, 0.15), rng.uniform(5, 10)
    started = time.monotonic()
    job_id = fed.start_job()
    wait_for(f"round {number} to open", lambda: watcher.round(job_id, number) is not None, 120, 0.001)
    time.sleep(delay)
    fed.kill("redis")
    at_kill = _round_progress(fed, job_id)
    log(f"redis killed {1000 * delay:.0f} ms into round {number}: {at_kill}")
    time.sleep(outage)
    during = _round_progress(fed, job_id)
    fed.start_redis()
    back_at = utc_now()
    log(f"redis back after {outage:.1f} s: {during}")
    assert fed.wait_for_job(job_id) == "completed"
    record = check_everything(fed, job_id, reference)
    stalled = next((n for n, state, _ in during if state != "closed"), None)
    closed = {r["number"]: r["closed_at"] for r in record["rounds"]}
    resumed_after = (
        None if stalled is None else (datetime.fromisoformat(closed[stalled]) - back_at).total_seconds()
    )
    agent_errors = [
        line
        for index in range(len(fed.sites))
        for line in fed.log_text(fed.agent_name(index)).splitlines()
        if "server answered 5" in line
    ]
    summary(
        "redis outage",
        {
            "seed": DRILL_SEED + 3,
            "outage_s": round(outage, 1),
            "rounds_at_kill": at_kill,
            "rounds_at_restart": during,
            "stalled_round_closed_s_after_redis_back": resumed_after,
            "agent_5xx_answers": len(agent_errors),
            "final_sha256_equal": final_digest(record) == final_digest(reference),
            "blobs": record["blob_check"],
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert agent_errors == [], "\n".join(agent_errors)
