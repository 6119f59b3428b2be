"""Container health checks of the control plane (deploy/compose.yaml), one per role.

``python deploy/docker/healthcheck.py ROLE`` exits 0 when healthy, 1 otherwise:

- ``web``: gunicorn answers ``GET /admin/login/`` with 200 (the Host header is taken from
  ``ALLOWED_HOSTS``, since any other host gets a 400).
- ``worker`` / ``aggregator``: this container's Celery worker answers a ping via the broker.
- ``beat``: beat has written its schedule file within the last five minutes (it saves it
  every three).
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BEAT_STALE_SECONDS = 300


def _probe_host() -> str:
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = entry.strip().lstrip(".")
        if host and "*" not in host:
            return host
    return "localhost"


def web_healthy() -> bool:
    port = int(os.environ.get("FEDHEALTH_BIND", "127.0.0.1:8000").rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # As the TLS proxy would send it: plain HTTP here, https for Django.
        connection.request(
            "GET", "/admin/login/", headers={"Host": _probe_host(), "X-Forwarded-Proto": "https"}
        )
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def worker_healthy(node_prefix: str) -> bool:
    sys.path.insert(0, str(REPO_ROOT / "platform"))
    from fedplatform.celery import app  # only now: platform/ is on the path

    node = f"{node_prefix}@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=10)
    return any(node in reply for reply in replies)


def beat_healthy() -> bool:
    data_dir = Path(os.environ.get("FEDHEALTH_DATA_DIR", REPO_ROOT / "var"))
    now = time.time()
    return any(
        now - path.stat().st_mtime < BEAT_STALE_SECONDS for path in data_dir.glob("celerybeat-schedule*")
    )


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else "web"
    if role == "web":
        healthy = web_healthy()
    elif role in {"worker", "aggregator"}:
        healthy = worker_healthy(role)
    elif role == "beat":
        healthy = beat_healthy()
    else:
        print(f"unknown role {role!r}: web, worker, aggregator or beat", file=sys.stderr)
        return 2
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
