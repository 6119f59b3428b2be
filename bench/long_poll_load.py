"""Does the rest of the control plane stay responsive while agents long-poll?

Starts a real control plane (gunicorn with deploy/gunicorn.conf.py: 2 workers of 16 threads,
SQLite and the file cache in a temporary folder), enrolls 11 agents, then for 30 s: 10 agents
each hold one ``GET /api/agent/v1/work?wait=30`` and one more key tries 50 concurrent ones,
while ``/healthz`` and the coordinator's ``GET /api/v1/jobs/`` are timed over and over.
Runs twice: with the shipped long-poll limits, and with them lifted (as before they
existed). Prints the figures; takes about a minute and a half.

    python bench/long_poll_load.py
    python bench/long_poll_load.py --modes limited      # only the shipped limits
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy"))

import run_local  # noqa: E402

AGENTS = 10
GREEDY_POLLS = 50
WAIT_SECONDS = 30
#: Environment of each run: the shipped limits, and limits too high to matter.
MODES = {
    "limited": {},
    "unlimited": {"FEDHEALTH_LONG_POLL_PER_CREDENTIAL": "1000", "FEDHEALTH_LONG_POLL_PER_PROCESS": "1000"},
}


@dataclass(frozen=True)
class Enrolled:
    coordinator_token: str
    agent_keys: list[str]


def start_web(processes: run_local.Processes, settings: run_local.Settings) -> None:
    processes.start(
        "web", [str(run_local.BIN / "gunicorn"), "--config", "deploy/gunicorn.conf.py"], settings.env
    )
    run_local.wait_until_healthy(processes, settings)


def enroll_agents(settings: run_local.Settings, count: int) -> Enrolled:
    token = run_local.create_user(settings, "bench-coordinator", "coordinator")
    api = run_local.Api(settings.url, token)
    keys = []
    for number in range(count):
        institution = api.call("POST", "institutions/", json={"name": f"Hospital {number}"})
        enrollment = api.call("POST", f"institutions/{institution['id']}/enrollment-tokens/")
        response = httpx.post(f"{settings.url}/api/agent/v1/enroll", json={"token": enrollment["token"]})
        response.raise_for_status()
        keys.append(response.json()["key"])
    return Enrolled(coordinator_token=token, agent_keys=keys)


def long_poll(url: str, key: str) -> int:
    with httpx.Client(timeout=WAIT_SECONDS + 60) as client:
        try:
            return client.get(
                f"{url}/api/agent/v1/work?wait={WAIT_SECONDS}", headers={"Authorization": f"Agent {key}"}
            ).status_code
        except httpx.HTTPError:
            return 0


def probe(url: str, headers: dict[str, str], until: float) -> list[float]:
    """Latencies (ms) of one request after another until ``until``."""
    latencies = []
    with httpx.Client(timeout=WAIT_SECONDS + 60, headers=headers) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            client.get(url).raise_for_status()
            latencies.append(1000 * (time.monotonic() - started))
            time.sleep(0.1)
    return latencies


def summary(latencies: list[float]) -> dict[str, float | int]:
    return {
        "samples": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(max(latencies), 1),
    }


def statuses(futures: list[Future[int]]) -> dict[str, int]:
    """Answers by status; "waiting": polls the server had not answered when the run ended."""
    counts = Counter(str(future.result()) if future.done() else "waiting" for future in futures)
    return dict(sorted(counts.items()))


def under_load(
    settings: run_local.Settings, enrolled: Enrolled, pool: ThreadPoolExecutor
) -> dict[str, object]:
    agents, greedy = enrolled.agent_keys[:AGENTS], enrolled.agent_keys[AGENTS]
    started = time.monotonic()
    agent_polls = [pool.submit(long_poll, settings.url, key) for key in agents]
    greedy_polls = [pool.submit(long_poll, settings.url, greedy) for _ in range(GREEDY_POLLS)]
    time.sleep(1.0)  # every poll has arrived
    until = time.monotonic() + WAIT_SECONDS - 5
    coordinator = {"Authorization": f"Token {enrolled.coordinator_token}"}
    health = pool.submit(probe, f"{settings.url}/healthz", {}, until)
    jobs = pool.submit(probe, f"{settings.url}/api/v1/jobs/", coordinator, until)
    health_latencies, job_latencies = health.result(), jobs.result()
    # Polls still unanswered a little after their wait are counted as waiting, not awaited.
    wait(agent_polls + greedy_polls, timeout=max(0.0, started + WAIT_SECONDS + 3 - time.monotonic()))
    greedy_statuses = statuses(greedy_polls)
    return {
        "healthz": summary(health_latencies),
        "jobs_list": summary(job_latencies),
        "greedy_key_polls_answered_429": greedy_statuses.get("429", 0),
        "greedy_key_statuses": greedy_statuses,
        "agent_poll_statuses": statuses(agent_polls),
    }


def run_mode(mode: str, data_dir: Path, enrolled: Enrolled | None) -> tuple[dict[str, object], Enrolled]:
    env = run_local.control_plane_env(data_dir, None, None)
    port = run_local.free_port()
    env.update(
        {
            "FEDHEALTH_BIND": f"127.0.0.1:{port}",
            "FEDHEALTH_WEB_WORKERS": "2",
            "FEDHEALTH_WEB_THREADS": "16",
            "FEDHEALTH_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
            **MODES[mode],
        }
    )
    settings = run_local.Settings(data_dir=data_dir, port=port, env=env)
    processes = run_local.Processes(logs=data_dir / "logs")
    with ThreadPoolExecutor(max_workers=AGENTS + GREEDY_POLLS + 2) as pool:
        try:
            if enrolled is None:
                run_local.manage(settings, "migrate", "--noinput")
            start_web(processes, settings)
            enrolled = enrolled or enroll_agents(settings, AGENTS + 1)
            run_local.log(
                f"{mode}: {AGENTS} agents hold a {WAIT_SECONDS} s poll, one key tries {GREEDY_POLLS}"
            )
            return under_load(settings, enrolled, pool), enrolled
        finally:
            processes.stop(timeout=2)  # polls still waiting end with a connection error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    enrolled = None
    with tempfile.TemporaryDirectory(prefix="fedhealth-long-poll-") as folder:
        data_dir = Path(folder)
        (data_dir / "logs").mkdir()
        for mode in args.modes:
            results[mode], enrolled = run_mode(mode, data_dir, enrolled)
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
