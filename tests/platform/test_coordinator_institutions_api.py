"""``institutions/``, enrollment tokens, credentials and their revocation."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from fedplatform.errors import Unauthenticated
from institutions.models import AgentCredential, EnrollmentToken, Institution
from institutions.services import agent_enroll, credential_authenticate, enrollment_token_create

pytestmark = pytest.mark.django_db


def _enrolled_credential(institution: Institution, hostname: str = "agent-1") -> tuple[AgentCredential, str]:
    token = enrollment_token_create(institution=institution, actor="user:setup").token
    enrollment = agent_enroll(token=token, agent_version="1.2.3", hostname=hostname)
    return enrollment.credential, enrollment.key


def _names(response_json: dict[str, object]) -> list[str]:
    return [row["name"] for row in response_json["results"]]  # type: ignore[index, union-attr]


# --- list, detail, create ----------------------------------------------------------------


def test_coordinator_and_observer_list_every_institution(
    coordinator_client: APIClient,
    observer_client: APIClient,
    hospital_a: Institution,
    hospital_b: Institution,
) -> None:
    for client in (coordinator_client, observer_client):
        response = client.get("/api/v1/institutions/")
        assert response.status_code == 200
        assert response.json()["count"] == 2
        assert _names(response.json()) == ["Hospital A", "Hospital B"]


def test_data_owner_lists_only_their_institution(owner_a_client: APIClient, hospital_b: Institution) -> None:
    assert _names(owner_a_client.get("/api/v1/institutions/").json()) == ["Hospital A"]


def test_list_is_paginated_with_limit_and_offset(
    coordinator_client: APIClient, hospital_a, hospital_b
) -> None:
    body = coordinator_client.get("/api/v1/institutions/?limit=1&offset=1").json()
    assert body["count"] == 2
    assert _names(body) == ["Hospital B"]
    assert body["previous"] is not None


def test_coordinator_creates_an_institution(coordinator_client: APIClient) -> None:
    response = coordinator_client.post("/api/v1/institutions/", {"name": "  Hospital C "}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Hospital C"
    assert body["active_credentials"] == 0
    assert body["agent_online"] is False
    event = AuditEvent.objects.get(kind="institution.created")
    assert event.actor == "user:carol"
    assert event.institution_id == body["id"]


def test_duplicate_institution_is_a_conflict(coordinator_client: APIClient, hospital_a: Institution) -> None:
    response = coordinator_client.post("/api/v1/institutions/", {"name": "Hospital A"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate"


@pytest.mark.parametrize(
    "look_alike",
    [
        "hospital a",  # case
        "HOSPITAL   A",  # case and spacing
        "Hоspital A",  # Cyrillic o
        "Ｈｏｓｐｉｔａｌ Ａ",  # fullwidth forms
        "Hospital Α",  # Greek capital alpha
    ],
)
def test_a_name_that_reads_the_same_as_another_is_a_conflict(
    coordinator_client: APIClient, hospital_a: Institution, look_alike: str
) -> None:
    response = coordinator_client.post("/api/v1/institutions/", {"name": look_alike}, format="json")
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "duplicate"
    assert "'Hospital A' exists already" in response.json()["error"]["message"]
    assert Institution.objects.count() == 1


def test_names_that_read_differently_are_distinct(coordinator_client: APIClient) -> None:
    for name in ("Hôpital Nord", "Hopital Nord", "Charité", "Klinikum 2"):
        response = coordinator_client.post("/api/v1/institutions/", {"name": name}, format="json")
        assert response.status_code == 201, (name, response.content)


@pytest.mark.parametrize("hidden", ["\u200b", "\u202e", "\x07"])
def test_a_name_with_invisible_characters_is_refused(coordinator_client: APIClient, hidden: str) -> None:
    response = coordinator_client.post(
        "/api/v1/institutions/", {"name": f"Hospital{hidden} B"}, format="json"
    )
    assert response.status_code == 400
    assert f"U+{ord(hidden):04X}" in response.json()["error"]["message"]
    assert not Institution.objects.exists()


def test_missing_name_is_a_field_error(coordinator_client: APIClient) -> None:
    response = coordinator_client.post("/api/v1/institutions/", {}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "name" in error["fields"]


@pytest.mark.parametrize("client_fixture", ["observer_client", "owner_a_client"])
def test_only_coordinators_create_institutions(request: pytest.FixtureRequest, client_fixture: str) -> None:
    client: APIClient = request.getfixturevalue(client_fixture)
    response = client.post("/api/v1/institutions/", {"name": "Hospital X"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert not Institution.objects.filter(name="Hospital X").exists()


def test_detail_shows_agent_status(coordinator_client: APIClient, hospital_a: Institution) -> None:
    credential, _ = _enrolled_credential(hospital_a)
    AgentCredential.objects.filter(pk=credential.pk).update(last_seen_at=timezone.now())
    body = coordinator_client.get(f"/api/v1/institutions/{hospital_a.pk}/").json()
    assert body["name"] == "Hospital A"
    assert body["active_credentials"] == 1
    assert body["agent_online"] is True


def test_data_owner_gets_404_for_another_institution(
    owner_a_client: APIClient, hospital_b: Institution
) -> None:
    response = owner_a_client.get(f"/api/v1/institutions/{hospital_b.pk}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- enrollment tokens -------------------------------------------------------------------


def test_enrollment_token_is_shown_once_and_stored_as_a_hash(
    coordinator_client: APIClient, hospital_a: Institution
) -> None:
    response = coordinator_client.post(
        f"/api/v1/institutions/{hospital_a.pk}/enrollment-tokens/", {}, format="json"
    )
    assert response.status_code == 201, response.content
    token = response.json()["token"]
    record = EnrollmentToken.objects.get(institution=hospital_a)
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {record.token_hash, record.created_by}
    assert record.expires_at > timezone.now() + timedelta(hours=23)
    for path in (f"/api/v1/institutions/{hospital_a.pk}/", "/api/v1/audit-events/"):
        assert token not in coordinator_client.get(path).content.decode()
    assert agent_enroll(token=token, agent_version="1", hostname="h").credential.institution == hospital_a


def test_enrollment_token_lifetime_can_be_chosen(
    coordinator_client: APIClient, hospital_a: Institution
) -> None:
    response = coordinator_client.post(
        f"/api/v1/institutions/{hospital_a.pk}/enrollment-tokens/", {"hours": 2}, format="json"
    )
    assert response.status_code == 201
    assert EnrollmentToken.objects.get().expires_at < timezone.now() + timedelta(hours=2, minutes=1)


def test_enrollment_token_refusals(
    coordinator_client: APIClient,
    observer_client: APIClient,
    owner_a_client: APIClient,
    hospital_a: Institution,
) -> None:
    path = f"/api/v1/institutions/{hospital_a.pk}/enrollment-tokens/"
    assert observer_client.post(path, {}, format="json").status_code == 403
    assert owner_a_client.post(path, {}, format="json").status_code == 403
    assert (
        coordinator_client.post("/api/v1/institutions/999/enrollment-tokens/", {}, format="json").status_code
        == 404
    )
    assert coordinator_client.post(path, {"hours": 0}, format="json").status_code == 400
    assert not EnrollmentToken.objects.exists()


# --- credentials -------------------------------------------------------------------------


def test_credentials_list_shows_public_facts_and_online_state(
    coordinator_client: APIClient, hospital_a: Institution
) -> None:
    seen, key = _enrolled_credential(hospital_a, "seen-now")
    stale, _ = _enrolled_credential(hospital_a, "seen-long-ago")
    _enrolled_credential(hospital_a, "never-seen")
    AgentCredential.objects.filter(pk=seen.pk).update(last_seen_at=timezone.now() - timedelta(seconds=5))
    AgentCredential.objects.filter(pk=stale.pk).update(last_seen_at=timezone.now() - timedelta(seconds=61))
    response = coordinator_client.get(f"/api/v1/institutions/{hospital_a.pk}/credentials/")
    assert response.status_code == 200
    online = {row["hostname"]: row["online"] for row in response.json()["results"]}
    assert online == {"seen-now": True, "seen-long-ago": False, "never-seen": False}
    row = response.json()["results"][0]
    assert set(row) == {
        "id",
        "institution",
        "created_at",
        "revoked_at",
        "last_seen_at",
        "agent_version",
        "hostname",
        "online",
    }
    assert row["agent_version"] == "1.2.3"
    assert key.rsplit("_", 1)[1] not in response.content.decode()


def test_data_owner_sees_own_credentials_but_not_others(
    owner_a_client: APIClient, hospital_a: Institution, hospital_b: Institution
) -> None:
    _enrolled_credential(hospital_a)
    _enrolled_credential(hospital_b)
    assert owner_a_client.get(f"/api/v1/institutions/{hospital_a.pk}/credentials/").json()["count"] == 1
    response = owner_a_client.get(f"/api/v1/institutions/{hospital_b.pk}/credentials/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_coordinator_revokes_a_credential(coordinator_client: APIClient, hospital_a: Institution) -> None:
    credential, key = _enrolled_credential(hospital_a)
    response = coordinator_client.post(f"/api/v1/credentials/{credential.pk}/revoke/")
    assert response.status_code == 200, response.content
    assert response.json()["revoked_at"] is not None
    assert response.json()["online"] is False
    with pytest.raises(Unauthenticated, match="revoked"):
        credential_authenticate(key=key)
    again = coordinator_client.post(f"/api/v1/credentials/{credential.pk}/revoke/")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == response.json()["revoked_at"]
    assert AuditEvent.objects.filter(kind="agent.revoked").count() == 1


def test_revoke_refusals(
    coordinator_client: APIClient,
    observer_client: APIClient,
    owner_a_client: APIClient,
    hospital_a: Institution,
) -> None:
    credential, _ = _enrolled_credential(hospital_a)
    assert observer_client.post(f"/api/v1/credentials/{credential.pk}/revoke/").status_code == 403
    assert owner_a_client.post(f"/api/v1/credentials/{credential.pk}/revoke/").status_code == 403
    assert coordinator_client.post("/api/v1/credentials/999/revoke/").status_code == 404
    credential.refresh_from_db()
    assert credential.revoked_at is None


def test_tokens_are_listed_and_an_unused_one_withdrawn(
    coordinator_client: APIClient, observer_client: APIClient, hospital_a: Institution
) -> None:
    used = enrollment_token_create(institution=hospital_a, actor="user:carol")
    agent_enroll(token=used.token, agent_version="1.0", hostname="a")
    unused = enrollment_token_create(institution=hospital_a, actor="user:carol")
    listed = observer_client.get(f"/api/v1/institutions/{hospital_a.pk}/enrollment-tokens/").json()["results"]
    assert [(t["id"], t["state"]) for t in listed] == [(unused.record.pk, "unused"), (used.record.pk, "used")]
    assert unused.token not in str(listed)
    base = f"/api/v1/institutions/{hospital_a.pk}/enrollment-tokens"
    withdrawn = coordinator_client.post(f"{base}/{unused.record.pk}/withdraw/")
    assert withdrawn.status_code == 200
    assert withdrawn.json()["state"] == "withdrawn"
    again = coordinator_client.post(f"{base}/{used.record.pk}/withdraw/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "token_used"
    enroll = APIClient().post(
        "/api/agent/v1/enroll", {"token": unused.token, "agent_version": "1"}, format="json"
    )
    assert enroll.status_code == 401
