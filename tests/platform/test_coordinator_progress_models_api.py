"""``jobs/<id>/progress/``, ``jobs/<id>/models/`` and ``models/<id>/download/``."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Role
from audit.models import AuditEvent
from institutions.models import AgentCredential, Institution
from institutions.services import agent_enroll, enrollment_token_create, institution_create
from training.blobs import blob_store
from training.models import Job, ModelVersion, Refusal, Update
from training.services import job_pause, job_resume

pytestmark = pytest.mark.django_db


def _credential(institution: Institution) -> AgentCredential:
    token = enrollment_token_create(institution=institution, actor="user:setup").token
    return agent_enroll(token=token, agent_version="1.0", hostname="agent").credential


def _record_update(job: Job, institution: Institution, metrics: dict[str, float]) -> Update:
    """An update row as the agent API would store it (the bytes do not matter here)."""
    round_ = job.rounds.get(number=1)
    return Update.objects.create(
        round=round_,
        institution=institution,
        credential=_credential(institution),
        num_examples=50,
        metrics=metrics,
        sha256="ab" * 32,
        size=10,
    )


def _body(response: object) -> bytes:
    return b"".join(response.streaming_content)  # type: ignore[attr-defined]


# --- progress ----------------------------------------------------------------------------


def _round_seconds(client: APIClient, job: Job) -> float:
    [round_] = client.get(f"/api/v1/jobs/{job.pk}/progress/").json()["rounds"]
    return float(round_["duration_seconds"])


def test_a_rounds_duration_leaves_out_the_time_its_job_was_paused(
    coordinator_client: APIClient, running_job: Job
) -> None:
    """Opened 300 s ago, paused for 200 s of them: the round has run for 100 s."""
    now = timezone.now()
    running_job.rounds.filter(number=1).update(opened_at=now - timedelta(seconds=300))
    job_pause(job_id=running_job.pk, actor="user:carol")
    Job.objects.filter(pk=running_job.pk).update(paused_at=now - timedelta(seconds=200))
    assert _round_seconds(coordinator_client, running_job) == pytest.approx(100, abs=5)  # while paused
    job_resume(job_id=running_job.pk, actor="user:carol")
    assert _round_seconds(coordinator_client, running_job) == pytest.approx(100, abs=5)  # and after
    running_job.refresh_from_db()
    assert running_job.paused_at is None


def test_progress_after_start(coordinator_client: APIClient, running_job: Job) -> None:
    response = coordinator_client.get(f"/api/v1/jobs/{running_job.pk}/progress/")
    assert response.status_code == 200
    body = response.json()
    assert body["job"]["state"] == "running"
    assert body["job"]["current_round"] == 1
    [round_] = body["rounds"]
    assert (round_["number"], round_["kind"], round_["state"]) == (1, "train", "open")
    assert (round_["expected_updates"], round_["received"]) == (2, 0)
    assert round_["closed_at"] is None
    assert 0 <= round_["duration_seconds"] < 60
    assert [(s["institution"]["name"], s["decision"], s["updates_sent"]) for s in body["sites"]] == [
        ("Hospital A", "approved", 0),
        ("Hospital B", "approved", 0),
    ]
    assert all(site["agent_online"] is False and site["agent_last_seen_at"] is None for site in body["sites"])


def test_progress_counts_updates_refusals_and_agents(
    coordinator_client: APIClient, running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    update = _record_update(running_job, hospital_a, {"local_accuracy": 0.75})
    AgentCredential.objects.filter(pk=update.credential_id).update(last_seen_at=timezone.now())
    Refusal.objects.create(job=running_job, institution=hospital_b, reason="policy forbids mlp")
    body = coordinator_client.get(f"/api/v1/jobs/{running_job.pk}/progress/").json()
    assert body["rounds"][0]["received"] == 1
    site_a, site_b = body["sites"]
    assert (site_a["updates_sent"], site_a["latest_metrics"], site_a["agent_online"]) == (
        1,
        {"local_accuracy": 0.75},
        True,
    )
    assert site_a["last_update_at"] is not None
    assert (site_a["refused"], site_b["refused"]) == (False, True)
    assert site_b["refusal_reason"] == "policy forbids mlp"
    assert (site_b["updates_sent"], site_b["latest_metrics"], site_b["last_update_at"]) == (0, {}, None)


def test_data_owner_sees_only_their_own_site_in_progress(
    owner_a_client: APIClient, running_job: Job, hospital_b: Institution
) -> None:
    _record_update(running_job, hospital_b, {"local_accuracy": 0.9})
    body = owner_a_client.get(f"/api/v1/jobs/{running_job.pk}/progress/").json()
    assert [site["institution"]["name"] for site in body["sites"]] == ["Hospital A"]
    assert body["rounds"][0]["received"] == 1


# --- models ------------------------------------------------------------------------------


def test_models_listing_after_start(observer_client: APIClient, running_job: Job) -> None:
    version = ModelVersion.objects.get(job=running_job)
    response = observer_client.get(f"/api/v1/jobs/{running_job.pk}/models/")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert row["id"] == version.pk
    assert (row["number"], row["sha256"], row["size"]) == (0, version.sha256, version.size)
    assert (row["parent_number"], row["made_by_round_number"]) == (None, None)
    assert row["size"] > 0


def test_models_listing_names_parent_and_round(coordinator_client: APIClient, running_job: Job) -> None:
    initial = ModelVersion.objects.get(job=running_job)
    ModelVersion.objects.create(
        job=running_job,
        number=1,
        sha256=initial.sha256,
        size=initial.size,
        parent=initial,
        made_by_round=running_job.rounds.get(number=1),
        provenance={"strategy": "fedavg"},
        metrics={"accuracy": 0.8},
    )
    rows = coordinator_client.get(f"/api/v1/jobs/{running_job.pk}/models/").json()["results"]
    assert [(r["number"], r["parent_number"], r["made_by_round_number"]) for r in rows] == [
        (0, None, None),
        (1, 0, 1),
    ]
    assert rows[1]["provenance"] == {"strategy": "fedavg"}
    assert rows[1]["metrics"] == {"accuracy": 0.8}


@pytest.mark.parametrize("accept", [None, "application/octet-stream"])
def test_model_download_bytes_match_the_checksums(
    owner_a_client: APIClient, running_job: Job, accept: str | None
) -> None:
    version = ModelVersion.objects.get(job=running_job)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = owner_a_client.get(f"/api/v1/models/{version.pk}/download/", **headers)
    assert response.status_code == 200
    data = _body(response)
    assert hashlib.sha256(data).hexdigest() == response["X-Content-SHA256"] == version.sha256
    assert len(data) == version.size == int(response["Content-Length"])
    assert response["Content-Type"] == "application/octet-stream"
    expected_name = f"model-{running_job.pk}-0-{version.sha256[:12]}.safetensors"
    assert response["Content-Disposition"] == f'attachment; filename="{expected_name}"'
    event = AuditEvent.objects.get(kind="model.downloaded")
    assert (event.actor, event.details["version"]) == ("user:alice", 0)


def test_a_model_bundle_holds_what_applying_it_needs(
    owner_a_client: APIClient, running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    version = ModelVersion.objects.get(job=running_job)
    ModelVersion.objects.filter(pk=version.pk).update(
        provenance={"updates": [{"institution": "Hospital A"}, {"institution": "Hospital B"}]}
    )
    response = owner_a_client.get(f"/api/v1/models/{version.pk}/bundle/", HTTP_ACCEPT="application/zip")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(_body(response))) as archive:
        manifest = json.loads(archive.read("model.json"))
        weights = archive.read("model.safetensors")
        provenance = json.loads(archive.read("provenance.json"))
        card = archive.read("MODEL_CARD.md").decode()
    assert hashlib.sha256(weights).hexdigest() == manifest["weights"]["sha256"] == version.sha256
    assert manifest["data_schema"] == running_job.study.data_schema
    assert manifest["model"] == running_job.study.model_config
    assert manifest["job"]["id"] == running_job.pk
    # A data owner's bundle lists only their own site's update, as the progress page does.
    assert [u["institution"] for u in provenance["updates"]] == ["Hospital A"]
    assert f"# Model card: {running_job.study.name}" in card
    event = AuditEvent.objects.get(kind="model.downloaded")
    assert (event.actor, event.details["form"]) == ("user:alice", "bundle")


def test_corrupt_blob_is_not_served(
    coordinator_client: APIClient, running_job: Job, isolated_model_storage: Path
) -> None:
    version = ModelVersion.objects.get(job=running_job)
    path = blob_store().path(version.sha256)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    response = coordinator_client.get(
        f"/api/v1/models/{version.pk}/download/", HTTP_ACCEPT="application/octet-stream"
    )
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "blob_corrupt"
    assert not AuditEvent.objects.filter(kind="model.downloaded").exists()  # nothing went out


def test_model_download_outside_scope_is_404(
    make_api_client: Callable[..., APIClient], running_job: Job, coordinator_client: APIClient
) -> None:
    outsider = make_api_client(
        "olive", Role.DATA_OWNER, institution_create(name="Hospital C", actor="user:setup")
    )
    version = ModelVersion.objects.get(job=running_job)
    response = outsider.get(f"/api/v1/models/{version.pk}/download/", HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert coordinator_client.get("/api/v1/models/999/download/").status_code == 404


def test_a_data_owner_sees_only_their_own_site_in_a_models_provenance(
    running_job: Job, owner_a_client: APIClient, coordinator_client: APIClient
) -> None:
    version = running_job.model_versions.get(number=0)
    version.provenance = {
        "strategy": "fedavg",
        "updates": [
            {"institution": "Hospital A", "sha256": "a" * 64, "num_examples": 10},
            {"institution": "Hospital B", "sha256": "b" * 64, "num_examples": 20},
        ],
        "details": {"weights": [0.33, 0.67]},
    }
    version.save()
    owner_view = owner_a_client.get(f"/api/v1/jobs/{running_job.pk}/models/").json()["results"][0]
    coordinator_view = coordinator_client.get(f"/api/v1/jobs/{running_job.pk}/models/").json()["results"][0]
    assert [u["institution"] for u in owner_view["provenance"]["updates"]] == ["Hospital A"]
    assert "details" not in owner_view["provenance"]
    assert len(coordinator_view["provenance"]["updates"]) == 2
