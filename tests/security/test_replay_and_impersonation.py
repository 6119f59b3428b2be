"""Replay and impersonation: an update is bound to its job, round, institution and base
model; stale and replayed updates are refused; revocation works at once; tokens expire;
there are no default credentials; login timing does not reveal which accounts exist."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from platform_world import Site, make_job, trained
from rest_framework.test import APIClient

from institutions import services as institution_services
from training.models import Update

pytestmark = [pytest.mark.security, pytest.mark.django_db]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(agent_world: None) -> None:
    """Every test here drives agents through the API (tests/world_fixtures.py)."""


@pytest.fixture
def sites() -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B")]


def test_an_update_replayed_into_the_next_round_is_refused(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    make_job(sites, rounds=3)
    first_tasks = {}
    for index, site in enumerate(sites):
        task = site.work()
        first_tasks[index] = (task, trained(site.model(task), 1.0))
        with django_capture_on_commit_callbacks(execute=True):
            assert site.upload(*first_tasks[index]).status_code == 201
    next_task = sites[0].work()
    assert next_task["round_number"] == 2
    old_task, old_blob = first_tasks[0]
    # The same bytes and meta, sent to the new round: bound to round 1 and its base model.
    replayed = sites[0].upload({**old_task, "round_id": next_task["round_id"]}, old_blob)
    assert replayed.status_code == 409
    assert replayed.json()["error"]["code"] in {"wrong_round", "stale_update"}
    # Rebound to round 2 by hand but still trained from the old base model: stale.
    rebound = sites[0].upload({**next_task, "model_version": old_task["model_version"]}, old_blob)
    assert rebound.status_code == 409
    assert rebound.json()["error"]["code"] == "stale_update"
    assert Update.objects.filter(round_id=next_task["round_id"]).count() == 0


def test_one_site_cannot_answer_for_another(sites: list[Site]) -> None:
    make_job(sites)
    task = sites[0].work()
    outsider = Site("Hospital C")
    response = outsider.upload(task, trained(sites[0].model(task), 1.0))
    assert response.status_code == 404  # not even told the round exists
    # B answers with its own key: the update is recorded for B, never for A.
    own = sites[1].upload(task, trained(sites[1].model(task), 2.0))
    assert own.status_code == 201
    assert list(Update.objects.values_list("institution__name", flat=True)) == ["Hospital B"]


def test_a_revoked_credential_cannot_upload_even_mid_round(sites: list[Site]) -> None:
    make_job(sites)
    task = sites[0].work()
    blob = trained(sites[0].model(task), 1.0)
    institution_services.credential_revoke(credential_id=sites[0].credential_id, actor="user:test")
    response = sites[0].upload(task, blob)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "credential_revoked"
    assert not Update.objects.exists()


def test_a_key_with_a_valid_id_and_a_wrong_secret_is_refused(sites: list[Site]) -> None:
    client = APIClient()
    forged = sites[0].key.rsplit("_", 1)[0] + "_" + "A" * 43
    client.credentials(HTTP_AUTHORIZATION=f"Agent {forged}")
    response = client.get("/api/agent/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credential"


def test_a_key_has_one_spelling(sites: list[Site]) -> None:
    """``fha_01_…`` is not credential 1: leading zeros, other digits and padding are refused."""
    prefix, identifier, secret = sites[0].key.split("_", 2)
    assert APIClient().get("/api/agent/v1/me", HTTP_AUTHORIZATION=f"Agent {sites[0].key}").status_code == 200
    # Other digits, as a WSGI server hands over the UTF-8 bytes of a header: decoded as latin-1.
    arabic_indic = "".join(chr(0x0660 + int(digit)) for digit in identifier).encode().decode("latin-1")
    for spelling in (
        f"{prefix}_0{identifier}_{secret}",
        f"{prefix}_00{identifier}_{secret}",
        f"{prefix}_+{identifier}_{secret}",
        f"{prefix}_{arabic_indic}_{secret}",
        f"{prefix}_{identifier}_{secret}=",
        f"{prefix.upper()}_{identifier}_{secret}",
    ):
        response = APIClient().get("/api/agent/v1/me", HTTP_AUTHORIZATION=f"Agent {spelling}")
        assert response.status_code == 401, spelling


def test_enrollment_tokens_expire_and_are_stored_only_as_hashes() -> None:
    from institutions.models import EnrollmentToken, Institution

    institution = Institution.objects.create(name="Hospital Z")
    issued = institution_services.enrollment_token_create(institution=institution, actor="user:test", hours=1)
    EnrollmentToken.objects.filter(pk=issued.record.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = APIClient().post("/api/agent/v1/enroll", {"token": issued.token}, format="json")
    assert response.status_code == 401
    stored = json.dumps(list(EnrollmentToken.objects.values()), default=str)
    assert issued.token not in stored


def test_a_fresh_database_has_no_accounts_and_the_repo_no_default_passwords() -> None:
    assert get_user_model().objects.count() == 0  # migrations create nobody
    suspicious = re.compile(r"(password|passwd|secret_key)\s*[:=]\s*[\"'][^\"'$<{]{4,}[\"']", re.IGNORECASE)
    tracked = subprocess.run(
        ["git", "ls-files", "platform", "silo_agent", "deploy", "federation"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    hits = [
        f"{name}: {match.group(0)}"
        for name in tracked
        if name.endswith((".py", ".toml", ".yaml", ".yml", ".conf", ".example", ".service", ".sh"))
        for match in suspicious.finditer((REPO / name).read_text(errors="replace"))
    ]
    assert hits == []


def test_production_refuses_to_start_without_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from fedplatform import env

    monkeypatch.setenv("FEDHEALTH_ENV", "production")
    for name in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        env.load()


def _login_seconds(client: Client, username: str) -> float:
    started = time.perf_counter()
    response = client.post("/login/", {"username": username, "password": "not the password at all"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200  # the form again, with one message for both cases
    assert b"Please enter a correct username and password" in response.content
    return elapsed


def test_login_timing_does_not_reveal_which_accounts_exist(settings) -> None:  # type: ignore[no-untyped-def]
    # 22 failures from one address: above the sign-in throttle's limit, whose lockout skips
    # the hasher (tests/security/test_login_throttle.py). Raised here, the throttle still runs.
    settings.AXES_FAILURE_LIMIT = 1000
    get_user_model().objects.create_user("alice", password="a long real password 1")
    client = Client()
    _login_seconds(client, "alice")  # warm-up
    existing, unknown = [], []
    for attempt in range(7):  # interleaved, so a burst of load on the machine hits both alike
        existing.append(_login_seconds(client, "alice"))
        unknown.append(_login_seconds(client, f"nobody{attempt}"))
    # Django runs the password hasher for unknown users too. The fastest attempt of each is
    # the cost of the work itself, with the least of whatever else the machine was doing.
    ratio = min(existing) / min(unknown)
    assert 0.7 < ratio < 1.4, f"existing {min(existing):.3f} s, unknown {min(unknown):.3f} s"


def test_api_tokens_expire(settings) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user("carol", password="a long real password 2")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/me/").status_code == 200
    Token.objects.filter(pk=token.pk).update(
        created=timezone.now() - timedelta(days=settings.FEDHEALTH_API_TOKEN_DAYS, seconds=1)
    )
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
