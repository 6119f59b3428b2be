"""Institutions in the console: register, enrollment tokens shown once, agents, revocation."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from console_support import credential
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from institutions.models import AgentCredential, EnrollmentToken, Institution
from institutions.services import agent_enroll

pytestmark = pytest.mark.django_db


def test_coordinator_registers_an_institution(coordinator: Client) -> None:
    response = coordinator.post("/institutions/", {"name": "  Hospital C  "}, follow=True)
    institution = Institution.objects.get(name="Hospital C")
    assert response.redirect_chain[-1][0] == f"/institutions/{institution.pk}/"
    assert "Hospital C is registered" in response.content.decode()
    assert AuditEvent.objects.filter(kind="institution.created", actor="user:carol").exists()


def test_a_duplicate_name_is_explained_next_to_the_field(
    coordinator: Client, hospital_a: Institution
) -> None:
    response = coordinator.post("/institutions/", {"name": "Hospital A"})
    assert response.status_code == 200
    html = response.content.decode()
    error = re.search(r'<ul class="field__errors" id="id_name_error"[^>]*>(.*?)</ul>', html, re.S)
    assert error is not None
    assert "exists already" in error.group(1)
    assert Institution.objects.filter(name="Hospital A").count() == 1


def test_an_empty_name_is_refused(coordinator: Client) -> None:
    response = coordinator.post("/institutions/", {"name": ""})
    assert 'data-testid="error-name"' in response.content.decode()
    assert Institution.objects.count() == 0


def _token_on(html: str) -> str | None:
    match = re.search(r'data-testid="token-value">([^<]+)<', html)
    return match.group(1) if match else None


def test_enrollment_token_is_shown_once_and_only_its_hash_is_stored(
    coordinator: Client, hospital_a: Institution
) -> None:
    created = coordinator.post(f"/institutions/{hospital_a.pk}/tokens/", {"hours": "48"})
    assert created.status_code == 302
    record = EnrollmentToken.objects.get(institution=hospital_a)
    token_url = f"/institutions/{hospital_a.pk}/tokens/{record.pk}/"
    assert created["Location"] == token_url
    assert created.cookies["fedhealth_enrollment_token"]["httponly"]
    assert created.cookies["fedhealth_enrollment_token"]["path"] == token_url

    shown = coordinator.get(token_url)
    html = shown.content.decode()
    token = _token_on(html)
    assert token is not None
    assert f"silo-agent enroll --config agent.toml --token={token}" in html
    assert 'data-testid="token-expiry"' in html
    assert shown["Cache-Control"] == "no-store"
    # The database keeps only the hash, and the lifetime asked for.
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert not EnrollmentToken.objects.filter(token_hash=token).exists()
    assert timedelta(hours=47) < record.expires_at - timezone.now() <= timedelta(hours=48)
    # Reloading the page never shows it again.
    again = coordinator.get(token_url).content.decode()
    assert _token_on(again) is None
    assert token not in again
    assert 'data-testid="token-gone"' in again
    # And the token works for the agent.
    enrolled = agent_enroll(token=token, agent_version="1.0", hostname="h")
    assert enrolled.credential.institution == hospital_a


def test_a_tampered_token_cookie_is_not_shown(coordinator: Client, hospital_a: Institution) -> None:
    coordinator.post(f"/institutions/{hospital_a.pk}/tokens/", {"hours": "1"})
    record = EnrollmentToken.objects.get(institution=hospital_a)
    coordinator.cookies["fedhealth_enrollment_token"] = f"{record.pk}:forged-token"
    html = coordinator.get(f"/institutions/{hospital_a.pk}/tokens/{record.pk}/").content.decode()
    assert "forged-token" not in html
    assert _token_on(html) is None


def test_a_bad_token_lifetime_is_refused(coordinator: Client, hospital_a: Institution) -> None:
    response = coordinator.post(f"/institutions/{hospital_a.pk}/tokens/", {"hours": "0"}, follow=True)
    assert "No token was created" in response.content.decode()
    assert not EnrollmentToken.objects.filter(institution=hospital_a).exists()


def test_agents_table_shows_state_version_and_heartbeat(coordinator: Client, hospital_a: Institution) -> None:
    online = credential(hospital_a)
    AgentCredential.objects.filter(pk=online.pk).update(last_seen_at=timezone.now() - timedelta(seconds=12))
    stale = credential(hospital_a)
    AgentCredential.objects.filter(pk=stale.pk).update(last_seen_at=timezone.now() - timedelta(minutes=5))
    html = coordinator.get(f"/institutions/{hospital_a.pk}/").content.decode()
    rows = dict(re.findall(r'data-credential="(\d+)">(.*?)</tr>', html, re.S))
    assert "1.4.2" in rows[str(online.pk)]
    assert f"agent.{hospital_a.pk}" in rows[str(online.pk)]
    assert "12 s ago" in rows[str(online.pk)]
    assert 'data-state="online"' in rows[str(online.pk)]
    assert "5 min ago" in rows[str(stale.pk)]
    assert 'data-state="offline"' in rows[str(stale.pk)]
    listing = coordinator.get("/institutions/").content.decode()
    assert 'data-state="online"' in listing


def test_revoking_a_credential_asks_first(coordinator: Client, hospital_a: Institution) -> None:
    agent = credential(hospital_a)
    confirm = coordinator.get(f"/credentials/{agent.pk}/revoke/")
    assert confirm.status_code == 200
    assert 'data-testid="confirm-revoke"' in confirm.content.decode()
    assert AgentCredential.objects.get(pk=agent.pk).revoked_at is None

    done = coordinator.post(f"/credentials/{agent.pk}/revoke/", follow=True)
    assert done.redirect_chain[-1][0] == f"/institutions/{hospital_a.pk}/"
    assert AgentCredential.objects.get(pk=agent.pk).revoked_at is not None
    html = done.content.decode()
    assert f"Credential {agent.pk} is revoked" in html
    assert 'data-state="revoked"' in html
    assert 'data-testid="revoke-button"' not in html
    assert AuditEvent.objects.filter(kind="agent.revoked", actor="user:carol").count() == 1


@pytest.mark.privacy
def test_the_institution_page_shows_its_privacy_ledger(
    coordinator: Client, owner_b: Client, hospital_a: Institution, running_job
) -> None:  # type: ignore[no-untyped-def]
    from training.models import PrivacySpend

    empty = coordinator.get(f"/institutions/{hospital_a.pk}/").content.decode()
    assert "No differentially private job has used this institution's data yet." in empty
    PrivacySpend.objects.create(
        job=running_job, institution=hospital_a, level="client", epsilon=2.5, delta=1e-5, rounds=3, events=[]
    )
    html = coordinator.get(f"/institutions/{hospital_a.pk}/").content.decode()
    row = re.search(r'<tr data-testid="ledger-row">(.*?)</tr>', html, re.S)
    assert row is not None
    assert f"#{running_job.pk}" in row.group(1)
    assert "2.500" in row.group(1)
    assert "Total epsilon 2.500" in html
    assert owner_b.get(f"/institutions/{hospital_a.pk}/").status_code == 404  # another institution's
