"""The agent's long poll for work, bounded so that waiting agents cannot take every web thread.

Two bounds (docs/api.md, docs/threat-model.md):

- per credential, ``FEDHEALTH_LONG_POLL_PER_CREDENTIAL`` polls may wait at once, counted in
  the shared cache so that every web process sees the same count; beyond it the poll gets
  429 with ``Retry-After``. A count expires a little after the longest wait, so a process
  that died holding one does not lock its credential out for good.
- per web process, ``FEDHEALTH_LONG_POLL_PER_PROCESS`` threads may wait at once; beyond it a
  poll looks for work once and, finding none, gets 429 with ``Retry-After`` (an empty answer
  would make the agent ask again at once, turning a held thread into a busy loop).

A waiting poll reads its credential afresh from the database each time it wakes up and
before it hands out a task: a key revoked meanwhile gets 401, never a task.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.base import BaseCache

from agentapi import selectors
from fedplatform.errors import TooManyRequests, Unauthenticated
from institutions import selectors as institution_selectors
from institutions.models import AgentCredential

#: How much longer than the longest wait a credential's count lives without a new poll.
COUNT_TTL_MARGIN_SECONDS = 30


class ProcessWaiters:
    """How many threads of this process wait in a long poll, bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def try_acquire(self, *, limit: int) -> bool:
        with self._lock:
            if self._waiting >= limit:
                return False
            self._waiting += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._waiting -= 1


process_waiters = ProcessWaiters()


def credential_count_key(credential_id: int) -> str:
    return f"long-poll:credential:{credential_id}"


def _count_ttl() -> int:
    return int(settings.FEDHEALTH_LONG_POLL_MAX_SECONDS) + COUNT_TTL_MARGIN_SECONDS


def _count_add(key: str, delta: int, ttl: int) -> int:
    """The count at ``key`` moved by ``delta``; ValueError when it has expired.

    A backend with its own ``incr`` (Redis, local memory) adds atomically and keeps the
    expiry. Django's generic one (files, database) reads and writes back with its default
    timeout, so here the write sets the count's own.
    """
    backend = caches["default"]
    if type(backend).incr is not BaseCache.incr:
        return backend.incr(key, delta)
    value = backend.get(key)
    if value is None:
        raise ValueError(f"{key} has expired")
    backend.set(key, value + delta, timeout=ttl)
    return int(value) + delta


def credential_slot_acquire(*, credential_id: int) -> bool:
    """Count one more waiting poll for the credential, unless it already has its share."""
    key, ttl = credential_count_key(credential_id), _count_ttl()
    limit = settings.FEDHEALTH_LONG_POLL_PER_CREDENTIAL
    # Refused without a write: a count left behind by a dead process still expires while
    # its credential keeps asking.
    if (cache.get(key) or 0) >= limit:
        return False
    if cache.add(key, 1, timeout=ttl):
        count = 1
    else:
        try:
            count = _count_add(key, 1, ttl)
        except ValueError:  # expired between the two calls
            cache.set(key, 1, timeout=ttl)
            count = 1
    if count > limit:  # another poll came in meanwhile
        credential_slot_release(credential_id=credential_id)
        return False
    cache.touch(key, ttl)
    return True


def credential_slot_release(*, credential_id: int) -> None:
    key, ttl = credential_count_key(credential_id), _count_ttl()
    # A count that expired meanwhile has nothing left to give back.
    with contextlib.suppress(ValueError):
        if _count_add(key, -1, ttl) < 0:
            # Two polls both took the first place where the cache cannot add atomically
            # (files): never let the count drift below zero, which would raise the cap.
            cache.set(key, 0, timeout=ttl)


@contextlib.contextmanager
def _credential_slot(credential_id: int) -> Iterator[None]:
    if not credential_slot_acquire(credential_id=credential_id):
        raise TooManyRequests(
            f"this agent credential already has {settings.FEDHEALTH_LONG_POLL_PER_CREDENTIAL} long polls "
            "waiting; wait for one to end",
            retry_after=settings.FEDHEALTH_LONG_POLL_RETRY_AFTER_SECONDS,
            code="too_many_polls",
        )
    try:
        yield
    finally:
        credential_slot_release(credential_id=credential_id)


@contextlib.contextmanager
def _process_slot() -> Iterator[bool]:
    """Yields whether this thread may wait; released whatever happens."""
    admitted = process_waiters.try_acquire(limit=settings.FEDHEALTH_LONG_POLL_PER_PROCESS)
    try:
        yield admitted
    finally:
        if admitted:
            process_waiters.release()


def _ensure_active(credential: AgentCredential) -> None:
    if not institution_selectors.credential_is_active(credential_id=credential.pk):
        raise Unauthenticated("this agent credential has been revoked", code="credential_revoked")


def _next_task(credential: AgentCredential, wait: float) -> dict[str, object] | None:
    deadline = time.monotonic() + wait
    while True:
        task = selectors.work_for(credential=credential)
        _ensure_active(credential)
        if task is not None or time.monotonic() >= deadline:
            return task
        time.sleep(settings.FEDHEALTH_LONG_POLL_INTERVAL_SECONDS)


def work_wait(*, credential: AgentCredential, wait: float) -> dict[str, object] | None:
    """The credential's next task, waiting up to ``wait`` seconds for one; None if none came.

    Raises :class:`TooManyRequests` when the credential or this process has no waiting slot
    left (for the process, only when there is no task either), and :class:`Unauthenticated`
    when the credential is revoked.
    """
    if wait <= 0:
        return _next_task(credential, 0)
    with _credential_slot(credential.pk), _process_slot() as may_wait:
        task = _next_task(credential, wait if may_wait else 0)
    if task is None and not may_wait:
        raise TooManyRequests(
            "the server is busy with other long polls; ask again later",
            retry_after=settings.FEDHEALTH_LONG_POLL_RETRY_AFTER_SECONDS,
            code="server_busy",
        )
    return task
