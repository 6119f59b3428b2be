"""``jobs/``: creation, scoped reading, and start / pause / resume / cancel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient
from world import study_make

from accounts.models import Role
from audit.models import AuditEvent
from institutions.models import Institution
from institutions.services import institution_create
from studies.models import Study
from studies.services import study_decide
from training.models import Job, JobState, ModelVersion, RoundState

pytestmark = pytest.mark.django_db


def _approve(study: Study, *institutions: Institution) -> None:
    for institution in institutions:
        study_decide(study=study, institution=institution, approve=True, actor="user:setup")


# --- create ------------------------------------------------------------------------------


def test_coordinator_creates_a_job_with_defaults(coordinator_client: APIClient, study_ab: Study) -> None:
    response = coordinator_client.post(
        "/api/v1/jobs/", {"study": study_ab.pk, "num_rounds": 3, "min_updates": 2}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "draft"
    assert body["study"] == {"id": study_ab.pk, "name": "Study AB"}
    assert (body["round_deadline_seconds"], body["max_deadline_extensions"]) == (600, 1)
    assert body["current_round"] is None
    assert Job.objects.get(pk=body["id"]).created_by == "user:carol"


def test_min_updates_above_the_participants_is_refused(
    coordinator_client: APIClient, study_ab: Study
) -> None:
    response = coordinator_client.post(
        "/api/v1/jobs/", {"study": study_ab.pk, "num_rounds": 3, "min_updates": 3}, format="json"
    )
    assert response.status_code == 400
    assert "min_updates must lie between 1 and the 2 participants" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_min_updates_below_what_the_rule_can_combine_is_refused(
    coordinator_client: APIClient, hospital_a: Institution, hospital_b: Institution
) -> None:
    """Multi-Krum with f = 0 scores each update by its 2f + 3 - f - 2 = 1 nearest neighbour
    among at least 3: a job of 3 sites whose rounds could close with 2 cannot run."""
    hospital_c = institution_create(name="Hospital C", actor="user:setup")
    sites = [hospital_a, hospital_b, hospital_c]
    params = {"num_byzantine": 0, "num_selected": 2}
    study = study_make("Two kept", sites, strategy="multi_krum", strategy_params=params)
    response = coordinator_client.post(
        "/api/v1/jobs/", {"study": study.pk, "num_rounds": 3, "min_updates": 2}, format="json"
    )
    assert response.status_code == 400
    assert "multi_krum needs at least 3 updates" in response.json()["error"]["message"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"study": 999, "num_rounds": 1, "min_updates": 1}, "study"),
        ({"num_rounds": 0, "min_updates": 1}, "num_rounds"),
        ({"num_rounds": 1, "min_updates": 1, "round_deadline_seconds": 0}, "round_deadline_seconds"),
    ],
)
def test_malformed_job_fields(
    coordinator_client: APIClient, study_ab: Study, body: dict[str, object], field: str
) -> None:
    response = coordinator_client.post("/api/v1/jobs/", {"study": study_ab.pk, **body}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


@pytest.mark.parametrize("client_fixture", ["observer_client", "owner_a_client"])
def test_only_coordinators_create_jobs(
    request: pytest.FixtureRequest, client_fixture: str, study_ab: Study
) -> None:
    response = request.getfixturevalue(client_fixture).post(
        "/api/v1/jobs/", {"study": study_ab.pk, "num_rounds": 1, "min_updates": 1}, format="json"
    )
    assert response.status_code == 403
    assert not Job.objects.exists()


# --- read --------------------------------------------------------------------------------


def test_jobs_are_scoped_to_the_data_owners_studies(
    owner_a_client: APIClient, make_api_client: Callable[..., APIClient], draft_job: Job
) -> None:
    outsider = make_api_client(
        "olive", Role.DATA_OWNER, institution_create(name="Hospital C", actor="user:setup")
    )
    assert [job["id"] for job in owner_a_client.get("/api/v1/jobs/").json()["results"]] == [draft_job.pk]
    assert owner_a_client.get(f"/api/v1/jobs/{draft_job.pk}/").status_code == 200
    assert outsider.get("/api/v1/jobs/").json()["count"] == 0
    assert outsider.get(f"/api/v1/jobs/{draft_job.pk}/").status_code == 404
    assert outsider.get(f"/api/v1/jobs/{draft_job.pk}/progress/").status_code == 404
    assert outsider.get(f"/api/v1/jobs/{draft_job.pk}/models/").status_code == 404


def test_job_list_filters(observer_client: APIClient, draft_job: Job, running_job: Job) -> None:
    other = Job.objects.create(
        study=draft_job.study, plan=draft_job.plan, num_rounds=1, min_updates=1, created_by="user:setup"
    )
    assert observer_client.get("/api/v1/jobs/").json()["count"] == 2
    running = observer_client.get("/api/v1/jobs/?state=running").json()["results"]
    assert [job["id"] for job in running] == [running_job.pk]
    assert observer_client.get(f"/api/v1/jobs/?study={draft_job.study_id}").json()["count"] == 2
    assert other.pk in {
        job["id"] for job in observer_client.get("/api/v1/jobs/?state=draft").json()["results"]
    }
    assert observer_client.get("/api/v1/jobs/?state=sleeping").status_code == 400


# --- start and the other state changes ---------------------------------------------------


def test_start_is_refused_until_every_site_approved(
    coordinator_client: APIClient, draft_job: Job, hospital_a: Institution, isolated_model_storage: Path
) -> None:
    _approve(draft_job.study, hospital_a)
    response = coordinator_client.post(f"/api/v1/jobs/{draft_job.pk}/start/")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_approved"
    assert "Hospital B (pending)" in error["message"]
    assert "Hospital A" not in error["message"]
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT
    assert not ModelVersion.objects.exists()


def test_start_after_every_site_approved(
    coordinator_client: APIClient,
    draft_job: Job,
    hospital_a: Institution,
    hospital_b: Institution,
    isolated_model_storage: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    _approve(draft_job.study, hospital_a, hospital_b)
    with django_capture_on_commit_callbacks() as callbacks:
        response = coordinator_client.post(f"/api/v1/jobs/{draft_job.pk}/start/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "running"
    assert body["started_at"] is not None
    # The request built no model: a worker task does, then opens round 1.
    assert not ModelVersion.objects.filter(job=draft_job).exists()
    assert len(callbacks) == 1
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        callbacks[0]()
    assert draft_job.rounds.get().state == RoundState.OPEN
    assert ModelVersion.objects.filter(job=draft_job, number=0).exists()
    assert AuditEvent.objects.filter(kind="job.started", actor="user:carol", job=draft_job).exists()
    again = coordinator_client.post(f"/api/v1/jobs/{draft_job.pk}/start/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_state"


def test_pause_resume_cancel(coordinator_client: APIClient, running_job: Job) -> None:
    base = f"/api/v1/jobs/{running_job.pk}"
    assert coordinator_client.post(f"{base}/resume/").status_code == 409
    assert coordinator_client.post(f"{base}/pause/").json()["state"] == "paused"
    assert coordinator_client.post(f"{base}/pause/").status_code == 409
    assert coordinator_client.post(f"{base}/resume/").json()["state"] == "running"
    cancelled = coordinator_client.post(f"{base}/cancel/")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    round_ = running_job.rounds.get()
    # A person ended it: recorded as a cancellation, not as a round the sites failed.
    assert (round_.state, round_.failure_reason) == (RoundState.CANCELLED, "job cancelled by user:carol")
    progress = coordinator_client.get(f"{base}/progress/").json()
    assert progress["rounds"][0]["state"] == "cancelled"
    assert coordinator_client.post(f"{base}/cancel/").status_code == 409
    kinds = list(
        AuditEvent.objects.filter(job=running_job, actor="user:carol").values_list("kind", flat=True)
    )
    assert kinds == ["job.paused", "job.running", "job.cancelled"]


def test_a_draft_job_can_be_cancelled(coordinator_client: APIClient, draft_job: Job) -> None:
    assert coordinator_client.post(f"/api/v1/jobs/{draft_job.pk}/cancel/").json()["state"] == "cancelled"


@pytest.mark.parametrize("action", ["start", "pause", "resume", "cancel"])
@pytest.mark.parametrize("client_fixture", ["observer_client", "owner_a_client"])
def test_only_coordinators_change_a_job(
    request: pytest.FixtureRequest, client_fixture: str, action: str, draft_job: Job
) -> None:
    response = request.getfixturevalue(client_fixture).post(f"/api/v1/jobs/{draft_job.pk}/{action}/")
    assert response.status_code == 403
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT


def test_unknown_job_is_404(coordinator_client: APIClient) -> None:
    assert coordinator_client.post("/api/v1/jobs/999/start/").status_code == 404
    assert coordinator_client.get("/api/v1/jobs/999/").status_code == 404
