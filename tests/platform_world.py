"""A small federation for tests: sites with agents enrolled over the agent API, and a
running job (studies and jobs made with :mod:`world`'s builders).

Used by the control plane's protocol tests and by the security tests.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from rest_framework.test import APIClient
from world import (
    STUDY_MODEL,
    STUDY_SCHEMA,
    STUDY_TRAINING,
    job_make,
    job_run,
    study_approve_all,
    study_make,
)

from federation.types import ModelSpec
from federation.wire import deserialize_weights, serialize_weights
from institutions import services as institution_services
from institutions.models import Institution
from training.models import Job


class Site:
    """One hospital: its institution and an enrolled agent client."""

    def __init__(self, name: str) -> None:
        self.institution = institution_services.institution_create(name=name, actor="user:test")
        token = institution_services.enrollment_token_create(
            institution=self.institution, actor="user:test"
        ).token
        response = APIClient().post(
            "/api/agent/v1/enroll", {"token": token, "agent_version": "1.0"}, format="json"
        )
        assert response.status_code == 201, response.content
        self.key = response.json()["key"]
        self.credential_id = response.json()["credential_id"]
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Agent {self.key}")

    def work(self, wait: int = 0) -> dict | None:
        response = self.client.get(f"/api/agent/v1/work?wait={wait}")
        assert response.status_code == 200, response.content
        return response.json()["task"]

    def model(self, task: dict) -> bytes:
        response = self.client.get(f"/api/agent/v1/models/{task['model_version']['id']}")
        assert response.status_code == 200
        body = b"".join(response.streaming_content)
        assert (
            hashlib.sha256(body).hexdigest()
            == response["X-Content-SHA256"]
            == task["model_version"]["sha256"]
        )
        return body

    def upload(self, task: dict, blob: bytes, *, num_examples: int = 50, **meta_changes: object):  # type: ignore[no-untyped-def]
        meta = {
            "num_examples": num_examples,
            "metrics": {"global_accuracy": 0.5, "local_accuracy": 0.7},
            "base_model_sha256": task["model_version"]["sha256"],
            "job_id": task["job_id"],
            "round_number": task["round_number"],
            **meta_changes,
        }
        return self.client.post(
            f"/api/agent/v1/rounds/{task['round_id']}/update",
            {"meta": json.dumps(meta), "tensors": io.BytesIO(blob)},
            format="multipart",
        )


def trained(blob: bytes, shift: float) -> bytes:
    """The received model moved by ``shift``: a stand-in for local training."""
    weights = deserialize_weights(blob, spec=spec_of(blob))
    return serialize_weights({name: array + np.float32(shift) for name, array in weights.items()})


def spec_of(blob: bytes) -> ModelSpec:
    length = int.from_bytes(blob[:8], "little")
    return ModelSpec.from_json(json.loads(json.loads(blob[8 : 8 + length])["__metadata__"]["model_spec"]))


def start_job(
    institutions: list[Institution],
    *,
    name: str,
    model: dict[str, object] = STUDY_MODEL,
    strategy: str = "fedavg",
    rounds: int = 2,
    min_updates: int | None = None,
    round_deadline_seconds: int = 60,
    privacy: dict[str, object] | None = None,
    training: dict[str, object] = STUDY_TRAINING,
    update_norm_bound: dict[str, object] | None = None,
    data_schema: dict[str, object] = STUDY_SCHEMA,
) -> Job:
    """A started job of a new study that every institution approved: round 1 is open."""
    study = study_make(
        name,
        institutions,
        strategy=strategy,
        model=model,
        training=training,
        privacy=privacy,
        update_norm_bound=update_norm_bound,
        data_schema=data_schema,
    )
    study_approve_all(study)
    job = job_make(
        study,
        num_rounds=rounds,
        min_updates=min_updates or len(institutions),
        round_deadline_seconds=round_deadline_seconds,
    )
    return job_run(job)


def make_job(
    sites: list[Site], *, rounds: int = 2, min_updates: int | None = None, strategy: str = "fedavg"
) -> Job:
    return start_job(
        [site.institution for site in sites],
        name=f"study-{len(sites)}-{strategy}-{rounds}",
        strategy=strategy,
        rounds=rounds,
        min_updates=min_updates,
    )
