"""A model trained elsewhere, uploaded in a finished job's format, becomes its next version;
the sites evaluate it beside the job's own through a query. Wrong formats, running jobs,
non-finite values and other roles are refused."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient
from safetensors.numpy import save
from world import job_make, job_run, person_make, study_approve_all, study_make

from accounts.models import Role
from federation.wire import deserialize_weights, serialize_weights
from institutions.models import Institution
from training.blobs import blob_store
from training.models import Job, JobState
from training.selectors import job_model_spec_get

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_job(agent_world: None, hospital_a: Institution, hospital_b: Institution) -> Job:
    study = study_make("Uploads", [hospital_a, hospital_b])
    study_approve_all(study)
    job = job_run(job_make(study, num_rounds=1, min_updates=2))
    Job.objects.filter(pk=job.pk).update(state=JobState.COMPLETED)
    job.refresh_from_db()
    return job


def model_bytes(job: Job, shift: float = 0.5, **changes: np.ndarray) -> bytes:
    spec = job_model_spec_get(job=job)
    weights = deserialize_weights(blob_store().read(job.model_versions.get(number=0).sha256), spec=spec)
    weights = {name: tensor + shift for name, tensor in weights.items()} | changes
    return serialize_weights(weights)


def upload(client: APIClient, job: Job, data: bytes, name: str = "trained at the registry"):  # type: ignore[no-untyped-def]
    file = SimpleUploadedFile("model.safetensors", data)
    return client.post(
        f"/api/v1/jobs/{job.pk}/models/upload/", {"tensors": file, "name": name}, format="multipart"
    )


def test_an_uploaded_model_becomes_the_jobs_next_version(
    coordinator_client: APIClient, finished_job: Job
) -> None:
    data = model_bytes(finished_job)
    response = upload(coordinator_client, finished_job, data)
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["number"] == 1
    assert version["provenance"]["uploaded"] == {"by": "user:carol", "name": "trained at the registry"}
    stored = deserialize_weights(
        blob_store().read(version["sha256"]), spec=job_model_spec_get(job=finished_job)
    )
    original = deserialize_weights(data, spec=job_model_spec_get(job=finished_job))
    for name, tensor in original.items():
        np.testing.assert_array_equal(stored[name], tensor)
    listed = coordinator_client.get(f"/api/v1/jobs/{finished_job.pk}/models/").json()["results"]
    assert [v["number"] for v in listed] == [0, 1]
    # The sites can evaluate it: an evaluation query names it like any version of the study.
    query = {"query": {"kind": "evaluation", "versions": [version["id"]]}}
    asked = coordinator_client.post(f"/api/v1/studies/{finished_job.study_id}/queries/", query, format="json")
    assert asked.status_code == 201, asked.content
    assert asked.json()["title"] == f"evaluation: job {finished_job.pk}, version 1"


def test_a_model_in_another_format_is_refused(coordinator_client: APIClient, finished_job: Job) -> None:
    spec = job_model_spec_get(job=finished_job)
    name = spec.tensors[0].name
    wrong = model_bytes(finished_job, **{name: np.zeros((3, 3), dtype=np.float32)})
    response = upload(coordinator_client, finished_job, wrong)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_model"
    weights = deserialize_weights(model_bytes(finished_job), spec=spec)
    nan = save({name: np.full_like(tensor, np.nan) for name, tensor in weights.items()})
    refused = upload(coordinator_client, finished_job, nan).json()["error"]
    assert refused["code"] == "invalid_model"
    assert "NaN" in refused["message"] or "non-finite" in refused["message"]
    assert finished_job.model_versions.count() == 1


def test_a_running_job_takes_no_upload_and_only_coordinators_upload(
    coordinator_client: APIClient, observer_client: APIClient, finished_job: Job
) -> None:
    assert upload(observer_client, finished_job, model_bytes(finished_job)).status_code == 403
    Job.objects.filter(pk=finished_job.pk).update(state=JobState.RUNNING)
    response = upload(coordinator_client, finished_job, model_bytes(finished_job))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"


def test_the_console_uploads_to_a_finished_job_and_lists_the_upload(finished_job: Job) -> None:
    coordinator = Client()
    coordinator.force_login(person_make("carla", Role.COORDINATOR, None, with_token=False).user)
    page = coordinator.get(f"/jobs/{finished_job.pk}/").content.decode()
    assert 'data-testid="model-upload-form"' in page
    file = SimpleUploadedFile("model.safetensors", model_bytes(finished_job))
    response = coordinator.post(
        f"/jobs/{finished_job.pk}/models/upload/", {"tensors": file, "name": "registry model"}
    )
    assert response.status_code == 302
    assert finished_job.model_versions.count() == 2
    page = coordinator.get(f"/jobs/{finished_job.pk}/").content.decode()
    assert "uploaded: registry model" in page
    assert "is version 1: the sites can now evaluate it" in page
    wrong = SimpleUploadedFile("model.safetensors", b"not safetensors")
    coordinator.post(f"/jobs/{finished_job.pk}/models/upload/", {"tensors": wrong, "name": "broken"})
    assert (
        "the model is not in this job&#x27;s format"
        in coordinator.get(f"/jobs/{finished_job.pk}/").content.decode()
    )
    assert finished_job.model_versions.count() == 2
