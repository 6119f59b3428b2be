"""Strategies orchestrate the maths correctly, in memory and over stored files."""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.aggregation import maths, streaming
from federation.aggregation.strategies import (
    STRATEGIES,
    CoordinateMedian,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Krum,
    MultiKrum,
    StrategyName,
    StrategyParameter,
    TrimmedMean,
    _registry,
    build_strategy,
)
from federation.aggregation.streaming import StoredUpdate
from federation.errors import ConfigurationError, InvalidUpdateError, NonFiniteValueError
from federation.rounds import _mean_rules
from federation.types import ClientUpdate, ModelSpec, TensorSpec
from federation.wire import serialize_weights

SPEC = ModelSpec(
    (TensorSpec("conv.weight", (4, 3, 5)), TensorSpec("conv.bias", (4,)), TensorSpec("fc", (7, 3)))
)


def random_updates(count: int, seed: int = 0, scale: float = 1.0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            {t.name: (scale * rng.standard_normal(t.shape)).astype(np.float32) for t in SPEC.tensors},
            num_examples=int(rng.integers(1, 500)),
        )
        for _ in range(count)
    ]


def stored(updates: list[ClientUpdate], folder: Path) -> list[StoredUpdate]:
    result = []
    for index, update in enumerate(updates):
        path = folder / f"u{index}.safetensors"
        path.write_bytes(serialize_weights(update.weights, spec=SPEC))
        result.append(StoredUpdate(path, update.num_examples))
    return result


def stacked(updates: list[ClientUpdate], name: str) -> np.ndarray:
    return np.stack([u.weights[name].reshape(-1) for u in updates])


def assert_close(actual: dict, expected: dict) -> None:
    for name in SPEC.names:
        scale = max(1.0, float(np.max(np.abs(expected[name]))))
        np.testing.assert_allclose(
            actual[name].reshape(-1), np.reshape(expected[name], -1), rtol=1e-6, atol=1e-6 * scale
        )


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_streaming_weighted_mean_equals_the_in_memory_maths(tmp_path: Path, chunk: int, threads: int) -> None:
    updates = random_updates(6)
    counts = [u.num_examples for u in updates]
    result = streaming.weighted_mean(
        stored(updates, tmp_path), counts, SPEC, chunk_elements=chunk, num_threads=threads
    )
    expected = {n: np.average(stacked(updates, n), axis=0, weights=counts) for n in SPEC.names}
    assert_close(result, expected)
    assert all(result[t.name].shape == t.shape and result[t.name].dtype == np.float32 for t in SPEC.tensors)


@pytest.mark.parametrize("chunk", [3, 1 << 16])
def test_streaming_median_and_trimmed_mean_equal_the_in_memory_maths(tmp_path: Path, chunk: int) -> None:
    updates = random_updates(7, seed=1)
    files = stored(updates, tmp_path)
    glob = SPEC.zeros()
    median = streaming.coordinate_wise(files, SPEC, maths.coordinate_median, chunk_elements=chunk)
    assert_close(median, {n: np.median(stacked(updates, n), axis=0) for n in SPEC.names})
    trimmed = TrimmedMean(beta=0.2).aggregate(glob, files).weights
    expected = {n: np.sort(stacked(updates, n), axis=0)[1:-1].mean(axis=0) for n in SPEC.names}
    assert_close(trimmed, expected)


def test_streaming_distances_equal_the_in_memory_maths(tmp_path: Path) -> None:
    updates = random_updates(5, seed=2)
    flat = np.concatenate([stacked(updates, n) for n in SPEC.names], axis=1).astype(np.float64)
    expected = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    result = streaming.pairwise_squared_distances(
        stored(updates, tmp_path), SPEC, chunk_elements=5, num_threads=2
    )
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_fedavg_is_the_example_weighted_mean_not_the_textbook_misprint() -> None:
    glob = {"w": np.zeros(1, np.float32)}
    updates = [
        ClientUpdate({"w": np.array([1.0], np.float32)}, 1),
        ClientUpdate({"w": np.array([4.0], np.float32)}, 3),
    ]
    assert FedAvg().aggregate(glob, updates).weights["w"][0] == pytest.approx(3.25)
    # 1/N * sum(n_i w_i) would give 6.5.


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.floats(0.1, 2.0), st.integers(1, 1000))
def test_fedavg_server_learning_rate_scales_the_averaged_delta(count: int, eta: float, seed: int) -> None:
    updates = random_updates(count, seed=seed)
    glob = random_updates(1, seed=seed + 1)[0].weights
    mean = FedAvg().aggregate(glob, updates).weights
    stepped = FedAvg(server_learning_rate=eta).aggregate(glob, updates).weights
    for name in SPEC.names:
        np.testing.assert_allclose(
            stepped[name], glob[name] + eta * (mean[name] - glob[name]), rtol=1e-5, atol=1e-5
        )


