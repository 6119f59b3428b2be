"""Bounds on the agent's long poll (platform/agentapi/long_poll.py, docs/api.md).

A long poll's waiting is driven by a simulated clock whose ``sleep`` can run more requests
while the first one holds its place: the concurrency is real (the counts, the slots, the
database), the order is deterministic and no test takes real waiting time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.cache import cache
from platform_world import Site, make_job
from pytest_django.fixtures import Settings
from service_support import REDIS_URL, require_services

from agentapi import long_poll
from fedplatform import env as environment
from institutions import services as institution_services

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
WORK = "/api/agent/v1/work"


class SteppedClock:
    """Stands in for ``time`` in the long poll; each ``sleep`` may first run the next step."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.steps: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.steps:
            self.steps.pop(0)()


@pytest.fixture
def clock(agent_world: None, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    settings.FEDHEALTH_LONG_POLL_PER_CREDENTIAL = 2
    settings.FEDHEALTH_LONG_POLL_PER_PROCESS = 8
    settings.FEDHEALTH_LONG_POLL_INTERVAL_SECONDS = 1.0  # 30 wake-ups in a 30 s poll
    stepped = SteppedClock()
    monkeypatch.setattr("agentapi.long_poll.time", stepped)
    return stepped


def held_count(site: Site) -> int | None:
    return cache.get(long_poll.credential_count_key(site.credential_id))


def test_polls_beyond_the_credentials_share_get_429_with_retry_after(clock: SteppedClock) -> None:
    site, other = Site("Hospital A"), Site("Hospital B")
    seen: dict[str, object] = {}

    def second_poll() -> None:
        seen["second"] = site.client.get(f"{WORK}?wait=30")

    def third_poll_while_two_wait() -> None:
        seen["count"] = held_count(site)
        seen["third"] = site.client.get(f"{WORK}?wait=30")
        seen["other"] = other.client.get(f"{WORK}?wait=1")  # another credential is not affected
        seen["at_once"] = site.client.get(f"{WORK}?wait=0")  # an answer at once holds nothing

    clock.steps = [second_poll, third_poll_while_two_wait]
    first = site.client.get(f"{WORK}?wait=30")

    assert first.status_code == 200
    assert first.json() == {"task": None}
    assert seen["second"].status_code == 200  # type: ignore[attr-defined]
    assert seen["count"] == 2
    third = seen["third"]
    assert third.status_code == 429  # type: ignore[attr-defined]
    assert third["Retry-After"] == "5"  # type: ignore[index]
    error = third.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "too_many_polls"
    assert "2 long polls" in error["message"]
    assert seen["other"].status_code == 200  # type: ignore[attr-defined]
    assert seen["at_once"].status_code == 200  # type: ignore[attr-defined]
    # Every poll gave its place back: the next one waits again.
    assert held_count(site) == 0
    assert long_poll.process_waiters.waiting == 0
    assert site.client.get(f"{WORK}?wait=2").status_code == 200


def test_a_poll_that_errors_gives_its_places_back(
    clock: SteppedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site("Hospital A")

    def broken(**kwargs: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr("agentapi.long_poll.selectors.work_for", broken)
    for _ in range(3):  # more than the credential's share: each attempt released its place
        with pytest.raises(RuntimeError, match="went away"):
            site.client.get(f"{WORK}?wait=30")
        assert held_count(site) == 0
        assert long_poll.process_waiters.waiting == 0


def test_a_busy_process_answers_at_once_and_still_hands_out_work(
    clock: SteppedClock, settings: Settings
) -> None:
    settings.FEDHEALTH_LONG_POLL_PER_PROCESS = 1
    idle, busy, with_work = Site("Hospital A"), Site("Hospital B"), Site("Hospital C")
    make_job([with_work], rounds=1)
    seen: dict[str, object] = {}

    def polls_while_one_thread_waits() -> None:
        sleeps_before = clock.sleeps
        seen["busy"] = busy.client.get(f"{WORK}?wait=30")
        seen["with_work"] = with_work.client.get(f"{WORK}?wait=30")
        seen["slept"] = clock.sleeps - sleeps_before

    clock.steps = [polls_while_one_thread_waits]
    first = idle.client.get(f"{WORK}?wait=30")

    assert first.status_code == 200
    assert seen["slept"] == 0  # neither waited: the process's waiting slot was taken
    refused = seen["busy"]
    assert refused.status_code == 429  # type: ignore[attr-defined]
    assert refused["Retry-After"] == "5"  # type: ignore[index]
    assert refused.json()["error"]["code"] == "server_busy"  # type: ignore[attr-defined]
    answered = seen["with_work"]
    assert answered.status_code == 200  # type: ignore[attr-defined]
    assert answered.json()["task"]["kind"] == "train"  # type: ignore[attr-defined]
    # The busy refusal held nothing of its credential's share.
    assert held_count(busy) == 0
    assert long_poll.process_waiters.waiting == 0


def test_a_count_left_by_a_crashed_process_expires(
    clock: SteppedClock, monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    # The file cache reads the wall clock, which can be moved here (Redis's expiry: below).
    settings.CACHES = {"default": environment.cache_settings(tmp_path.joinpath("cache").as_uri())}
    site = Site("Hospital A")
    # Two polls counted by a process that died before giving them back.
    assert long_poll.credential_slot_acquire(credential_id=site.credential_id)
    assert long_poll.credential_slot_acquire(credential_id=site.credential_id)
    assert site.client.get(f"{WORK}?wait=30").status_code == 429
    # Refused polls do not extend the count's life.
    later = time.time() + 30 + long_poll.COUNT_TTL_MARGIN_SECONDS + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert site.client.get(f"{WORK}?wait=30").status_code == 200


def test_the_count_is_shared_with_other_processes(agent_world: None, settings: Settings) -> None:
    """Two polls counted by another process (through the same cache) leave this one no room."""
    backend = settings.CACHES["default"]["BACKEND"]
    assert backend != "django.core.cache.backends.locmem.LocMemCache"  # one per process
    if backend.endswith("FileBasedCache"):
        url = Path(settings.CACHES["default"]["LOCATION"]).as_uri()
    else:
        url = settings.CACHES["default"]["LOCATION"]
    credential_id = 987_654_321
    script = (
        "from agentapi.long_poll import credential_slot_acquire as acquire;"
        f"print([acquire(credential_id={credential_id}) for _ in range(3)])"
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "-c", script],
        env={**os.environ, "FEDHEALTH_CACHE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[True, True, False]"
    assert not long_poll.credential_slot_acquire(credential_id=credential_id)
    long_poll.credential_slot_release(credential_id=credential_id)
    assert long_poll.credential_slot_acquire(credential_id=credential_id)


def test_a_key_revoked_while_its_poll_waits_gets_401_and_no_task(clock: SteppedClock) -> None:
    site = Site("Hospital A")

    def revoke_then_offer_work() -> None:
        institution_services.credential_revoke(credential_id=site.credential_id, actor="user:test")
        make_job([site], rounds=1)

    clock.steps = [revoke_then_offer_work]
    response = site.client.get(f"{WORK}?wait=30")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "credential_revoked"
    assert "task" not in response.json()
    assert clock.sleeps == 1  # it ended at the first wake-up, not at the end of its wait
    assert held_count(site) == 0


def test_a_key_revoked_just_before_the_answer_gets_no_task(
    clock: SteppedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site("Hospital A")
    make_job([site], rounds=1)
    work_for = long_poll.selectors.work_for

    def revoked_meanwhile(**kwargs: object) -> dict[str, object] | None:
        task = work_for(**kwargs)  # type: ignore[arg-type]
        institution_services.credential_revoke(credential_id=site.credential_id, actor="user:test")
        return task

    monkeypatch.setattr("agentapi.long_poll.selectors.work_for", revoked_meanwhile)
    for wait in (0, 30):
        response = site.client.get(f"{WORK}?wait={wait}")
        assert response.status_code == 401
        assert "task" not in response.json()


def test_on_redis_the_count_is_kept_by_the_server_and_expires(agent_world: None, settings: Settings) -> None:
    require_services("redis")
    settings.CACHES = {"default": environment.cache_settings(REDIS_URL)}
    settings.FEDHEALTH_LONG_POLL_PER_CREDENTIAL = 2
    key = long_poll.credential_count_key(123_456_789)
    cache.delete(key)
    try:
        assert [long_poll.credential_slot_acquire(credential_id=123_456_789) for _ in range(3)] == [
            True,
            True,
            False,
        ]
        client = cache._cache.get_client(key)  # type: ignore[attr-defined]
        assert int(client.get(cache.make_key(key))) == 2  # a plain integer, incremented by Redis
        ttl = client.ttl(cache.make_key(key))
        assert 30 < ttl <= 30 + long_poll.COUNT_TTL_MARGIN_SECONDS
        long_poll.credential_slot_release(credential_id=123_456_789)
        assert cache.get(key) == 1
    finally:
        cache.delete(key)


def test_a_count_never_drifts_below_zero_to_raise_the_cap(
    clock: SteppedClock, settings: Settings, tmp_path: Path
) -> None:
    """Where the cache cannot add atomically (files), two polls may both take the first place
    and both give it back: the count must return to zero, not to -1 (a cap of 3)."""
    settings.CACHES = {"default": environment.cache_settings(tmp_path.joinpath("cache").as_uri())}
    site = Site("Hospital A")
    key = long_poll.credential_count_key(site.credential_id)
    assert long_poll.credential_slot_acquire(credential_id=site.credential_id)
    long_poll.credential_slot_release(credential_id=site.credential_id)
    long_poll.credential_slot_release(credential_id=site.credential_id)  # the lost race's twin
    assert cache.get(key) == 0
    taken = [long_poll.credential_slot_acquire(credential_id=site.credential_id) for _ in range(3)]
    assert taken == [True, True, False]
