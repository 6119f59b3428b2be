"""Differential privacy: clipping and noise (DP-FedAvg), DP-SGD with Opacus in the torch
adapter, and the simulator with DP."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from federation.aggregation.strategies import FedAvg, Krum
from federation.data import load_builtin
from federation.errors import ConfigurationError, InvalidUpdateError
from federation.models import ModelConfig, ModelKind, TorchAdapter, TrainConfig, build_model
from federation.privacy.accounting import (
    PrivacyLedgerState,
    dp_sgd_schedule,
    sample_level_epsilon,
)
from federation.privacy.dp import (
    add_gaussian_noise,
    clip_delta,
    dp_fedavg,
    gaussian_noise_std,
    l2_norm,
    noisy_mean_from_sum,
    secure_generator,
)
from federation.privacy.settings import DifferentialPrivacy, DPLevel
from federation.simulate import main
from federation.simulation import SimulationConfig, run_simulation
from federation.types import Task, Weights

pytestmark = pytest.mark.privacy

DELTA = 1e-5


# ------------------------------------------------------------------------- clipping


def model_pairs(draw: st.DrawFn) -> tuple[Weights, Weights]:
    shapes = draw(st.lists(hnp.array_shapes(max_dims=2, max_side=5), min_size=1, max_size=3))
    values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
    local = {f"t{i}": draw(hnp.arrays(np.float64, shape, elements=values)) for i, shape in enumerate(shapes)}
    global_ = {
        f"t{i}": draw(hnp.arrays(np.float64, shape, elements=values)) for i, shape in enumerate(shapes)
    }
    return local, global_


pairs = st.composite(model_pairs)()
clipping_norms = st.floats(min_value=1e-3, max_value=1e4)


def delta_norm(local: Weights, global_: Weights) -> float:
    return l2_norm({name: local[name] - global_[name] for name in global_})


@given(pair=pairs, clipping_norm=clipping_norms)
def test_clipping_never_increases_the_norm_and_bounds_it(
    pair: tuple[Weights, Weights], clipping_norm: float
) -> None:
    local, global_ = pair
    clipped, norm = clip_delta(local, global_, clipping_norm)
    assert norm == pytest.approx(delta_norm(local, global_))
    after = delta_norm(clipped, global_)
    assert after <= norm * (1 + 1e-9) + 1e-9
    assert after <= clipping_norm * (1 + 1e-9) + 1e-9


@given(pair=pairs, clipping_norm=clipping_norms)
def test_a_delta_under_the_bound_is_left_alone(pair: tuple[Weights, Weights], clipping_norm: float) -> None:
    local, global_ = pair
    if delta_norm(local, global_) > clipping_norm:
        local = {name: global_[name] + (local[name] - global_[name]) * 1e-9 for name in global_}
    if delta_norm(local, global_) <= clipping_norm:
        clipped, _ = clip_delta(local, global_, clipping_norm)
        for name in local:
            np.testing.assert_array_equal(clipped[name], global_[name] + (local[name] - global_[name]))


def test_clipping_scales_the_whole_delta_onto_the_ball() -> None:
    global_ = {"a": np.ones(2, np.float32), "b": np.zeros((1, 1), np.float32)}
    local = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([[4.0]], np.float32)}
    clipped, norm = clip_delta(local, global_, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [1.6, 1.0])
    np.testing.assert_allclose(clipped["b"], [[0.8]])
    assert clipped["a"].dtype == np.float32


def test_clipping_refuses_mismatched_models_and_bad_bounds() -> None:
    with pytest.raises(InvalidUpdateError):
        clip_delta({"a": np.zeros(2)}, {"b": np.zeros(2)}, 1.0)
    with pytest.raises(InvalidUpdateError):
        clip_delta({"a": np.zeros(2)}, {"a": np.zeros(3)}, 1.0)
    with pytest.raises(ConfigurationError):
        clip_delta({"a": np.zeros(2)}, {"a": np.zeros(2)}, 0.0)


# ---------------------------------------------------------------------------- noise


def test_the_noise_std_is_z_times_c_over_the_number_of_sites() -> None:
    assert gaussian_noise_std(1.1, 0.5, 4) == pytest.approx(0.1375)
    with pytest.raises(ConfigurationError):
        gaussian_noise_std(1.0, 1.0, 0)


def test_the_measured_noise_std_is_within_two_percent_of_the_intended_one() -> None:
    zeros = {"w": np.zeros((1000, 1000), np.float32)}
    noisy = add_gaussian_noise(zeros, 0.37, np.random.default_rng(7))
    assert noisy["w"].dtype == np.float32
    assert float(np.std(noisy["w"])) == pytest.approx(0.37, rel=0.02)
    assert abs(float(np.mean(noisy["w"]))) < 0.37 * 0.01


def test_dp_fedavg_adds_noise_of_std_z_c_over_n_to_the_mean() -> None:
    global_ = {"w": np.zeros(10**6, np.float32)}
    updates = [{"w": np.zeros(10**6, np.float32)} for _ in range(4)]
    new, details = dp_fedavg(
        global_, updates, noise_multiplier=1.1, clipping_norm=0.5, rng=np.random.default_rng(1)
    )
    assert details["noise_std"] == pytest.approx(0.1375)
    assert float(np.std(new["w"].astype(np.float64))) == pytest.approx(0.1375, rel=0.02)


def test_dp_fedavg_is_the_unweighted_mean_of_reclipped_deltas_plus_seeded_noise() -> None:
    global_ = {"w": np.zeros(3, np.float32)}
    honest = {"w": np.array([0.3, 0.0, 0.4], np.float32)}  # norm 0.5, under the bound
    unclipped = {"w": np.array([0.0, 30.0, 0.0], np.float32)}  # a site that did not clip
    new, details = dp_fedavg(
        global_, [honest, unclipped], noise_multiplier=1e-6, clipping_norm=1.0, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(new["w"], [0.15, 0.5, 0.2], atol=1e-5)
    assert details["num_reclipped"] == 1
    assert details["num_sites"] == 2
    first, _ = dp_fedavg(
        global_, [honest], noise_multiplier=1.0, clipping_norm=1.0, rng=np.random.default_rng(3)
    )
    again, _ = dp_fedavg(
        global_, [honest], noise_multiplier=1.0, clipping_norm=1.0, rng=np.random.default_rng(3)
    )
    np.testing.assert_array_equal(first["w"], again["w"])


def test_the_noisy_mean_from_a_sum_matches_dp_fedavg() -> None:
    global_ = {"w": np.full(5, 0.5, np.float32)}
    deltas = [np.linspace(-0.1, 0.1, 5), np.linspace(0.2, 0.0, 5), np.full(5, 0.05)]
    updates = [{"w": (global_["w"] + d).astype(np.float32)} for d in deltas]
    new, _ = dp_fedavg(
        global_, updates, noise_multiplier=2.0, clipping_norm=1.0, rng=np.random.default_rng(5)
    )
    delta_sum = {"w": sum((u["w"].astype(np.float64) - global_["w"]) for u in updates)}
    mean = noisy_mean_from_sum(
        delta_sum, 3, noise_multiplier=2.0, clipping_norm=1.0, rng=np.random.default_rng(5)
    )
    np.testing.assert_allclose(new["w"], global_["w"] + mean["w"], atol=1e-6)


def test_secure_generators_are_unpredictable_and_noise_needs_a_generator() -> None:
    assert secure_generator().integers(2**62) != secure_generator().integers(2**62)
    with pytest.raises(ConfigurationError):
        add_gaussian_noise({"w": np.zeros(2)}, 1.0, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        add_gaussian_noise({"w": np.zeros(2)}, -1.0, secure_generator())


# ---------------------------------------------------------------- DP-SGD with Opacus


#: Training features and labels, then test features and labels.
Split = tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]


@pytest.fixture(scope="module")
def breast_cancer() -> Split:
    data = load_builtin("breast_cancer")
    order = np.random.default_rng(0).permutation(len(data))
    x = data.features[order].astype(np.float64)
    x = ((x - x[:400].mean(axis=0)) / x[:400].std(axis=0)).astype(np.float32)
    y = data.labels[order]
    return x[:400], y[:400], x[400:], y[400:]


def dp_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.1,
        "dp_noise_multiplier": 1.0,
        "dp_clipping_norm": 1.0,
        "dp_seed": 11,
    }
    return TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]


MLP = ModelConfig(ModelKind.MLP, Task.BINARY, 30, 2, hidden_sizes=(16,))


def test_dp_sgd_learns_breast_cancer_and_keeps_the_weight_names(breast_cancer: Split) -> None:
    x_train, y_train, x_test, y_test = breast_cancer
    adapter = TorchAdapter(MLP, seed=0)
    names = list(adapter.get_weights())
    result = adapter.fit(x_train, y_train, dp_config())
    assert list(adapter.get_weights()) == names == [name for name, _ in adapter.module.named_parameters()]
    assert not any(name.startswith("_module.") for name in names)
    assert float(np.mean((adapter.predict(x_test) >= 0.5) == y_test)) > 0.85  # chance: 0.63
    schedule = dp_sgd_schedule(num_examples=400, batch_size=32)
    spend = result.privacy_spend
    assert spend is not None
    assert (spend.noise_multiplier, spend.sampling_rate, spend.steps) == (1.0, schedule.sampling_rate, 26)
    assert result.metrics["dp_steps"] == 26
    # Opacus's hooks are gone: plain training afterwards is plain again.
    assert not hasattr(next(adapter.module.parameters()), "grad_sample")
    assert adapter.fit(x_train, y_train, TrainConfig(epochs=1)).privacy_spend is None


def test_seeded_dp_sgd_repeats_exactly_and_another_seed_differs(breast_cancer: Split) -> None:
    x_train, y_train, _, _ = breast_cancer
    runs = []
    for dp_seed in (5, 5, 6):
        adapter = TorchAdapter(MLP, seed=0)
        adapter.fit(x_train, y_train, dp_config(epochs=1, dp_seed=dp_seed))
        runs.append(adapter.get_weights())
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])
    assert any(not np.array_equal(runs[0][name], runs[2][name]) for name in runs[0])


def test_unseeded_dp_sgd_draws_fresh_noise(breast_cancer: Split) -> None:
    x_train, y_train, _, _ = breast_cancer
    weights = []
    for _ in range(2):
        adapter = TorchAdapter(MLP, seed=0)
        adapter.fit(x_train, y_train, dp_config(epochs=1, dp_seed=None))
        weights.append(adapter.get_weights())
    assert any(not np.array_equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_the_ledger_across_restarts_spends_what_opacus_counts(breast_cancer: Split) -> None:
    x_train, y_train, _, _ = breast_cancer
    uninterrupted, stored = PrivacyLedgerState(), json.dumps(PrivacyLedgerState().to_json())
    steps = 0
    for round_number in range(3):
        adapter = TorchAdapter(MLP, seed=0)  # a fresh agent process each round
        spend = adapter.fit(x_train, y_train, dp_config(epochs=1, dp_seed=round_number)).privacy_spend
        assert spend is not None
        steps += spend.steps
        uninterrupted = uninterrupted.spend(spend)
        stored = json.dumps(PrivacyLedgerState.from_json(json.loads(stored)).spend(spend).to_json())
    restarted = PrivacyLedgerState.from_json(json.loads(stored))
    assert restarted.epsilon(DELTA) == uninterrupted.epsilon(DELTA)
    rate = dp_sgd_schedule(num_examples=400, batch_size=32).sampling_rate
    direct = sample_level_epsilon(noise_multiplier=1.0, sampling_rate=rate, steps=steps, delta=DELTA)
    assert restarted.epsilon(DELTA) == pytest.approx(direct, rel=1e-9)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
def test_opacus_reports_the_epsilon_our_accounting_computes(breast_cancer: Split) -> None:
    x_train, y_train, _, _ = breast_cancer
    result = TorchAdapter(MLP, seed=0).fit(x_train, y_train, dp_config())
    assert result.privacy_spend is not None
    # Opacus's own loader: the same sampling rate and number of steps per epoch.
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train)), batch_size=32)
    assert 1 / len(loader) == result.privacy_spend.sampling_rate
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [(1.0, result.privacy_spend.sampling_rate, result.privacy_spend.steps)]
    ours = PrivacyLedgerState().spend(result.privacy_spend).epsilon(DELTA)
    assert ours == pytest.approx(engine.get_epsilon(DELTA), rel=0.01)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dp_clipping_norm": None}, "both"),
        ({"dp_noise_multiplier": 0.0}, "dp_noise_multiplier"),
        ({"dp_clipping_norm": float("inf")}, "dp_clipping_norm"),
        ({"proximal_mu": 0.1}, "FedProx"),
        ({"dp_seed": -1}, "dp_seed"),
        ({"dp_noise_multiplier": None, "dp_clipping_norm": None}, "dp_seed"),
    ],
)
def test_train_config_checks_its_dp_settings(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        dp_config(**overrides)


def test_scikit_learn_models_refuse_dp_sgd(breast_cancer: Split) -> None:
    x_train, y_train, _, _ = breast_cancer
    model = build_model(ModelConfig(ModelKind.SKLEARN_LOGISTIC, Task.BINARY, 30, 2))
    with pytest.raises(ConfigurationError, match="torch model"):
        model.fit(x_train, y_train, dp_config())


# ------------------------------------------------------------------------ simulator


def test_the_simulator_with_client_level_dp_reports_the_epsilon_spent() -> None:
    config = SimulationConfig(
        strategy=FedAvg(),
        num_silos=3,
        rounds=3,
        baselines=False,
        differential_privacy=DifferentialPrivacy(DPLevel.CLIENT, clipping_norm=0.1),
        target_epsilon=8.0,
    )
    report = run_simulation(config)
    assert report.privacy is not None
    assert report.privacy.epsilon <= 8.0
    assert report.privacy.epsilon == pytest.approx(8.0, rel=0.01)
    assert report.privacy.epsilon_per_silo == [report.privacy.epsilon] * 3
    again = run_simulation(config)
    assert again.summary()["per_round"] == report.summary()["per_round"]


def test_the_simulator_with_dp_sgd_reports_each_silos_epsilon() -> None:
    report = run_simulation(
        SimulationConfig(
            strategy=FedAvg(),
            num_silos=2,
            rounds=2,
            baselines=False,
            differential_privacy=DifferentialPrivacy(DPLevel.SAMPLE, clipping_norm=1.0, noise_multiplier=1.1),
        )
    )
    privacy = report.summary()["privacy"]
    assert isinstance(privacy, dict)
    expected = [
        sample_level_epsilon(
            noise_multiplier=1.1,
            sampling_rate=dp_sgd_schedule(num_examples=size, batch_size=32).sampling_rate,
            steps=2 * dp_sgd_schedule(num_examples=size, batch_size=32).steps_per_epoch,
            delta=DELTA,
        )
        for size in report.silo_sizes
    ]
    assert privacy["epsilon_per_silo"] == pytest.approx(expected, rel=1e-5)
    assert privacy["epsilon"] == pytest.approx(max(expected), rel=1e-5)
    assert report.federated["accuracy"] > 0.8


def test_the_command_prints_the_epsilon_and_explains_bad_privacy_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--rounds", "2", "--no-baselines", "--dp-level", "client", "--clipping-norm", "0.1"]
    assert main([*argv, "--noise-multiplier", "3"]) == 0
    output = capsys.readouterr().out
    assert "client-level DP" in output
    assert json.loads(output.strip().splitlines()[-1])["privacy"]["epsilon"] > 0
    assert main(["--rounds", "1", "--epsilon", "3", "--json-only"]) == 2
    assert "--dp-level" in capsys.readouterr().err
    assert main(["--rounds", "1", "--dp-level", "client", "--json-only"]) == 2
    assert "noise multiplier or a target epsilon" in capsys.readouterr().err


def test_client_level_dp_refuses_rules_that_need_single_updates() -> None:
    with pytest.raises(ConfigurationError, match="each update on its own"):
        SimulationConfig(
            strategy=Krum(),
            differential_privacy=DifferentialPrivacy(DPLevel.CLIENT, 1.0, 1.0),
        )
