"""A whole federation as separate processes over real HTTP: control plane (gunicorn), a
Celery worker and beat, and one silo agent per site. Once on the embedded default and once
on PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import no_process_left, run_federation
from service_support import POSTGRES_URL, REDIS_URL, require_services

pytestmark = pytest.mark.e2e


def check_figures(figures: dict) -> None:
    assert figures["rounds"] == 3
    assert len(figures["local_accuracy"]) == 3
    assert figures["federated_accuracy"] > 0.9
    assert figures["round_latency_median_ms"] is not None


def test_a_federation_on_the_embedded_default(tmp_path: Path) -> None:
    check_figures(run_federation(tmp_path))
    no_process_left(tmp_path)


def test_a_federation_on_postgresql_and_redis(tmp_path: Path) -> None:
    require_services("postgres", "redis")
    check_figures(run_federation(tmp_path, "--database-url", POSTGRES_URL, "--broker-url", REDIS_URL))
    no_process_left(tmp_path)
