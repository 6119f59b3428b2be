"""The crash drills' harness: a federation of separate processes built from the pieces of
``deploy/run_local.py``, whose processes the drills kill with SIGKILL and start again, and
the checks that nothing was lost, counted twice or changed by it.

- :class:`Federation`: the control plane as gunicorn, Celery beat, one Celery worker for
  the ``celery`` queue (the sweep) and one for the ``aggregation`` queue (so that the
  aggregation can be killed on its own), three sites with their agents, and one study every
  site approved. Jobs of that study run one after another on it; with the same study
  (same seed, same sites) every undisturbed job makes the same models, byte for byte.
- :class:`RoundWatcher`: reads the rounds straight from the database, every millisecond if
  need be, and without the web server (which a drill may just have killed).
- :func:`job_record`, :func:`check_job`, :func:`check_blobs`: what the database, the blob
  store, the audit chain and the agents' logs say after a job, and the drills' invariants.

``FEDHEALTH_FULL_DRILLS=1`` runs the full drills (20 worker kills); the default is a few
kills of each kind, a few minutes on CI. ``FEDHEALTH_DRILL_SEED`` changes the random
moments, ``FEDHEALTH_DRILL_KEEP=1`` keeps the federations' folders (logs included).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
FULL_DRILLS = os.environ.get("FEDHEALTH_FULL_DRILLS", "") == "1"
#: Seed of the drills' random choices (kill delays, downtimes); printed with every result.
DRILL_SEED = int(os.environ.get("FEDHEALTH_DRILL_SEED", "20240611"))
WORKER_KILLS = 20 if FULL_DRILLS else 3
WEB_KILLS = 8 if FULL_DRILLS else 3
AGENT_KILLS = 6 if FULL_DRILLS else 2
#: Rounds of every job (the drilled ones and the undisturbed one they are compared with):
#: room for the worker kills at MAX_KILLS_PER_ROUND, with rounds to spare, since a round
#: that opens while the killed worker restarts is often aggregated before it can be hit.
NUM_ROUNDS = 20 if FULL_DRILLS else 5
#: Kills per round at most: every kill after the claim costs one of the round's
#: MAX_AGGREGATION_ATTEMPTS (5) starts.
MAX_KILLS_PER_ROUND = 2
NUM_SITES = 3
#: An aggregation that has not finished after this many seconds is enqueued again by the
#: sweep (beat runs it every 2 s); production keeps the default of 300 s.
STUCK_AGGREGATION_SECONDS = 3
#: The control plane's pause point for the drills: each aggregation waits this long after
#: its claim is committed, so a kill up to :data:`CLAIM_KILL_DELAY_MAX` after the claim is
#: seen lands before the commit, on a loaded machine too (the watcher polls every 0.5 ms).
PAUSE_AFTER_CLAIM_SECONDS = 0.5
CLAIM_KILL_DELAY_MAX = 0.008
JOB_TIMEOUT = 900.0 if FULL_DRILLS else 300.0
#: Keep each drill's folder (logs, database, blobs) instead of deleting it at the end.
KEEP_FOLDERS = os.environ.get("FEDHEALTH_DRILL_KEEP", "") == "1"

Row = dict[str, Any]


logging.getLogger("httpx").setLevel(logging.WARNING)  # the harness's own requests


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S.%f}] {message}", file=sys.stderr, flush=True)


def runner_module() -> ModuleType:
    """deploy/run_local.py, imported by path: the pieces of deploy/local/ (the processes'
    command lines, the coordinator's setup) as ``make demo`` uses them."""
    if "run_local" in sys.modules:
        return sys.modules["run_local"]
    spec = importlib.util.spec_from_file_location("run_local", REPO / "deploy" / "run_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_local"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def drill_folder(prefix: str) -> Iterator[Path]:
    """A fresh folder for one federation; deleted afterwards unless FEDHEALTH_DRILL_KEEP=1."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    log(f"federation folder: {folder}")
    try:
        yield folder
    finally:
        if not KEEP_FOLDERS:
            shutil.rmtree(folder, ignore_errors=True)


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- reading the rounds straight from the database ------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    id: int
    number: int
    kind: str
    state: str
    attempts: int
    aggregating_since: str | None
    updates: int


class RoundWatcher:
    """Plain SQL reads of the round table (SQLite file or PostgreSQL), no web, no Django."""

    QUERY = (
        "SELECT r.id, r.number, r.kind, r.state, r.aggregation_attempts, r.aggregating_since,"
        " (SELECT COUNT(*) FROM training_update u WHERE u.round_id = r.id)"
        " FROM training_round r WHERE r.job_id = {p} ORDER BY r.number"
    )

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self._postgres = bool(database_url and database_url.startswith("postgres"))
        self._connection: Any
        if self._postgres:
            import psycopg

            self._connection = psycopg.connect(str(database_url), autocommit=True)
        else:
            # Autocommit reads: no read transaction is left open to hold back the WAL.
            self._connection = sqlite3.connect(data_dir / "db.sqlite3", timeout=30, isolation_level=None)

    def rounds(self, job_id: int) -> list[RoundRow]:
        query = self.QUERY.format(p="%s" if self._postgres else "?")
        rows = self._connection.execute(query, (job_id,)).fetchall()
        return [
            RoundRow(
                int(r[0]), int(r[1]), r[2], r[3], int(r[4]), None if r[5] is None else str(r[5]), int(r[6])
            )
            for r in rows
        ]

    def round(self, job_id: int, number: int) -> RoundRow | None:
        return next((r for r in self.rounds(job_id) if r.number == number), None)

    def has_update(self, job_id: int, number: int, institution_id: int) -> bool:
        p = "%s" if self._postgres else "?"
        query = (
            "SELECT COUNT(*) FROM training_update u JOIN training_round r ON u.round_id = r.id"
            f" WHERE r.job_id = {p} AND r.number = {p} AND u.institution_id = {p}"
        )
        return int(self._connection.execute(query, (job_id, number, institution_id)).fetchone()[0]) > 0

    def job_state(self, job_id: int) -> str:
        query = "SELECT state FROM training_job WHERE id = " + ("%s" if self._postgres else "?")
        return str(self._connection.execute(query, (job_id,)).fetchone()[0])

    def close(self) -> None:
        self._connection.close()


# --- the federation -------------------------------------------------------------------------


@dataclass
class Federation:
    """A control plane with separate sweep and aggregation workers, three sites, one study."""

    runner: ModuleType
    data_dir: Path
    database_url: str | None = None
    broker_url: str | None = None
    settings: Any = None
    processes: Any = None
    api: Any = None
    sites: list[Any] = field(default_factory=list)
    institution_ids: list[int] = field(default_factory=list)
    study_id: int = 0
    watcher: RoundWatcher | None = None
    #: Start a private redis-server on this port first (nothing kept on disk) for the broker.
    redis_port: int | None = None

    # --- processes ----------------------------------------------------------------------

    def open(self) -> None:
        run = self.runner
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = run.control_plane_env(self.data_dir, self.database_url, self.broker_url)
        env["FEDHEALTH_STUCK_AGGREGATION_SECONDS"] = str(STUCK_AGGREGATION_SECONDS)
        env["FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS"] = str(PAUSE_AFTER_CLAIM_SECONDS)
        self.settings = run.Settings(self.data_dir, run.free_port(), env)
        self.processes = run.Processes(self.data_dir / "logs")
        if self.redis_port is not None:
            self.start_redis()
        run.manage(self.settings, "migrate", "--noinput")
        run.reset_database(self.settings)  # a server database may hold an earlier run's rows
        self.start_web()
        self.start_worker("sweeper", "celery")
        self.start_worker("aggregator", "aggregation")
        self.processes.start("beat", run.beat_command(self.data_dir / "celerybeat"), self.settings.env)
        self.watcher = RoundWatcher(self.data_dir, self.database_url)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.processes is not None:
            self.processes.stop(timeout=10)

    def start_redis(self) -> None:
        """A redis-server of this federation's own, keeping nothing on disk, on ``redis_port``."""
        command = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.processes.start("redis", command, self.settings.env, cwd=self.data_dir)

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", int(self.redis_port or 0)), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    return probe.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for("redis-server to answer", answers, timeout=30)

    def start_web(self) -> None:
        """gunicorn as run_local starts it, on this federation's port (the same after a kill)."""
        command = self.runner.web_command(self.settings.port, threads=16)
        self.processes.start("web", command, self.settings.env)
        self.runner.wait_until_healthy(self.processes, self.settings)

    def start_worker(self, name: str, queues: str, *, wait: bool = True) -> None:
        """A Celery worker (threads pool, as run_local's) for ``queues``; waits until it consumes."""
        log_file = self.log_path(name)
        offset = log_file.stat().st_size if log_file.exists() else 0
        command = self.runner.worker_command(name, self.settings.port, queues)
        child = self.processes.start(name, command, self.settings.env)
        if wait:

            def ready() -> bool:
                if child.poll() is not None:
                    raise AssertionError(f"{name} exited with {child.returncode}: {self.log_tail(name)}")
                return b" ready." in log_file.read_bytes()[offset:]

            wait_for(f"the {name} worker to be ready", ready, timeout=60)

    def kill(self, name: str) -> None:
        """SIGKILL a child's whole process group (gunicorn's workers too) and reap it."""
        child = self.processes.children.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    def pause(self, name: str) -> None:
        os.killpg(self.processes.children[name].pid, signal.SIGSTOP)

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, size: int = 3000) -> str:
        return self.log_text(name)[-size:]

    def log_text(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    # --- the coordinator's setup, over the REST API, as run_local does it --------------

    def set_up_study(self, seed: int = 0) -> None:
        run = self.runner
        args = run.parse_args(["--sites", str(NUM_SITES), "--seed", str(seed)])
        dataset = run.load_builtin(args.dataset)
        shares, _ = run.split_data(dataset, NUM_SITES, seed)
        self.api = run.Api(self.settings.url, run.create_user(self.settings, "coordinator", "coordinator"))
        self.sites = run.write_sites(self.data_dir, shares, args.dataset, self.settings.url)
        self.institution_ids, owners = run.enroll_sites(self.api, self.settings, self.sites)
        scaling = run.agreed_scaling(self.sites, self.settings.env)
        study = self.api.call(
            "POST", "studies/", json=run.study_body(dataset, args, scaling, self.institution_ids)
        )
        self.study_id = study["id"]
        run.approve_study(owners, self.institution_ids, self.study_id)
        for index in range(NUM_SITES):
            self.start_agent(index)

    def agent_name(self, index: int) -> str:
        return f"agent-{self.sites[index].folder.name}"

    def start_agent(self, index: int) -> None:
        site = self.sites[index]
        command = self.runner.agent_command("run", "--config", str(site.config))
        self.processes.start(self.agent_name(index), command, self.settings.env, cwd=site.folder)

    def agent_state(self, index: int) -> Row | None:
        """The agent's ``agent-state.json``, or None while it has none (or it is being replaced)."""
        try:
            return dict(json.loads((self.sites[index].folder / "state" / "agent-state.json").read_bytes()))
        except (OSError, ValueError):
            return None

    # --- jobs ---------------------------------------------------------------------------

    def start_job(self, num_rounds: int = NUM_ROUNDS) -> int:
        job = self.api.call(
            "POST",
            "jobs/",
            json={
                "study": self.study_id,
                "num_rounds": num_rounds,
                "min_updates": NUM_SITES,  # every round waits for every site: the same models each time
                "round_deadline_seconds": 600,
            },
        )
        self.api.call("POST", f"jobs/{job['id']}/start/")
        return int(job["id"])

    def wait_for_job(self, job_id: int, timeout: float = JOB_TIMEOUT) -> str:
        assert self.watcher is not None
        watcher = self.watcher
        wait_for(
            f"job {job_id} to end",
            lambda: watcher.job_state(job_id) in {"completed", "failed", "cancelled"},
            timeout,
            interval=0.2,
        )
        return watcher.job_state(job_id)

    def manage(self, *arguments: str) -> str:
        return str(self.runner.manage(self.settings, *arguments))


@contextlib.contextmanager
def federation(
    runner: ModuleType,
    data_dir: Path,
    database_url: str | None = None,
    broker_url: str | None = None,
    redis_port: int | None = None,
) -> Iterator[Federation]:
    fed = Federation(runner, data_dir, database_url, broker_url, redis_port=redis_port)
    try:
        fed.open()
        fed.set_up_study()
        yield fed
    finally:
        fed.close()


# --- what a job left behind -----------------------------------------------------------------

_DUMP = """
import json
from institutions.models import Institution
from training.models import Job, ModelVersion, Round, Update
job = Job.objects.get(pk={job_id})
def at(value):
    return value.isoformat() if value else None
print(json.dumps({{
    "state": job.state,
    "failure_reason": job.failure_reason,
    "num_rounds": job.num_rounds,
    "rounds": [
        {{"id": r.pk, "number": r.number, "kind": r.kind, "state": r.state,
          "expected": r.expected_updates, "attempts": r.aggregation_attempts,
          "opened_at": at(r.opened_at), "last_update_at": at(r.last_update_at), "closed_at": at(r.closed_at)}}
        for r in Round.objects.filter(job=job).order_by("number", "pk")
    ],
    "updates": [
        {{"round": u.round_id, "institution": u.institution_id, "sha256": u.sha256,
          "num_examples": u.num_examples, "received_at": at(u.received_at)}}
        for u in Update.objects.filter(round__job=job).order_by("round_id", "institution_id", "pk")
    ],
    "versions": [
        {{"number": v.number, "sha256": v.sha256, "size": v.size, "round": v.made_by_round_id,
          "parent": v.parent.number if v.parent else None, "provenance": v.provenance}}
        for v in ModelVersion.objects.filter(job=job).select_related("parent").order_by("number", "pk")
    ],
    "institutions": {{str(i.pk): i.name for i in Institution.objects.all()}},
}}))
"""


def job_record(fed: Federation, job_id: int) -> Row:
    """The job's rounds, updates and model versions, read with the ORM in a manage.py shell."""
    output = fed.manage("shell", "-c", _DUMP.format(job_id=job_id))
    return dict(json.loads(output.strip().splitlines()[-1]))


UPLOAD_LINE = re.compile(r"\[job (\d+) round (\d+)\] uploading update of \d+ bytes \(sha256 ([0-9a-f]{16})\)")


def uploads_in_log(text: str, job_id: int) -> dict[int, set[str]]:
    """Round number -> the digests (first 16 hex digits) this agent tried to upload for it."""
    sent: dict[int, set[str]] = {}
    for job, number, digest in UPLOAD_LINE.findall(text):
        if int(job) == job_id:
            sent.setdefault(int(number), set()).add(digest)
    return sent


def check_job(fed: Federation, job_id: int, record: Row, reference: Row | None) -> None:
    """The drills' invariants: every update counted once, one model version per round, every
    version made from exactly its round's updates, and (given ``reference``, an undisturbed
    job of the same study) the same models, version by version."""
    assert record["state"] == "completed", f"job {job_id} ended {record['state']}: {record['failure_reason']}"
    num_rounds = record["num_rounds"]
    rounds = record["rounds"]
    assert [r["number"] for r in rounds] == list(range(1, num_rounds + 2)), "one row per round number"
    assert all(r["state"] == "closed" for r in rounds), [(r["number"], r["state"]) for r in rounds]
    updates_by_round: dict[int, list[Row]] = {}
    for update in record["updates"]:
        updates_by_round.setdefault(update["round"], []).append(update)
    for round_ in rounds:
        received = updates_by_round.get(round_["id"], [])
        institutions = sorted(u["institution"] for u in received)
        assert institutions == sorted(fed.institution_ids), (
            f"round {round_['number']}: updates from {institutions}, expected one from each of "
            f"{sorted(fed.institution_ids)}"
        )
        assert round_["expected"] == NUM_SITES
    _check_versions(record, updates_by_round)
    _check_agent_logs(fed, job_id, record, updates_by_round)
    if reference is not None:
        mine = [(v["number"], v["sha256"]) for v in record["versions"]]
        theirs = [(v["number"], v["sha256"]) for v in reference["versions"]]
        assert mine == theirs, f"models differ from the undisturbed run:\n{mine}\n{theirs}"


def _check_versions(record: Row, updates_by_round: dict[int, list[Row]]) -> None:
    versions = record["versions"]
    numbers = [v["number"] for v in versions]
    assert numbers == list(range(record["num_rounds"] + 1)), f"model versions {numbers}: one per round"
    round_ids = {r["number"]: r["id"] for r in record["rounds"]}
    names = record["institutions"]
    for version in versions[1:]:
        number = version["number"]
        assert version["round"] == round_ids[number], f"version {number} was made by another round"
        assert version["parent"] == number - 1
        used = [(u["institution"], u["sha256"], u["num_examples"]) for u in version["provenance"]["updates"]]
        stored = sorted(
            (names[str(u["institution"])], u["sha256"], u["num_examples"])
            for u in updates_by_round[round_ids[number]]
        )
        assert sorted(used) == stored, f"version {number} was not made from exactly its round's updates"


def _check_agent_logs(
    fed: Federation, job_id: int, record: Row, updates_by_round: dict[int, list[Row]]
) -> None:
    """What each agent uploaded is what the server counted, and never two different updates."""
    round_ids = {r["number"]: r["id"] for r in record["rounds"] if r["kind"] == "train"}
    for index, institution_id in enumerate(fed.institution_ids):
        sent = uploads_in_log(fed.log_text(fed.agent_name(index)), job_id)
        for number, round_id in round_ids.items():
            stored = [
                u["sha256"][:16] for u in updates_by_round[round_id] if u["institution"] == institution_id
            ]
            assert sent.get(number) == set(stored), (
                f"site {index + 1}, round {number}: uploaded {sent.get(number)}, the server counted {stored}"
            )


@dataclass(frozen=True)
class BlobCheck:
    blobs: int
    leftovers: int


def _check_named_by_digest(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.suffix == ".safetensors", path
    assert digest == path.stem, f"{path} does not match its checksum ({digest})"


def check_blobs(fed: Federation) -> BlobCheck:
    """Every file in the control plane's blob store is named by the SHA-256 of its bytes;
    temporary files a killed process left behind (never under a real name) are counted."""
    root = fed.data_dir / "models" / "blobs"
    blobs = leftovers = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith(".incoming-"):
            leftovers += 1
            continue
        _check_named_by_digest(path)
        assert path.parent.name == path.stem[:2], path
        blobs += 1
    return BlobCheck(blobs, leftovers)


def check_audit_chain(fed: Federation) -> str:
    output = fed.manage("audit_verify").strip()
    assert output.startswith("audit chain OK"), output
    return output


def check_everything(fed: Federation, job_id: int, reference: Row | None) -> Row:
    record = job_record(fed, job_id)
    check_job(fed, job_id, record, reference)
    blobs = check_blobs(fed)
    audit = check_audit_chain(fed)
    record["blob_check"] = {
        "blobs": blobs.blobs,
        "leftover_temporary_files": blobs.leftovers,
    }
    record["audit"] = audit
    return record


def final_digest(record: Row) -> str:
    return str(record["versions"][-1]["sha256"])


def summary(name: str, details: Row) -> None:
    """One JSON line per drill on stderr (shown with ``-s``, and on failure)."""
    log(f"DRILL {name}: {json.dumps(details, default=str)}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