def test_one_silo_returns_its_own_model_under_every_averaging_rule() -> None:
    update = random_updates(1)[0]
    for strategy in (FedAvg(), FedProx(), CoordinateMedian(), TrimmedMean(beta=0.0)):
        result = strategy.aggregate(SPEC.zeros(), [update]).weights
        for name in SPEC.names:
            np.testing.assert_array_equal(result[name], update.weights[name])


def test_weight_cap_limits_a_silo_that_claims_a_huge_num_examples() -> None:
    honest = [ClientUpdate({"w": np.zeros(2, np.float32)}, 100) for _ in range(3)]
    greedy = ClientUpdate({"w": np.ones(2, np.float32)}, 10**9)
    glob = {"w": np.zeros(2, np.float32)}
    uncapped = FedAvg().aggregate(glob, [*honest, greedy])
    capped = FedAvg(max_weight_share=0.4).aggregate(glob, [*honest, greedy])
    assert uncapped.weights["w"][0] > 0.99
    assert capped.weights["w"][0] == pytest.approx(0.4, rel=1e-6)
    assert max(capped.details["weights"]) == pytest.approx(0.4)


def test_server_optimizer_state_goes_out_and_back_in_explicitly() -> None:
    glob = {"w": np.array([1.0, 2.0], np.float32)}
    updates = [ClientUpdate({"w": np.array([1.5, 1.0], np.float32)}, 1)]
    strategy = FedAdam(server_learning_rate=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    first = strategy.aggregate(glob, updates)
    assert set(first.state) == {"m/w", "v/w"}
    # The same call with the state returned by the first round equals the maths applied twice.
    second = FedAdam(server_learning_rate=0.1).aggregate(first.weights, updates, state=first.state)
    step1 = maths.fedadam_step(
        glob["w"], updates[0].weights["w"] - glob["w"], None, None, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3
    )
    step2 = maths.fedadam_step(
        step1.params,
        updates[0].weights["w"] - step1.params,
        step1.m,
        step1.v,
        eta=0.1,
        beta_1=0.9,
        beta_2=0.99,
        tau=1e-3,
    )
    np.testing.assert_allclose(second.weights["w"], step2.params, rtol=1e-6)
    np.testing.assert_allclose(second.state["v/w"], step2.v, rtol=1e-6)
    # Without the state, the second round restarts the optimizer and differs.
    fresh = FedAdam(server_learning_rate=0.1).aggregate(first.weights, updates)
    assert not np.allclose(fresh.weights["w"], second.weights["w"])


def test_fedavgm_accumulates_momentum_across_rounds() -> None:
    glob = {"w": np.zeros(1, np.float32)}
    updates = [ClientUpdate({"w": np.ones(1, np.float32)}, 1)]
    first = FedAvgM(server_learning_rate=1.0, server_momentum=0.5).aggregate(glob, updates)
    second = FedAvgM(server_learning_rate=1.0, server_momentum=0.5).aggregate(
        first.weights, updates, state=first.state
    )
    assert first.weights["w"][0] == pytest.approx(1.0)
    # delta is 0 in round 2 (the model already equals the update); momentum 0.5 carries on.
    assert second.weights["w"][0] == pytest.approx(1.5)


def test_krum_and_multi_krum_leave_out_far_away_byzantine_updates(tmp_path: Path) -> None:
    honest = random_updates(5, seed=3, scale=0.1)
    byzantine = random_updates(2, seed=4, scale=100.0)
    files = stored([*honest, *byzantine], tmp_path)
    krum = Krum(num_byzantine=2).aggregate(SPEC.zeros(), files)
    assert krum.details["selected"][0] < 5
    multi = MultiKrum(num_byzantine=2, num_selected=3).aggregate(SPEC.zeros(), files)
    assert all(i < 5 for i in multi.details["selected"])
    chosen = [honest[i] for i in multi.details["selected"]]
    assert_close(multi.weights, {n: stacked(chosen, n).mean(axis=0) for n in SPEC.names})


def test_a_non_finite_stored_update_is_named_in_the_error(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    updates = random_updates(3)
    files = stored(updates, tmp_path)
    poisoned = dict(updates[1].weights)
    poisoned["fc"] = poisoned["fc"].copy()
    poisoned["fc"][2, 1] = np.nan
    save_file(poisoned, files[1].path)
    with pytest.raises(NonFiniteValueError, match="update 1"):
        FedAvg().aggregate(SPEC.zeros(), files)
    with pytest.raises(NonFiniteValueError, match="update 1"):
        CoordinateMedian().aggregate(SPEC.zeros(), files)


def test_an_update_with_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    updates = random_updates(2)
    bad = ClientUpdate({**updates[0].weights, "fc": np.zeros((3, 7), np.float32)}, 5)
    with pytest.raises(InvalidUpdateError, match="shape"):
        FedAvg().aggregate(SPEC.zeros(), [updates[1], bad])


def test_build_strategy_knows_every_rule_and_explains_mistakes() -> None:
    assert set(STRATEGIES) == set(StrategyName)
    assert build_strategy("trimmed_mean", {"beta": 0.2}) == TrimmedMean(beta=0.2)
    assert build_strategy("fedadam").params()["tau"] == pytest.approx(1e-3)
    with pytest.raises(ConfigurationError, match="unknown strategy"):
        build_strategy("fedsomething")
    with pytest.raises(ConfigurationError, match="no parameters"):
        build_strategy("fedavg", {"beta": 0.1})
    with pytest.raises(ConfigurationError, match="beta"):
        build_strategy("trimmed_mean", {"beta": 0.7})
    with pytest.raises(ConfigurationError, match="no updates"):
        FedAvg().aggregate(SPEC.zeros(), [])


def test_only_robust_rules_need_single_updates() -> None:
    robust = {name for name, strategy_class in STRATEGIES.items() if strategy_class.robust}
    assert robust == {
        StrategyName.MEDIAN,
        StrategyName.TRIMMED_MEAN,
        StrategyName.KRUM,
        StrategyName.MULTI_KRUM,
    }
    # The rules a secure sum or client-level DP allows are exactly the others.
    offered = set(_mean_rules().replace(" or ", ", ").split(", "))
    assert offered == {name.value for name in StrategyName} - {name.value for name in robust}


def test_each_strategy_carries_its_own_label_and_parameters() -> None:
    labels = {name: strategy_class.label for name, strategy_class in STRATEGIES.items()}
    assert len(set(labels.values())) == len(labels)
    assert labels[StrategyName.FEDAVG] == "FedAvg: weighted mean"
    assert labels[StrategyName.KRUM] == "Krum"
    for name, strategy_class in STRATEGIES.items():
        assert "label" in vars(strategy_class), f"{name} inherits its label"
        defaults = {parameter.name: parameter.default for parameter in strategy_class.parameters()}
        assert defaults == strategy_class().params()
    krum = {parameter.name: parameter for parameter in Krum.parameters()}
    assert krum["num_selected"] == StrategyParameter("num_selected", 1, is_integer=True, optional=False)
    fedavg = {parameter.name: parameter for parameter in FedAvg.parameters()}
    assert fedavg["max_weight_share"] == StrategyParameter(
        "max_weight_share", None, is_integer=False, optional=True
    )


def test_a_strategy_without_its_own_label_is_refused_when_registered() -> None:
    @dataclass(frozen=True)
    class Unlabelled(FedAvg):
        name: ClassVar[StrategyName] = StrategyName.FEDAVG

    with pytest.raises(TypeError, match="Unlabelled must set its own name and label"):
        _registry(Unlabelled)
    with pytest.raises(TypeError, match="strategy names without a class"):
        _registry(FedAvg)
    with pytest.raises(TypeError, match="repeats"):
        _registry(*STRATEGIES.values(), FedAvg)
