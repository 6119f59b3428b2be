"""A whole federation as separate processes over real HTTP: control plane (gunicorn), a
Celery worker and beat, and one silo agent per site. Once on the embedded default and once
on PostgreSQL and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from service_support import POSTGRES_URL, REDIS_URL, require_services

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_federation(tmp_path: Path, *extra: str) -> dict:
    command = [
        sys.executable,
        str(REPO / "deploy" / "run_local.py"),
        "--sites",
        "3",
        "--rounds",
        "3",
        "--data-dir",
        str(tmp_path / "federation"),
        "--timeout",
        "240",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("[###] round   3/3") for line in lines), result.stdout
    return json.loads(lines[-1])


def check_figures(figures: dict) -> None:
    assert figures["rounds"] == 3
    assert len(figures["local_accuracy"]) == 3
    assert figures["federated_accuracy"] > 0.9
    assert figures["round_latency_median_ms"] is not None


def no_process_left(tmp_path: Path) -> None:
    folder = str(tmp_path / "federation")
    leftover = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True, check=False).stdout
    assert leftover.strip() == "", f"processes still running: {leftover}"


def test_a_federation_on_the_embedded_default(tmp_path: Path) -> None:
    check_figures(run_federation(tmp_path))
    no_process_left(tmp_path)


def test_a_federation_on_postgresql_and_redis(tmp_path: Path) -> None:
    require_services("postgres", "redis")
    check_figures(run_federation(tmp_path, "--database-url", POSTGRES_URL, "--broker-url", REDIS_URL))
    no_process_left(tmp_path)
