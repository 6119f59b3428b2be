"""``audit-events/``: filters, and a data owner's view limited to their institution."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from audit.services import audit_record
from institutions.models import Institution
from training.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def audit_trail(draft_job: Job, hospital_a: Institution, hospital_b: Institution) -> Job:
    """Events of both hospitals, of the job, and of other actors, on top of the setup's own."""
    audit_record(actor="user:alice", kind="study.approved", institution=hospital_a, details={"study_id": 1})
    audit_record(actor="user:bob", kind="study.declined", institution=hospital_b, details={"study_id": 1})
    audit_record(actor="agent:7", kind="update.received", institution=hospital_a, job=draft_job)
    return draft_job


def _kinds(client: APIClient, query: str = "") -> list[str]:
    response = client.get(f"/api/v1/audit-events/{query}")
    assert response.status_code == 200, response.content
    return [event["kind"] for event in response.json()["results"]]


def test_coordinator_and_observer_see_every_event_newest_first(
    coordinator_client: APIClient, observer_client: APIClient, audit_trail: Job
) -> None:
    expected = list(AuditEvent.objects.order_by("-pk").values_list("kind", flat=True))
    assert len(expected) >= 6
    assert _kinds(coordinator_client) == expected
    assert _kinds(observer_client) == expected


def test_filters(coordinator_client: APIClient, audit_trail: Job, hospital_a: Institution) -> None:
    assert _kinds(coordinator_client, f"?institution={hospital_a.pk}") == [
        "update.received",
        "study.approved",
        "institution.created",
    ]
    assert _kinds(coordinator_client, f"?job={audit_trail.pk}") == ["update.received", "job.created"]
    assert _kinds(coordinator_client, "?actor=user:bob") == ["study.declined"]
    assert _kinds(coordinator_client, "?kind=study.created") == ["study.created"]
    assert _kinds(coordinator_client, f"?kind=update.received&institution={hospital_a.pk}") == [
        "update.received"
    ]


def test_event_fields(coordinator_client: APIClient, audit_trail: Job, hospital_a: Institution) -> None:
    [event] = coordinator_client.get("/api/v1/audit-events/?kind=study.approved").json()["results"]
    assert event["actor"] == "user:alice"
    assert (event["institution"], event["job"]) == (hospital_a.pk, None)
    assert event["details"] == {"study_id": 1}
    assert event["at"]


def test_data_owner_sees_only_their_institutions_events(
    owner_a_client: APIClient, audit_trail: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    assert _kinds(owner_a_client) == [
        "update.received",
        "study.approved",
        "user.created",
        "institution.created",
    ]
    assert _kinds(owner_a_client, f"?institution={hospital_b.pk}") == []
    assert _kinds(owner_a_client, "?actor=user:bob") == []


def test_audit_events_are_paginated(coordinator_client: APIClient, audit_trail: Job) -> None:
    body = coordinator_client.get("/api/v1/audit-events/?limit=2").json()
    assert body["count"] == AuditEvent.objects.count()
    assert len(body["results"]) == 2
    assert "offset=2" in body["next"]


def test_malformed_filter_is_a_field_error(coordinator_client: APIClient) -> None:
    response = coordinator_client.get("/api/v1/audit-events/?job=last")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["job"]


def test_audit_events_are_read_only(coordinator_client: APIClient) -> None:
    assert coordinator_client.post("/api/v1/audit-events/", {}, format="json").status_code == 405
