"""Sign-in throttling (django-axes) on the console's and the admin's sign-in pages.

Wrong passwords beyond the limit lock the user name out from every address, and the address
out for every user name, for a cool-off counted from the last failure; the locked-out page
says so (status 429) and even the right password is refused until the cool-off ends. Every
failed sign-in and every lockout is in the audit trail, without the password. The client's
address comes from ``X-Forwarded-For`` only as far as the configured proxies vouch for it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.db.models import F
from django.test import Client, RequestFactory
from pytest_django.fixtures import Settings

from audit.models import AuditEvent
from fedplatform.client_address import client_address

pytestmark = [pytest.mark.security, pytest.mark.django_db]

LIMIT = 3
PASSWORD = "the right password 1"
WRONG = "a wrong password 99"
LOCKED_OUT = b"Too many failed sign-ins"
PAGES = {"console": "/login/", "admin": "/admin/login/"}


@pytest.fixture(autouse=True)
def _throttle(settings: Settings) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.FEDHEALTH_TRUSTED_PROXY_COUNT = 0


@pytest.fixture
def people() -> None:
    """alice and bob may sign in to both pages (the admin's needs staff)."""
    for name in ("alice", "bob"):
        get_user_model().objects.create_superuser(name, password=PASSWORD)


def sign_in(page: str, username: str, password: str, address: str) -> tuple[int, bytes, Client]:
    client = Client(REMOTE_ADDR=address)
    response = client.post(PAGES[page], {"username": username, "password": password})
    return response.status_code, response.content, client


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(page: str, username: str, address: str, times: int = LIMIT) -> list[int]:
    return [sign_in(page, username, WRONG, address)[0] for _ in range(times)]


@pytest.mark.parametrize("page", PAGES)
def test_wrong_passwords_beyond_the_limit_lock_the_user_name_out(page: str, people: None) -> None:
    statuses = fail(page, "alice", "10.0.0.1")
    assert statuses == [200] * (LIMIT - 1) + [429]  # the failure that reaches the limit locks
    status, content, client = sign_in(page, "alice", PASSWORD, "10.0.0.1")
    assert status == 429
    assert LOCKED_OUT in content
    assert b"15 minutes" in content
    assert b'name="password"' in content  # the sign-in page again, not a bare refusal
    assert not signed_in(client)


def test_the_console_lockout_page_is_the_console_s_own(people: None) -> None:
    fail("console", "alice", "10.0.0.1")
    client = Client(REMOTE_ADDR="10.0.0.1")
    response = client.post(
        "/login/?next=/jobs/", {"username": "alice", "password": PASSWORD, "next": "/jobs/"}
    )
    assert response.status_code == 429
    assert response.templates[0].name == "console/login.html"
    assert b'data-testid="login-locked-out"' in response.content
    assert b'name="next" value="/jobs/"' in response.content
    assert "Content-Security-Policy" in response


@pytest.mark.parametrize("page", PAGES)
def test_the_same_user_name_is_locked_out_from_another_address(page: str, people: None) -> None:
    fail(page, "alice", "10.0.0.1")
    status, content, client = sign_in(page, "alice", PASSWORD, "10.0.0.2")
    assert (status, LOCKED_OUT in content, signed_in(client)) == (429, True, False)


@pytest.mark.parametrize("page", PAGES)
def test_another_user_name_from_another_address_is_unaffected(page: str, people: None) -> None:
    fail(page, "alice", "10.0.0.1")
    status, _, client = sign_in(page, "bob", PASSWORD, "10.0.0.2")
    assert status == 302
    assert signed_in(client)


@pytest.mark.parametrize("page", PAGES)
def test_an_address_trying_many_user_names_is_locked_out(page: str, people: None) -> None:
    for attempt in range(LIMIT):
        sign_in(page, f"guess{attempt}", WRONG, "10.0.0.3")
    status, content, client = sign_in(page, "bob", PASSWORD, "10.0.0.3")
    assert (status, LOCKED_OUT in content, signed_in(client)) == (429, True, False)
    # bob himself, from elsewhere, is not locked out
    assert sign_in(page, "bob", PASSWORD, "10.0.0.4")[0] == 302


def test_the_two_pages_share_one_count(people: None) -> None:
    fail("console", "alice", "10.0.0.1", times=LIMIT - 1)
    assert sign_in("admin", "alice", WRONG, "10.0.0.5")[0] == 429


@pytest.mark.parametrize("page", PAGES)
def test_the_lockout_ends_after_the_cool_off(page: str, people: None, settings: Settings) -> None:
    fail(page, "alice", "10.0.0.1")
    assert sign_in(page, "alice", PASSWORD, "10.0.0.1")[0] == 429
    # Every failure a little more than the cool-off ago: none counts any more.
    AccessAttempt.objects.update(
        attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )
    status, _, client = sign_in(page, "alice", PASSWORD, "10.0.0.1")
    assert status == 302
    assert signed_in(client)


def test_the_lockout_does_not_end_early(people: None, settings: Settings) -> None:
    fail("console", "alice", "10.0.0.1")
    AccessAttempt.objects.update(
        attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME + timedelta(seconds=30)
    )
    assert sign_in("console", "alice", PASSWORD, "10.0.0.1")[0] == 429


def test_failed_sign_ins_and_lockouts_are_audited_without_the_password(people: None) -> None:
    fail("console", "alice", "10.0.0.1", times=LIMIT - 1)
    fail("admin", "alice", "10.0.0.1", times=1)
    sign_in("console", "alice", PASSWORD, "10.0.0.1")  # refused: locked out
    failed = list(AuditEvent.objects.filter(kind="auth.login_failed").order_by("sequence"))
    assert len(failed) == LIMIT + 1
    assert {event.actor for event in failed} == {"anonymous"}
    assert [event.details["page"] for event in failed] == ["/login/"] * (LIMIT - 1) + [
        "/admin/login/",
        "/login/",
    ]
    assert all(event.details["username"] == "alice" for event in failed)
    assert all(event.details["client_address"] == "10.0.0.1" for event in failed)
    assert AuditEvent.objects.filter(kind="auth.locked_out", details__username="alice").exists()
    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    stored += json.dumps(list(AccessAttempt.objects.values()), default=str)  # axes' own records
    assert AccessAttempt.objects.exists()
    assert WRONG not in stored
    assert PASSWORD not in stored


def test_a_successful_sign_in_is_audited_as_one_and_not_as_a_failure(people: None) -> None:
    assert sign_in("console", "alice", PASSWORD, "10.0.0.1")[0] == 302
    [event] = AuditEvent.objects.filter(kind__startswith="auth.")
    assert (event.kind, event.actor) == ("auth.signed_in", "user:alice")
    assert (event.details["client_address"], event.details["page"]) == ("10.0.0.1", "/login/")
    assert PASSWORD not in json.dumps(event.details)


def test_a_forged_forwarded_for_header_is_ignored_without_trusted_proxies(people: None) -> None:
    for attempt in range(LIMIT):
        client = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}")
        client.post("/login/", {"username": f"guess{attempt}", "password": WRONG})
    assert sign_in("console", "bob", PASSWORD, "10.0.0.1")[0] == 429


