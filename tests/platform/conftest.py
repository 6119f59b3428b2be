"""Shared fixtures of the control-plane tests.

Coordinator API fixtures: ``isolated_model_storage``, ``hospital_a`` / ``hospital_b``,
``make_api_client`` and the role clients built with it (``coordinator_client``,
``observer_client``, ``owner_a_client``, ``owner_b_client``), ``study_payload``,
``make_study``, ``study_ab``, ``draft_job`` and ``running_job``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import user_create
from institutions.models import Institution
from institutions.services import institution_create
from studies.models import Study
from studies.services import study_create, study_decide
from training.models import Job
from training.services import job_begin, job_create, job_start

#: A small valid study: logistic regression on three numeric features, two classes.
STUDY_MODEL = {
    "kind": "logistic",
    "task": "binary",
    "num_features": 3,
    "num_classes": 2,
    "hidden_sizes": [64],
    "image_size": None,
}
STUDY_SCHEMA = {
    "features": [{"name": name, "kind": "numeric"} for name in ("age", "bmi", "glucose")],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
    "site_column": None,
}
STUDY_TRAINING = {"epochs": 1, "batch_size": 16, "learning_rate": 0.1}

MakeApiClient = Callable[..., APIClient]


@pytest.fixture
def isolated_model_storage(tmp_path: Path, settings: Settings) -> Path:
    """Model blobs go to a temporary folder for this test."""
    storage = tmp_path / "models"
    settings.ENV = dataclasses.replace(settings.ENV, model_storage_dir=storage)
    return storage


@pytest.fixture
def hospital_a(db: None) -> Institution:
    return institution_create(name="Hospital A", actor="user:setup")


@pytest.fixture
def hospital_b(db: None) -> Institution:
    return institution_create(name="Hospital B", actor="user:setup")


@pytest.fixture
def make_api_client(db: None) -> MakeApiClient:
    """``make_api_client(username, role, institution=None)``: a client signed in with a token."""

    def make(username: str, role: Role, institution: Institution | None = None) -> APIClient:
        created = user_create(
            username=username,
            role=role,
            institution=institution,
            password=None,
            with_token=True,
            actor="system",
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {created.token}")
        return client

    return make


@pytest.fixture
def coordinator_client(make_api_client: MakeApiClient) -> APIClient:
    return make_api_client("carol", Role.COORDINATOR)


@pytest.fixture
def observer_client(make_api_client: MakeApiClient) -> APIClient:
    return make_api_client("oscar", Role.OBSERVER)


@pytest.fixture
def owner_a_client(make_api_client: MakeApiClient, hospital_a: Institution) -> APIClient:
    return make_api_client("alice", Role.DATA_OWNER, hospital_a)


@pytest.fixture
def owner_b_client(make_api_client: MakeApiClient, hospital_b: Institution) -> APIClient:
    return make_api_client("bob", Role.DATA_OWNER, hospital_b)


@pytest.fixture
def study_payload(hospital_a: Institution, hospital_b: Institution) -> dict[str, object]:
    """A valid body for ``POST studies/`` with both hospitals."""
    return {
        "name": "Diabetes risk",
        "description": "Logistic regression on three lab values.",
        "model": dict(STUDY_MODEL),
        "data_schema": dict(STUDY_SCHEMA),
        "strategy": "fedavg",
        "strategy_params": {},
        "training": dict(STUDY_TRAINING),
        "feature_scaling": None,
        "privacy": {},
        "validation_fraction": 0.2,
        "seed": 7,
        "institutions": [hospital_a.pk, hospital_b.pk],
    }


def _study_create(name: str, institutions: list[Institution]) -> Study:
    return study_create(
        name=name,
        description="",
        model_config=STUDY_MODEL,
        data_schema=STUDY_SCHEMA,
        strategy="fedavg",
        strategy_params={},
        training=STUDY_TRAINING,
        feature_scaling=None,
        privacy={},
        validation_fraction=0.2,
        seed=0,
        institution_ids=[institution.pk for institution in institutions],
        actor="user:setup",
    )


@pytest.fixture
def make_study(db: None) -> Callable[[str, list[Institution]], Study]:
    """``make_study(name, institutions)``: a valid study through the service."""
    return _study_create


@pytest.fixture
def study_ab(hospital_a: Institution, hospital_b: Institution) -> Study:
    """A study with both hospitals, both decisions pending."""
    return _study_create("Study AB", [hospital_a, hospital_b])


@pytest.fixture
def draft_job(study_ab: Study) -> Job:
    return job_create(
        study=study_ab,
        num_rounds=2,
        min_updates=2,
        round_deadline_seconds=600,
        max_deadline_extensions=1,
        actor="user:setup",
    )


@pytest.fixture
def running_job(
    draft_job: Job, hospital_a: Institution, hospital_b: Institution, isolated_model_storage: Path
) -> Job:
    """``draft_job`` after both hospitals approved and it started (round 1 open, model 0 written)."""
    for institution in (hospital_a, hospital_b):
        study_decide(study=draft_job.study, institution=institution, approve=True, actor="user:setup")
    job_start(job_id=draft_job.pk, actor="user:setup")
    job_begin(job_id=draft_job.pk)  # the worker's part: initial model, round 1
    draft_job.refresh_from_db()
    return draft_job


@pytest.fixture
def agent_world(tmp_path: Path, settings: Settings) -> None:
    """For tests that drive agents through the API: blobs in a temporary folder, Celery
    tasks run at once, enrollment throttling counts cleared."""
    from django.core.cache import cache

    settings.ENV = dataclasses.replace(settings.ENV, model_storage_dir=tmp_path / "models")
    settings.CELERY_TASK_ALWAYS_EAGER = True
    cache.clear()
