"""Secure aggregation and client-level DP over the agent API, as separate processes over
real HTTP: deploy/run_local.py with 3 sites and 3 rounds on the embedded default, the
study's privacy settings given with ``--privacy`` (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import no_process_left, run_federation

from federation.privacy.accounting import client_level_epsilon

pytestmark = [pytest.mark.e2e, pytest.mark.privacy]

ROUNDS = 3
SECURE = {"secure_aggregation": True}
NOISE_MULTIPLIER = 0.5
SECURE_WITH_CLIENT_DP = {
    "secure_aggregation": True,
    "differential_privacy": {"level": "client", "clipping_norm": 1.0, "noise_multiplier": NOISE_MULTIPLIER},
    "epsilon": 50,
}


def run_with_privacy(tmp_path: Path, privacy: dict[str, object]) -> dict:  # type: ignore[type-arg]
    return run_federation(tmp_path, "--privacy", json.dumps(privacy), rounds=ROUNDS)


def check_secure_rounds(figures: dict) -> None:
    assert figures["rounds"] == ROUNDS
    assert figures["privacy"]["secure_aggregation"] is True
    # Every model the job made came out of an unmasked sum, none from single updates.
    assert figures["secure_aggregation_rounds"] == ROUNDS
    assert figures["training_stopped_after"] is None
    assert figures["round_latency_median_ms"] is not None
    # The agents' evaluation of the final model was summed securely too: the server saw only
    # the total counts, which give the accuracy the job's final round reported, and each
    # site's own scalar figures.
    evaluation = figures["cross_site_evaluation"]
    assert evaluation["rows"] == 90
    assert sorted(evaluation["site_rows"].values()) == [30, 30, 30]
    assert evaluation["combined"]["accuracy"] == pytest.approx(
        figures["sites_final_evaluation"]["accuracy"], abs=1e-4
    )


def test_secure_aggregation_on_the_embedded_default(tmp_path: Path) -> None:
    figures = run_with_privacy(tmp_path, SECURE)
    check_secure_rounds(figures)
    assert figures["federated_accuracy"] > 0.9
    assert figures["epsilon_spent"] is None  # no DP: nothing to account
    no_process_left(tmp_path)


def test_secure_aggregation_with_client_level_dp(tmp_path: Path) -> None:
    figures = run_with_privacy(tmp_path, SECURE_WITH_CLIENT_DP)
    check_secure_rounds(figures)
    assert figures["privacy"]["differential_privacy"]["noise_multiplier"] == NOISE_MULTIPLIER
    expected = client_level_epsilon(noise_multiplier=NOISE_MULTIPLIER, rounds=ROUNDS, delta=1e-5)
    assert figures["epsilon_spent"] == pytest.approx(expected, rel=0.01)
    assert figures["epsilon_spent"] <= SECURE_WITH_CLIENT_DP["epsilon"]
    no_process_left(tmp_path)
