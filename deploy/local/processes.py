"""The local federation's processes: their command lines, starting, waiting and stopping.

Every child runs in its own process group and is written to ``children.pid`` in the data
folder, so that a later run can stop what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PID_FILE = "children.pid"


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class Processes:
    """Every child process, each in its own process group, stopped on exit."""

    logs: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, command: list[str], env: dict[str, str], cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        log_file = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen(  # noqa: S603
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children[name] = child
        with (self.logs.parent / PID_FILE).open("a") as pids:  # so that a later run can stop leftovers
            pids.write(f"{child.pid}\n")
        return child

    def check_alive(self) -> None:
        for name, child in self.children.items():
            if not name.startswith("agent") and child.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {child.returncode}; its log ends with:\n{tail}")

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        chosen = [n for n in (names or list(self.children)) if n in self.children]
        for name in chosen:
            _signal_group(self.children[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in chosen:
            child = self.children.pop(name)
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()


def stop_leftovers(data_dir: Path) -> None:
    """Stop process groups a killed earlier run left behind in the same data folder."""
    pid_file = data_dir / PID_FILE
    if not pid_file.exists():
        return
    for line in pid_file.read_text().split():
        pid = int(line)
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if str(data_dir).encode() in command_line or b"fedplatform" in command_line:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()


def _signal_group(child: subprocess.Popen[bytes], number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, number)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the control plane's settings ----------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def control_plane_env(data_dir: Path, database_url: str | None, broker_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_BROKER_URL"))}
    env.update({"FEDHEALTH_DATA_DIR": str(data_dir), "FEDHEALTH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    # Never Django's debug pages, even on this machine: they show settings and tracebacks to
    # whoever triggers an error. WhiteNoise serves the collected static files without it.
    env["FEDHEALTH_DEBUG"] = "false"
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env


def manage(settings: Settings, *arguments: str) -> str:
    result = subprocess.run(  # noqa: S603
        [str(BIN / "python"), str(REPO / "manage.py"), *arguments],
        cwd=REPO,
        env=settings.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def reset_database(settings: Settings) -> None:
    """A clean slate on a server database too, so that a second run works like the first."""
    manage(settings, "flush", "--noinput")


# --- command lines -------------------------------------------------------------------------


def web_command(port: int, threads: int) -> list[str]:
    """gunicorn with threads; the control plane lets half of them wait in long polls."""
    return [
        str(BIN / "gunicorn"),
        "--chdir",
        str(REPO / "platform"),
        "fedplatform.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        "2",
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        # Longer than a client's pause between polls (gunicorn's 2 s default races a client
        # polling every 2 s: it closes the idle connection as the client reuses it).
        "--keep-alive",
        "10",
    ]


def web_threads(num_sites: int) -> int:
    return max(16, 2 * num_sites)


def celery_command(*arguments: str) -> list[str]:
    return [str(BIN / "celery"), "--workdir", str(REPO / "platform"), "-A", "fedplatform", *arguments]


def worker_command(name: str, port: int, queues: str = "celery,aggregation") -> list[str]:
    """A Celery worker for ``queues``, named after ``name`` and the control plane's port.

    Threads, not prefork: a forked child of a parent that ran torch can deadlock.
    """
    return celery_command(
        "worker",
        "--queues",
        queues,
        "--pool",
        "threads",
        "--concurrency",
        "4",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"{name}-{port}@%h",
    )


def beat_command(schedule: Path) -> list[str]:
    return celery_command("beat", "--loglevel", "INFO", "--schedule", str(schedule))


def agent_command(*arguments: str) -> list[str]:
    return [str(BIN / "silo-agent"), *arguments]


# --- starting and waiting ------------------------------------------------------------------


def start_control_plane(processes: Processes, settings: Settings, workers: int) -> None:
    """gunicorn, one Celery worker for every queue and Celery beat; waits until healthy."""
    threads = web_threads(workers)
    # Without DEBUG, WhiteNoise serves STATIC_ROOT only (not the apps' folders): fill it first.
    manage(settings, "collectstatic", "--noinput")
    # The control plane lets half of them wait in long polls (FEDHEALTH_LONG_POLL_PER_PROCESS).
    web_env = {**settings.env, "FEDHEALTH_WEB_THREADS": str(threads)}
    processes.start("web", web_command(settings.port, threads), web_env)
    processes.start("worker", worker_command("worker", settings.port), settings.env)
    processes.start("beat", beat_command(settings.data_dir / "celerybeat-schedule"), settings.env)
    wait_until_healthy(processes, settings)


def wait_until_healthy(processes: Processes, settings: Settings, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if httpx.get(f"{settings.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the control plane did not become healthy in time")


@contextlib.contextmanager
def running_control_plane(
    data_dir: Path, port: int, database_url: str | None, broker_url: str | None, workers: int
) -> Iterator[tuple[Processes, Settings]]:
    """A fresh data folder, a migrated and emptied database, and a healthy control plane;
    every process stopped at the end, whatever happens."""
    stop_leftovers(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir, port or free_port(), control_plane_env(data_dir, database_url, broker_url))
    processes = Processes(data_dir / "logs")
    try:
        manage(settings, "migrate", "--noinput")
        reset_database(settings)
        start_control_plane(processes, settings, workers)
        yield processes, settings
    finally:
        processes.stop()
