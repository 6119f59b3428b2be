"""Fixtures of the console's tests: signed-in browsers (Django's test client) for each role,
two hospitals, a study of both, and jobs in several states."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from console_support import approve_all, make_study
from django.test import Client
from pytest_django.fixtures import Settings

from accounts.models import Role
from accounts.services import user_create
from institutions.models import Institution
from institutions.services import institution_create
from studies.models import Study
from training.models import Job
from training.services import job_begin, job_create, job_start

MakeClient = Callable[..., Client]


@pytest.fixture
def isolated_model_storage(tmp_path: Path, settings: Settings) -> Path:
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
def make_client(db: None) -> MakeClient:
    """``make_client(username, role, institution=None)``: a browser signed in as a new user."""

    def make(username: str, role: Role, institution: Institution | None = None) -> Client:
        created = user_create(
            username=username,
            role=role,
            institution=institution,
            password=None,
            with_token=False,
            actor="system",
        )
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


@pytest.fixture
def study_ab(hospital_a: Institution, hospital_b: Institution) -> Study:
    """Both hospitals take part; both decisions are pending."""
    return make_study("Study AB", [hospital_a, hospital_b])


@pytest.fixture
def study_a(hospital_a: Institution) -> Study:
    """Only Hospital A takes part."""
    return make_study("Study A only", [hospital_a])


@pytest.fixture
def draft_job(study_ab: Study) -> Job:
    return job_create(
        study=study_ab,
        num_rounds=3,
        min_updates=2,
        round_deadline_seconds=600,
        max_deadline_extensions=1,
        actor="user:setup",
    )


@pytest.fixture
def running_job(draft_job: Job, isolated_model_storage: Path) -> Job:
    """``draft_job`` approved by both sites and started: round 1 open, model 0 written."""
    approve_all(draft_job.study)
    job_start(job_id=draft_job.pk, actor="user:setup")
    job_begin(job_id=draft_job.pk)  # the worker's part: initial model, round 1
    draft_job.refresh_from_db()
    return draft_job
