"""Secure aggregation and client-level DP over the agent API, as separate processes over
real HTTP: deploy/run_local.py with 3 sites and 3 rounds on the embedded default, the
study's privacy settings given with ``--privacy`` (docs/privacy.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.privacy.accounting import client_level_epsilon

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.privacy]

ROUNDS = 3
SECURE = {"secure_aggregation": True}
NOISE_MULTIPLIER = 0.5
SECURE_WITH_CLIENT_DP = {
    "secure_aggregation": True,
    "differential_privacy": {"level": "client", "clipping_norm": 1.0, "noise_multiplier": NOISE_MULTIPLIER},
    "epsilon": 50,
}


def run_federation(tmp_path: Path, privacy: dict[str, object]) -> dict:
    command = [
        sys.executable,
        str(REPO / "deploy" / "run_local.py"),
        "--sites",
        "3",
        "--rounds",
        str(ROUNDS),
        "--data-dir",
        str(tmp_path / "federation"),
        "--timeout",
        "240",
        "--privacy",
        json.dumps(privacy),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, check=False)
    print(f"run_local --privacy '{json.dumps(privacy)}': {time.monotonic() - started:.1f} s wall")
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("[###] round   3/3") for line in lines), result.stdout
    figures: dict = json.loads(lines[-1])
    print(lines[-1])
    return figures


def check_secure_rounds(figures: dict) -> None:
    assert figures["rounds"] == ROUNDS
    assert figures["privacy"]["secure_aggregation"] is True
    # Every model the job made came out of an unmasked sum, none from single updates.
    assert figures["secure_aggregation_rounds"] == ROUNDS
    assert figures["training_stopped_after"] is None
    assert figures["round_latency_median_ms"] is not None


def no_process_left(tmp_path: Path) -> None:
    folder = str(tmp_path / "federation")
    leftover = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True, check=False).stdout
    assert leftover.strip() == "", f"processes still running: {leftover}"


def test_secure_aggregation_on_the_embedded_default(tmp_path: Path) -> None:
    figures = run_federation(tmp_path, SECURE)
    check_secure_rounds(figures)
    assert figures["federated_accuracy"] > 0.9
    assert figures["epsilon_spent"] is None  # no DP: nothing to account
    no_process_left(tmp_path)


def test_secure_aggregation_with_client_level_dp(tmp_path: Path) -> None:
    figures = run_federation(tmp_path, SECURE_WITH_CLIENT_DP)
    check_secure_rounds(figures)
    assert figures["privacy"]["differential_privacy"]["noise_multiplier"] == NOISE_MULTIPLIER
    expected = client_level_epsilon(noise_multiplier=NOISE_MULTIPLIER, rounds=ROUNDS, delta=1e-5)
    assert figures["epsilon_spent"] == pytest.approx(expected, rel=0.01)
    assert figures["epsilon_spent"] <= SECURE_WITH_CLIENT_DP["epsilon"]
    no_process_left(tmp_path)
