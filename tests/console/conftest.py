"""Fixtures of the console's tests: the shared test world (:mod:`world_fixtures`) with
signed-in browsers (Django's test client) for each role, two hospitals, a study of both (and
one of Hospital A only), and a job of three rounds, draft or running."""

from __future__ import annotations

import pytest
from world import job_make
from world_fixtures import (
    coordinator,
    hospital_a,
    hospital_b,
    isolated_model_storage,
    make_client,
    observer,
    owner_a,
    owner_b,
    running_job,
    study_a,
    study_ab,
)

from studies.models import Study
from training.models import Job

__all__ = [
    "coordinator",
    "hospital_a",
    "hospital_b",
    "isolated_model_storage",
    "make_client",
    "observer",
    "owner_a",
    "owner_b",
    "running_job",
    "study_a",
    "study_ab",
]


@pytest.fixture
def draft_job(study_ab: Study) -> Job:
    """Three rounds (the console's job pages are checked against that)."""
    return job_make(study_ab, num_rounds=3)
