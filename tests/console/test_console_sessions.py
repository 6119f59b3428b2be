"""Sessions end after FEDHEALTH_SESSION_IDLE_MINUTES without a request, and in any case
FEDHEALTH_SESSION_MAX_HOURS after sign-in; a session in use is kept."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from accounts.sessions import LAST_SEEN_AT, SIGNED_IN_AT
from training.models import Job

pytestmark = pytest.mark.django_db


def set_clocks(client: Client, **values: int) -> None:
    session = client.session
    for key, value in values.items():
        session[key] = value
    session.save()


def test_signing_in_starts_both_clocks(coordinator: Client) -> None:
    now = time.time()
    assert abs(coordinator.session[SIGNED_IN_AT] - now) < 5
    assert abs(coordinator.session[LAST_SEEN_AT] - now) < 5


def test_an_idle_session_expires(coordinator: Client, settings: Settings) -> None:
    now = int(time.time())
    set_clocks(coordinator, **{LAST_SEEN_AT: now - settings.FEDHEALTH_SESSION_IDLE_SECONDS - 5})
    response = coordinator.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")
    assert "_auth_user_id" not in coordinator.session
    assert coordinator.get("/").status_code == 302  # still signed out


def test_an_idle_session_is_refused_by_the_api_too(coordinator: Client, settings: Settings) -> None:
    now = int(time.time())
    assert coordinator.get("/api/v1/me/").status_code == 200
    set_clocks(coordinator, **{LAST_SEEN_AT: now - settings.FEDHEALTH_SESSION_IDLE_SECONDS - 5})
    assert coordinator.get("/api/v1/me/").status_code == 401


def test_an_active_session_is_kept_and_its_activity_recorded(coordinator: Client, settings: Settings) -> None:
    now = int(time.time())
    almost_idle = now - settings.FEDHEALTH_SESSION_IDLE_SECONDS + 30
    set_clocks(coordinator, **{LAST_SEEN_AT: almost_idle})
    assert coordinator.get("/").status_code == 200
    assert coordinator.session[LAST_SEEN_AT] >= now  # the idle clock starts again
    # a session used every few minutes, for longer than the idle time in all, stays open
    for _ in range(3):
        set_clocks(
            coordinator, **{LAST_SEEN_AT: int(time.time()) - settings.FEDHEALTH_SESSION_IDLE_SECONDS // 2}
        )
        assert coordinator.get("/jobs/").status_code == 200


def test_activity_is_written_at_most_once_a_minute(coordinator: Client) -> None:
    recent = int(time.time()) - 10
    set_clocks(coordinator, **{LAST_SEEN_AT: recent})
    assert coordinator.get("/").status_code == 200
    assert coordinator.session[LAST_SEEN_AT] == recent


def test_a_session_ends_at_the_absolute_limit_however_active(coordinator: Client, settings: Settings) -> None:
    now = int(time.time())
    set_clocks(
        coordinator, **{SIGNED_IN_AT: now - settings.FEDHEALTH_SESSION_MAX_SECONDS - 5, LAST_SEEN_AT: now}
    )
    assert coordinator.get("/").status_code == 302
    assert "_auth_user_id" not in coordinator.session


def test_the_idle_time_is_a_setting(coordinator: Client, settings: Settings) -> None:
    settings.FEDHEALTH_SESSION_IDLE_SECONDS = 120
    set_clocks(coordinator, **{LAST_SEEN_AT: int(time.time()) - 150})
    assert coordinator.get("/").status_code == 302


def test_session_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from fedplatform import env

    for name in ("FEDHEALTH_SESSION_IDLE_MINUTES", "FEDHEALTH_SESSION_MAX_HOURS"):
        monkeypatch.delenv(name, raising=False)
    loaded = env.load()
    assert (loaded.session_idle_minutes, loaded.session_max_hours) == (60, 12)
    monkeypatch.setenv("FEDHEALTH_SESSION_IDLE_MINUTES", "30")
    monkeypatch.setenv("FEDHEALTH_SESSION_MAX_HOURS", "8")
    loaded = env.load()
    assert (loaded.session_idle_minutes, loaded.session_max_hours) == (30, 8)
    monkeypatch.setenv("FEDHEALTH_SESSION_IDLE_MINUTES", "-1")
    with pytest.raises(ImproperlyConfigured, match="FEDHEALTH_SESSION_IDLE_MINUTES"):
        env.load()
    # the cookie and the stored session end with the absolute limit
    assert settings.SESSION_COOKIE_AGE == settings.FEDHEALTH_SESSION_MAX_SECONDS


def test_the_live_pages_polling_is_not_a_persons_activity(
    coordinator: Client, running_job: Job, settings: Settings
) -> None:
    """An open job page polls live.json every 2 s; an unattended screen must still time out."""
    almost_idle = int(time.time()) - settings.FEDHEALTH_SESSION_IDLE_SECONDS + 30
    set_clocks(coordinator, **{LAST_SEEN_AT: almost_idle})
    assert coordinator.get(f"/jobs/{running_job.pk}/live.json").status_code == 200
    assert coordinator.session[LAST_SEEN_AT] == almost_idle  # not refreshed by the poll
    assert coordinator.get(f"/jobs/{running_job.pk}/").status_code == 200
    assert coordinator.session[LAST_SEEN_AT] > almost_idle  # a page the person opened is