def test_behind_a_trusted_proxy_each_client_counts_alone(people: None, settings: Settings) -> None:
    settings.FEDHEALTH_TRUSTED_PROXY_COUNT = 1
    for attempt in range(LIMIT):  # all through the proxy at 127.0.0.1, from one client
        client = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7")
        client.post("/login/", {"username": f"guess{attempt}", "password": WRONG})
    locked = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert locked.post("/login/", {"username": "bob", "password": PASSWORD}).status_code == 429
    other = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert other.post("/login/", {"username": "bob", "password": PASSWORD}).status_code == 302


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected"),
    [
        (0, "198.51.100.7", "10.9.9.9"),  # no trusted proxy: the header is ignored
        (1, "198.51.100.7", "198.51.100.7"),
        (1, "203.0.113.66, 198.51.100.7", "198.51.100.7"),  # the client's own entry is forged
        (2, "203.0.113.66, 198.51.100.7, 10.1.1.1", "198.51.100.7"),
        (2, "198.51.100.7", "10.9.9.9"),  # fewer entries than proxies: only the peer is known
        (1, "not an address", "10.9.9.9"),
        (1, "", "10.9.9.9"),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address_trusts_only_the_configured_proxies(
    settings: Settings, proxies: int, forwarded_for: str, expected: str
) -> None:
    settings.FEDHEALTH_TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=forwarded_for)
    assert client_address(request) == expected


def test_the_throttle_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from fedplatform import env

    monkeypatch.setenv("FEDHEALTH_LOGIN_FAILURE_LIMIT", "7")
    monkeypatch.setenv("FEDHEALTH_LOGIN_COOLOFF_MINUTES", "45")
    monkeypatch.setenv("FEDHEALTH_TRUSTED_PROXY_COUNT", "1")
    loaded = env.load()
    assert (loaded.login_failure_limit, loaded.login_cool_off_minutes, loaded.trusted_proxy_count) == (
        7,
        45,
        1,
    )
    monkeypatch.delenv("FEDHEALTH_TRUSTED_PROXY_COUNT")
    assert env.load().trusted_proxy_count == 0
    monkeypatch.setenv("FEDHEALTH_LOGIN_FAILURE_LIMIT", "0")
    with pytest.raises(ImproperlyConfigured, match="FEDHEALTH_LOGIN_FAILURE_LIMIT"):
        env.load()
    monkeypatch.setenv("FEDHEALTH_LOGIN_FAILURE_LIMIT", "many")
    with pytest.raises(ImproperlyConfigured, match="FEDHEALTH_LOGIN_FAILURE_LIMIT"):
        env.load()
