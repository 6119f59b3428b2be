"""Fixtures shared by the control plane's and the console's tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from institutions.models import Institution
from institutions.services import institution_create


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
