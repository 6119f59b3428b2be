"""The control plane tests' shared fixtures, built with :mod:`world`.

Imported by name into the per-folder conftests that use them (``tests/platform/``,
``tests/console/``): a root ``tests/conftest.py`` would collide with the browser tests' one
under ``--doctest-modules``, and ``pytest_plugins`` is allowed in the root conftest only.

- ``isolated_model_storage``, ``agent_world``: blobs in a temporary folder (and, for tests
  driving agents, Celery tasks run at once and throttling counts cleared).
- ``hospital_a``, ``hospital_b``; ``make_study``, ``study_ab``, ``study_a``, ``study_payload``;
  ``draft_job`` (2 rounds) and ``running_job`` (approved, started, round 1 open).
- People: ``make_api_client`` and its role clients (``coordinator_client``,
  ``observer_client``, ``owner_a_client``, ``owner_b_client``) for the REST API;
  ``make_client`` and its role browsers (``coordinator``, ``observer``, ``owner_a``,
  ``owner_b``), signed in to the console.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from django.test import Client
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient
from world import (
    STUDY_MODEL,
    STUDY_SCHEMA,
    STUDY_TRAINING,
    job_make,
    job_run,
    person_make,
    study_approve_all,
    study_make,
)

from accounts.models import Role
from institutions.models import Institution
from institutions.services import institution_create
from studies.models import Study
from training.models import Job

MakeApiClient = Callable[..., APIClient]
MakeClient = Callable[..., Client]
MakeStudy = Callable[[str, list[Institution]], Study]


@pytest.fixture
def isolated_model_storage(tmp_path: Path, settings: Settings) -> Path:
    """Model blobs go to a temporary folder for this test."""
    storage = tmp_path / "models"
    settings.ENV = dataclasses.replace(settings.ENV, model_storage_dir=storage)
    return storage


@pytest.fixture
def agent_world(isolated_model_storage: Path, settings: Settings) -> None:
    """For tests that drive agents through the API: blobs in a temporary folder, Celery
    tasks run at once, enrollment throttling counts cleared."""
    from django.core.cache import cache

    settings.CELERY_TASK_ALWAYS_EAGER = True
    cache.clear()


@pytest.fixture
def hospital_a(db: None) -> Institution:
    return institution_create(name="Hospital A", actor="user:setup")


@pytest.fixture
def hospital_b(db: None) -> Institution:
    return institution_create(name="Hospital B", actor="user:setup")


# --- people --------------------------------------------------------------------------------


@pytest.fixture
def make_api_client(db: None) -> MakeApiClient:
    """``make_api_client(username, role, institution=None)``: a client signed in with a token."""

    def make(username: str, role: Role, institution: Institution | None = None) -> APIClient:
        created = person_make(username, role, institution)
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
def make_client(db: None) -> MakeClient:
    """``make_client(username, role, institution=None)``: a browser signed in as a new user."""

    def make(username: str, role: Role, institution: Institution | None = None) -> Client:
        created = person_make(username, role, institution, with_token=False)
        client = Client()
        client.force_login(created.user)
        return client

    return make


@pytest.fixture
def coordinator(make_client: MakeClient) -> Client:
    return make_client("carol", Role.COORDINATOR)


@pytest.fixture
def observer(make_client: MakeClient) -> Client:
    return make_client("oscar", Role.OBSERVER)


@pytest.fixture
def owner_a(make_client: MakeClient, hospital_a: Institution) -> Client:
    return make_client("alice", Role.DATA_OWNER, hospital_a)


@pytest.fixture
def owner_b(make_client: MakeClient, hospital_b: Institution) -> Client:
    return make_client("bob", Role.DATA_OWNER, hospital_b)


# --- studies and jobs ----------------------------------------------------------------------


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


@pytest.fixture
def make_study(db: None) -> MakeStudy:
    """``make_study(name, institutions)``: a valid study through the service."""
    return study_make


@pytest.fixture
def study_ab(hospital_a: Institution, hospital_b: Institution) -> Study:
    """A study with both hospitals, both decisions pending."""
    return study_make("Study AB", [hospital_a, hospital_b])


@pytest.fixture
def study_a(hospital_a: Institution) -> Study:
    """Only Hospital A takes part."""
    return study_make("Study A only", [hospital_a])


@pytest.fixture
def draft_job(study_ab: Study) -> Job:
    return job_make(study_ab, num_rounds=2)


@pytest.fixture
def running_job(draft_job: Job, isolated_model_storage: Path) -> Job:
    """``draft_job`` approved by every site and started: round 1 open, model 0 written."""
    study_approve_all(draft_job.study)
    return job_run(draft_job)
