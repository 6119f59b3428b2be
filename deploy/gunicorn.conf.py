"""gunicorn configuration of the control plane: ``gunicorn --config deploy/gunicorn.conf.py``.

Runs behind a TLS-terminating proxy (deploy/nginx/fedhealth.conf) and must only be reached
through it: nginx receives whole request bodies first (``client_body_timeout``), bounds
connections per client (``limit_conn``) and overwrites ``X-Forwarded-For``, on which the
enrollment throttle relies (``FEDHEALTH_TRUSTED_PROXY_COUNT=1``).

The agent API long-polls (``GET /api/agent/v1/work?wait=30`` holds a request open for up to
``FEDHEALTH_LONG_POLL_MAX_SECONDS``, 30 s), so each worker process serves many requests at
once on threads (gthread); a sync worker would be blocked by a single waiting agent. The
control plane lets at most half of a worker's threads wait in long polls
(``FEDHEALTH_LONG_POLL_PER_PROCESS``, from ``FEDHEALTH_WEB_THREADS`` below).

Environment variables read here (all optional):

- ``FEDHEALTH_BIND``: address to listen on, default ``127.0.0.1:8000``.
- ``FEDHEALTH_WEB_WORKERS``: worker processes, default 2 per CPU available to this process.
- ``FEDHEALTH_WEB_THREADS``: threads per worker, default 16.
- ``FEDHEALTH_FORWARDED_ALLOW_IPS``: addresses of the proxy whose ``X-Forwarded-*`` headers
  are trusted, default ``127.0.0.1,::1``.
- ``FEDHEALTH_BODY_TIMEOUT_SECONDS``: a request body from which nothing arrives for this long
  is abandoned (a JSON 400) and its thread freed, default 15.
"""

from __future__ import annotations

import os
import select
import ssl
from pathlib import Path
from typing import Any

#: The repository's ``platform/`` folder (a plain folder, never a package named "platform").
PLATFORM_DIR = Path(__file__).resolve().parent.parent / "platform"

#: The longest an agent's long poll may hold a request (settings.FEDHEALTH_LONG_POLL_MAX_SECONDS).
LONG_POLL_MAX_SECONDS = 30


def _available_cpus() -> int:
    """CPUs this process may run on (respects cgroup cpusets and taskset, unlike cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


# --- Application --------------------------------------------------------------------------
wsgi_app = "fedplatform.wsgi:application"
chdir = str(PLATFORM_DIR)
# No preload_app: the app is imported in each worker after the fork, so no state of torch,
# numpy's thread pools or database connections is ever shared across a fork.
preload_app = False

# --- Sockets and processes ----------------------------------------------------------------
bind = [os.environ.get("FEDHEALTH_BIND", "127.0.0.1:8000")]
worker_class = "gthread"
workers = _positive_int("FEDHEALTH_WEB_WORKERS", 2 * _available_cpus())
threads = _positive_int("FEDHEALTH_WEB_THREADS", 16)
backlog = 2048
# Recycle workers now and then (bounds the growth of any leak), staggered so that not all
# of them restart at once.
max_requests = 5000
max_requests_jitter = 500

# --- Timeouts ------------------------------------------------------------------------------
# A worker whose main loop is silent for longer than this is killed and replaced. With gthread
# it does not bound a single request (the main loop keeps beating while threads work), so it
# only needs to stay above the long poll.
timeout = LONG_POLL_MAX_SECONDS + 60
# On restart or shutdown, requests in flight (a long poll included) get this long to finish.
graceful_timeout = LONG_POLL_MAX_SECONDS + 15
# Keep-alive towards the proxy, which reuses its upstream connections. Idle kept-alive
# connections wait in the main loop, not on a thread; nginx's upstream keepalive_timeout
# (4 s) stays below this, so nginx never sends on a connection gunicorn just closed.
keepalive = 5
# gunicorn 27's gthread worker waits at most 5 s for a request's first bytes and drains an
# unread body for at most 5 s, but reads a body the application asks for with no timeout:
# a client that announces a Content-Length and sends less held a thread until it hung up.
# pre_request below bounds each read of the body. nginx in front buffers whole bodies
# (client_body_timeout), so this matters only if gunicorn is reached directly.
BODY_TIMEOUT_SECONDS = _positive_int("FEDHEALTH_BODY_TIMEOUT_SECONDS", 15)


def _wait_readable(sock: Any, seconds: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(seconds * 1000))


def pre_request(worker: Any, req: Any) -> None:
    """Bound each read of the request body to ``BODY_TIMEOUT_SECONDS`` of silence.

    Only reads: the socket's own timeout would also bound writing the whole response.
    """
    worker.log.debug("%s %s", req.method, req.path)  # what gunicorn's own hook does
    unreader = getattr(req, "unreader", None)
    sock = getattr(unreader, "sock", None)
    if sock is None or getattr(unreader, "fedhealth_bounded", False):
        return
    read_chunk = unreader.chunk

    def bounded_chunk(size_hint: int | None = None) -> bytes:
        if not _wait_readable(sock, BODY_TIMEOUT_SECONDS):
            raise TimeoutError(f"no request data for {BODY_TIMEOUT_SECONDS} s")
        data: bytes = read_chunk(size_hint)
        return data

    unreader.chunk = bounded_chunk
    unreader.fedhealth_bounded = True


# --- Behind the proxy ---------------------------------------------------------------------
# Only the proxy may set X-Forwarded-Proto & co. Django reads X-Forwarded-Proto itself
# (SECURE_PROXY_SSL_HEADER, on when FEDHEALTH_BEHIND_TLS_PROXY is true), so gunicorn must
# only be reachable by the proxy: keep the bind address private.
forwarded_allow_ips = os.environ.get("FEDHEALTH_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Request headers: bounded sizes (tokens and cookies fit easily).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# --- Logging ------------------------------------------------------------------------------
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("FEDHEALTH_LOG_LEVEL", "info").lower()
# Never the Authorization header, cookies, the query string or the referrer (which may carry
# tokens), nor %(u)s (a user name decoded from an Authorization header): the client address
# the proxy saw, the request id it assigned, method, path, status, size and duration.
access_log_format = '%({x-forwarded-for}i)s %({x-request-id}i)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'
proc_name = "fedhealth-web"

# --- Runtime control socket ---------------------------------------------------------------
# gunicorn >= 25 opens a control socket (in $HOME/.gunicorn by default) through which the
# worker count can be changed at run time. Off: restarts and reloads go through the service
# manager (SIGHUP reloads, SIGTERM stops), and the service user has no writable home.
control_socket_disable = True
# The heartbeat file of each worker: in memory where possible (a slow disk stalls workers).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
