"""The simulator with secure aggregation: the same model as plaintext FedAvg, dropouts, clear refusals.

Tolerance. Secure aggregation rounds each silo's weighted change to ``2^-24`` and the new
global model to float32 (the logistic model's dtype), so after a few rounds the weights
differ from plaintext FedAvg's by a few float32 ulps (about 1e-7 here); 1e-5 leaves room.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from federation.aggregation.strategies import CoordinateMedian, FedAvg, Krum, Strategy
from federation.errors import ConfigurationError
from federation.privacy.settings import DifferentialPrivacy, DPLevel
from federation.simulate import main
from federation.simulation import SimulationConfig, run_simulation

pytestmark = pytest.mark.privacy

ROUNDS = 3


def plain_config(num_silos: int) -> SimulationConfig:
    return SimulationConfig(
        strategy=FedAvg(), dataset="breast_cancer", num_silos=num_silos, rounds=ROUNDS, baselines=False
    )


@pytest.mark.parametrize("num_silos", [3, 5])
def test_secure_aggregation_gives_the_plaintext_fedavg_model(num_silos: int) -> None:
    plain = run_simulation(plain_config(num_silos))
    secure = run_simulation(replace(plain_config(num_silos), secure_aggregation=True))
    assert secure.federated["accuracy"] == plain.federated["accuracy"]
    assert list(secure.weights) == list(plain.weights)
    for name, array in plain.weights.items():
        np.testing.assert_allclose(secure.weights[name], array, rtol=0, atol=1e-5, err_msg=name)
    assert secure.summary()["secure_aggregation"] == {
        "sites": num_silos,
        "threshold": num_silos // 2 + 1,
        "dropouts": 0,
    }
    assert plain.summary()["secure_aggregation"] is None


def test_a_silo_dropping_every_round_still_completes_and_repeats_exactly() -> None:
    config = replace(plain_config(5), secure_aggregation=True, secure_dropouts=1)
    first, second = run_simulation(config), run_simulation(config)
    assert len(first.rounds) == ROUNDS
    assert first.federated["accuracy"] > 0.9
    assert first.summary()["secure_aggregation"] == {"sites": 5, "threshold": 3, "dropouts": 1}
    assert first.summary()["per_round"] == second.summary()["per_round"]
    for name, array in first.weights.items():
        np.testing.assert_array_equal(second.weights[name], array)


def test_client_level_dp_is_applied_once_inside_the_secure_round() -> None:
    """Same clipping, same noise stream: the secure run matches plaintext DP-FedAvg and spends
    the same epsilon (noise added twice would change both the model and the accuracy)."""
    dp_config = replace(
        plain_config(3),
        differential_privacy=DifferentialPrivacy(DPLevel.CLIENT, clipping_norm=0.1),
        target_epsilon=3.0,
    )
    plain = run_simulation(dp_config)
    secure = run_simulation(replace(dp_config, secure_aggregation=True))
    assert secure.privacy is not None
    assert plain.privacy is not None
    assert secure.privacy.epsilon == pytest.approx(plain.privacy.epsilon)
    for name, array in plain.weights.items():
        np.testing.assert_allclose(secure.weights[name], array, rtol=0, atol=1e-5, err_msg=name)


def test_sample_level_dp_composes_with_secure_aggregation() -> None:
    """DP-SGD happens in each silo's training; the secure round only sums what the silos send."""
    config = replace(
        plain_config(3),
        rounds=1,
        differential_privacy=DifferentialPrivacy(DPLevel.SAMPLE, clipping_norm=1.0, noise_multiplier=1.0),
    )
    plain = run_simulation(config)
    secure = run_simulation(replace(config, secure_aggregation=True))
    assert secure.privacy is not None
    assert secure.privacy.level is DPLevel.SAMPLE
    assert secure.summary()["privacy"] == plain.summary()["privacy"]
    for name, array in plain.weights.items():
        np.testing.assert_allclose(secure.weights[name], array, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    ("strategy", "changes", "message"),
    [
        (CoordinateMedian(), {}, "median needs every site's update on its own"),
        (Krum(num_byzantine=1), {"num_silos": 5}, "krum needs every site's update on its own"),
        (FedAvg(max_weight_share=0.5), {}, "max_weight_share"),
        (FedAvg(), {"num_silos": 2}, "at least 3 sites"),
        (FedAvg(), {"secure_aggregation_threshold": 1}, "between 2"),
        (FedAvg(), {"secure_dropouts": 2}, "at most 1 may drop out"),
        (FedAvg(), {"secure_aggregation": False, "secure_dropouts": 1}, "need secure aggregation"),
    ],
)
def test_what_secure_aggregation_cannot_do_is_refused_clearly(
    strategy: Strategy, changes: dict[str, object], message: str
) -> None:
    settings: dict[str, object] = {"secure_aggregation": True, **changes}
    with pytest.raises(ConfigurationError, match=message):
        replace(plain_config(3), strategy=strategy, **settings)  # type: ignore[arg-type]


def test_the_command_runs_secure_aggregation_with_a_dropout(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--silos",
        "4",
        "--rounds",
        "2",
        "--no-baselines",
        "--secure-aggregation",
        "--secure-dropouts",
        "1",
    ]
    assert main(argv) == 0
    output = capsys.readouterr().out
    header = " ".join(output.split())  # rich wraps long lines at the terminal's width
    assert "secure aggregation (threshold 3 of 4, 1 dropping per round)" in header
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["secure_aggregation"] == {"sites": 4, "threshold": 3, "dropouts": 1}
    assert summary["rounds"] == 2


def test_the_command_refuses_secure_aggregation_with_a_robust_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--strategy", "median", "--secure-aggregation", "--rounds", "1", "--json-only"]) == 2
    assert "secure aggregation shows the server only their sum" in capsys.readouterr().err
