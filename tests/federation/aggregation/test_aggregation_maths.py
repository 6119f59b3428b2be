"""Tests of the pure aggregation maths: hand-computed cases and hypothesis properties."""

import math
import random
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.aggregation.maths import (
    ACCUMULATE_CHUNK,
    AdaptiveStep,
    accumulate_weighted,
    coordinate_median,
    fedadagrad_step,
    fedadam_step,
    fedavg_step,
    fedavgm_step,
    fedyogi_step,
    krum_scores,
    krum_select,
    normalized_weights,
    pairwise_squared_distances,
    trimmed_mean,
    weighted_mean,
)
from federation.errors import ConfigurationError, InvalidUpdateError

AdaptiveStepFunction = Callable[..., AdaptiveStep]

FAST = settings(max_examples=60, deadline=None)

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
counts_strategy = st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=12)


@st.composite
def updates_and_counts(draw: st.DrawFn) -> tuple[list[np.ndarray], list[int]]:
    """A list of same-shaped float64 updates and one positive example count per update."""
    size = draw(st.integers(min_value=1, max_value=8))
    counts = draw(st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=8))
    updates = [draw(hnp.arrays(np.float64, size, elements=finite)) for _ in counts]
    return updates, counts


stacked_strategy = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
    elements=finite,
)


# ------------------------------------------------------------------- normalized weights


def test_normalized_weights_are_count_shares() -> None:
    np.testing.assert_array_equal(normalized_weights([10, 30, 60]), [0.1, 0.3, 0.6])


@given(counts=counts_strategy, factor=st.integers(min_value=2, max_value=1000))
@FAST
def test_scaling_all_counts_changes_nothing(counts: list[int], factor: int) -> None:
    np.testing.assert_allclose(
        normalized_weights([c * factor for c in counts]), normalized_weights(counts), rtol=1e-12
    )


@pytest.mark.parametrize("counts", [[], [0, 5], [3, -1], [float("nan")]])
def test_normalized_weights_rejects_bad_counts(counts: list[int]) -> None:
    with pytest.raises(ConfigurationError):
        normalized_weights(counts)


def test_weight_cap_hand_computed_needs_two_rounds_of_water_filling() -> None:
    # 0.5 is capped to 0.35 first; then 30's share (0.65 * 30/50 = 0.39) exceeds the cap too.
    shares = normalized_weights([50, 30, 10, 10], max_share=0.35)
    np.testing.assert_allclose(shares, [0.35, 0.35, 0.15, 0.15], rtol=1e-12)


@given(counts=counts_strategy, slack=st.floats(min_value=0.0, max_value=1.0))
@FAST
def test_weight_cap_properties(counts: list[int], slack: float) -> None:
    n = len(counts)
    cap = 1.0 / n + slack * (1.0 - 1.0 / n)
    shares = normalized_weights(counts, max_share=cap)
    plain = normalized_weights(counts)
    assert np.all(shares <= cap + 1e-12)
    assert math.isclose(float(shares.sum()), 1.0, rel_tol=0, abs_tol=1e-12)
    order = np.asarray(counts)
    # More examples never means a smaller share.
    for i in range(n):
        for j in range(n):
            if order[i] < order[j]:
                assert shares[i] <= shares[j] + 1e-15
    # Silos under the cap keep shares proportional to their counts, and gained weight.
    uncapped = shares < cap - 1e-12
    if uncapped.sum() >= 2:
        ratios = shares[uncapped] / order[uncapped]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert np.all(shares[uncapped] >= plain[uncapped] - 1e-15)
    if plain.max() <= cap:
        np.testing.assert_allclose(shares, plain, rtol=1e-12)


@pytest.mark.parametrize(("counts", "cap"), [([1, 1, 1], 0.3), ([5, 5, 5, 5], 0.2), ([1, 2], 0.49)])
def test_infeasible_weight_cap_raises(counts: list[int], cap: float) -> None:
    with pytest.raises(ConfigurationError, match="infeasible"):
        normalized_weights(counts, max_share=cap)


@pytest.mark.parametrize("cap", [0.0, -0.1, 1.5, float("nan")])
def test_out_of_range_weight_cap_raises(cap: float) -> None:
    with pytest.raises(ConfigurationError):
        normalized_weights([1, 2, 3], max_share=cap)


def test_weight_cap_at_exactly_one_over_n_gives_equal_shares() -> None:
    np.testing.assert_allclose(normalized_weights([1, 10, 100], max_share=1 / 3), [1 / 3] * 3)


# ------------------------------------------------------------------------ weighted mean


def test_weighted_mean_is_not_one_over_n_times_weighted_sum() -> None:
    """Regression: FedAvg divides by sum(n_i), not by the number of silos."""
    updates = [np.array([1.0, 0.0]), np.array([3.0, 4.0])]
    counts = [1, 3]
    buggy = sum(n * u for n, u in zip(counts, updates, strict=True)) / len(updates)
    result = weighted_mean(updates, counts)
    np.testing.assert_allclose(result, [2.5, 3.0], rtol=1e-15)
    assert not np.allclose(result, buggy)


@given(data=updates_and_counts())
@FAST
def test_weighted_mean_matches_np_average(data: tuple[list[np.ndarray], list[int]]) -> None:
    updates, counts = data
    expected = np.average(np.stack(updates), axis=0, weights=counts)
    np.testing.assert_allclose(weighted_mean(updates, counts), expected, rtol=1e-10, atol=1e-9)


@given(data=updates_and_counts(), factor=st.integers(min_value=2, max_value=10_000))
@FAST
def test_weighted_mean_ignores_the_scale_of_the_counts(
    data: tuple[list[np.ndarray], list[int]], factor: int
) -> None:
    updates, counts = data
    np.testing.assert_allclose(
        weighted_mean(updates, [c * factor for c in counts]),
        weighted_mean(updates, counts),
        rtol=1e-10,
        atol=1e-9,
    )


@given(data=updates_and_counts(), shuffler=st.randoms(use_true_random=False))
@FAST
def test_permuting_silos_changes_nothing(
    data: tuple[list[np.ndarray], list[int]], shuffler: random.Random
) -> None:
    updates, counts = data
    order = list(range(len(updates)))
    shuffler.shuffle(order)
    permuted = weighted_mean([updates[i] for i in order], [counts[i] for i in order])
    np.testing.assert_allclose(permuted, weighted_mean(updates, counts), rtol=1e-10, atol=1e-9)


@given(
    update=hnp.arrays(np.float32, st.integers(1, 20), elements=finite.map(np.float32)),
    count=st.integers(1, 10**9),
)
@FAST
def test_one_silo_gets_back_its_own_model(update: np.ndarray, count: int) -> None:
    np.testing.assert_array_equal(weighted_mean([update], [count]), update.astype(np.float64))


def test_weighted_mean_rejects_bad_weights() -> None:
    updates = [np.zeros(2), np.ones(2)]
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [1.0])
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [0.0, 0.0])
    with pytest.raises(ConfigurationError):
        weighted_mean(updates, [-1.0, 2.0])
    with pytest.raises(ConfigurationError):
        weighted_mean([], [])


# ------------------------------------------------------------------ accumulate_weighted


def test_accumulate_weighted_crosses_block_boundaries() -> None:
    size = 2 * ACCUMULATE_CHUNK + 7
    rng = np.random.default_rng(0)
    update = rng.standard_normal(size).astype(np.float32)
    accumulator = rng.standard_normal(size)
    expected = accumulator + 0.3 * update.astype(np.float64)
    target = accumulator  # the same object must be updated
    accumulate_weighted(accumulator, update, 0.3)
    assert accumulator is target
    np.testing.assert_allclose(accumulator, expected, rtol=1e-15, atol=1e-15)


def test_accumulate_weighted_with_a_small_caller_scratch() -> None:
    accumulator = np.arange(10, dtype=np.float32)
    update = np.full(10, 2.0, dtype=np.float32)
    accumulate_weighted(accumulator, update, 0.5, scratch=np.empty(3, dtype=np.float32))
    np.testing.assert_array_equal(accumulator, np.arange(10, dtype=np.float32) + 1.0)
    np.testing.assert_array_equal(update, 2.0)  # the update is not touched


def test_accumulate_weighted_into_non_contiguous_views() -> None:
    base = np.zeros((4, 6))
    accumulate_weighted(base[:, ::2], np.ones((4, 3)), 2.0)  # 2-D strided view
    accumulate_weighted(base[0, 1::2], np.ones(3), 5.0)  # 1-D strided view
    expected = np.zeros((4, 6))
    expected[:, ::2] = 2.0
    expected[0, 1::2] = 5.0
    np.testing.assert_array_equal(base, expected)


def test_accumulate_weighted_rejects_mismatches() -> None:
    with pytest.raises(InvalidUpdateError):
        accumulate_weighted(np.zeros(3), np.zeros(4), 1.0)
    with pytest.raises(InvalidUpdateError):
        accumulate_weighted(np.zeros(3, dtype=np.int64), np.zeros(3), 1.0)
    with pytest.raises(ConfigurationError):
        accumulate_weighted(np.zeros(3), np.zeros(3), float("inf"))
    with pytest.raises(ConfigurationError):
        accumulate_weighted(np.zeros(3), np.zeros(3), 1.0, scratch=np.empty(3, dtype=np.float32))


# ---------------------------------------------------------------- server optimizer steps

PARAMS = [1.0, 2.0]
DELTA_1 = [0.5, -1.0]
DELTA_2 = [-0.5, 0.05]


def _expected_adaptive_params(previous: list[float], m: list[float], v: list[float]) -> list[float]:
    """``x + eta * m / (sqrt(v) + tau)`` with eta = 0.1, tau = 0.01, in plain Python floats."""
    return [x + 0.1 * mi / (math.sqrt(vi) + 0.01) for x, mi, vi in zip(previous, m, v, strict=True)]


def test_fedavg_step_by_hand() -> None:
    result = fedavg_step(np.array(PARAMS), np.array(DELTA_1), server_learning_rate=0.5)
    np.testing.assert_allclose(result, [1.25, 1.5], rtol=1e-15)


@given(
    data=hnp.arrays(np.float64, st.tuples(st.just(2), st.integers(1, 10)), elements=finite),
)
@FAST
def test_fedavg_step_with_unit_rate_returns_the_aggregate(data: np.ndarray) -> None:
    global_weights, aggregate = data
    result = fedavg_step(global_weights, aggregate - global_weights, server_learning_rate=1.0)
    np.testing.assert_allclose(result, aggregate, rtol=0, atol=1e-9)


def test_fedavgm_two_steps_by_hand() -> None:
    params = np.array(PARAMS)
    first = fedavgm_step(params, np.array(DELTA_1), None, server_learning_rate=0.5, server_momentum=0.9)
    # v = 0.9 * 0 + delta = [0.5, -1.0]; x = x + 0.5 * v
    np.testing.assert_allclose(first.momentum, [0.5, -1.0], rtol=1e-15)
    np.testing.assert_allclose(first.params, [1.25, 1.5], rtol=1e-15)
    momentum_before = first.momentum.copy()
    second = fedavgm_step(
        first.params, np.array(DELTA_2), first.momentum, server_learning_rate=0.5, server_momentum=0.9
    )
    # v = 0.9 * [0.5, -1.0] + [-0.5, 0.05] = [-0.05, -0.85]; x = [1.25 - 0.025, 1.5 - 0.425]
    np.testing.assert_allclose(second.momentum, [-0.05, -0.85], rtol=1e-12)
    np.testing.assert_allclose(second.params, [1.225, 1.075], rtol=1e-12)
    np.testing.assert_array_equal(first.momentum, momentum_before)  # inputs not mutated
    np.testing.assert_array_equal(params, PARAMS)


def test_fedavgm_without_momentum_is_fedavg() -> None:
    params, delta = np.array([3.0, -1.0, 0.5]), np.array([0.25, 2.0, -4.0])
    step = fedavgm_step(params, delta, np.ones(3), server_learning_rate=0.7, server_momentum=0.0)
    np.testing.assert_allclose(step.params, fedavg_step(params, delta, server_learning_rate=0.7))


def test_fedadagrad_two_steps_by_hand() -> None:
    first = fedadagrad_step(np.array(PARAMS), np.array(DELTA_1), None, None, eta=0.1, beta_1=0.9, tau=0.01)
    # m = 0.1 * delta; v = tau**2 + delta**2
    m1, v1 = [0.05, -0.1], [0.0001 + 0.25, 0.0001 + 1.0]
    x1 = _expected_adaptive_params(PARAMS, m1, v1)
    np.testing.assert_allclose(first.m, m1, rtol=1e-12)
    np.testing.assert_allclose(first.v, v1, rtol=1e-12)
    np.testing.assert_allclose(first.params, x1, rtol=1e-12)
    second = fedadagrad_step(first.params, np.array(DELTA_2), first.m, first.v, eta=0.1, beta_1=0.9, tau=0.01)
    m2, v2 = [0.045 - 0.05, -0.09 + 0.005], [0.2501 + 0.25, 1.0001 + 0.0025]
    np.testing.assert_allclose(second.m, m2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(second.v, v2, rtol=1e-12)
    np.testing.assert_allclose(second.params, _expected_adaptive_params(x1, m2, v2), rtol=1e-12)


def test_fedadam_two_steps_by_hand() -> None:
    hyper = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.01}
    first = fedadam_step(np.array(PARAMS), np.array(DELTA_1), None, None, **hyper)
    # v = 0.99 * tau**2 + 0.01 * delta**2
    m1, v1 = [0.05, -0.1], [0.000099 + 0.0025, 0.000099 + 0.01]
    x1 = _expected_adaptive_params(PARAMS, m1, v1)
    np.testing.assert_allclose(first.m, m1, rtol=1e-12)
    np.testing.assert_allclose(first.v, v1, rtol=1e-12)
    np.testing.assert_allclose(first.params, x1, rtol=1e-12)
    second = fedadam_step(first.params, np.array(DELTA_2), first.m, first.v, **hyper)
    m2 = [-0.005, -0.085]
    v2 = [0.99 * 0.002599 + 0.01 * 0.25, 0.99 * 0.010099 + 0.01 * 0.0025]  # [0.00507301, 0.01002301]
    np.testing.assert_allclose(second.m, m2, rtol=1e-12)
    np.testing.assert_allclose(second.v, [0.00507301, 0.01002301], rtol=1e-12)
    np.testing.assert_allclose(second.v, v2, rtol=1e-12)
    np.testing.assert_allclose(second.params, _expected_adaptive_params(x1, m2, v2), rtol=1e-12)


def test_fedyogi_two_steps_by_hand() -> None:
    hyper = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.01}
    first = fedyogi_step(np.array(PARAMS), np.array(DELTA_1), None, None, **hyper)
    # v0 = 1e-4 < delta**2 everywhere, so v grows: v = v0 + 0.01 * delta**2
    m1, v1 = [0.05, -0.1], [0.0026, 0.0101]
    x1 = _expected_adaptive_params(PARAMS, m1, v1)
    np.testing.assert_allclose(first.v, v1, rtol=1e-12)
    np.testing.assert_allclose(first.params, x1, rtol=1e-12)
    second = fedyogi_step(first.params, np.array(DELTA_2), first.m, first.v, **hyper)
    # Coordinate 0: v < delta**2 = 0.25, v grows by 0.0025. Coordinate 1: v > delta**2 = 0.0025,
    # so v shrinks by 0.01 * 0.0025 (unlike Adam, which would move v towards 0.0025 by 1%).
    m2, v2 = [-0.005, -0.085], [0.0026 + 0.0025, 0.0101 - 0.000025]
    np.testing.assert_allclose(second.m, m2, rtol=1e-12)
    np.testing.assert_allclose(second.v, v2, rtol=1e-12)
    np.testing.assert_allclose(second.params, _expected_adaptive_params(x1, m2, v2), rtol=1e-12)


@pytest.mark.parametrize("step", [fedadagrad_step, fedadam_step, fedyogi_step])
def test_adaptive_steps_keep_float32_and_do_not_mutate(step: AdaptiveStepFunction) -> None:
    params = np.array(PARAMS, dtype=np.float32)
    delta = np.array(DELTA_1, dtype=np.float32)
    m, v = np.full(2, 0.5, dtype=np.float32), np.full(2, 0.25, dtype=np.float32)
    kwargs = {"eta": 0.1, "beta_1": 0.9, "tau": 0.01}
    if step is not fedadagrad_step:
        kwargs["beta_2"] = 0.99
    result = step(params, delta, m, v, **kwargs)
    assert result.params.dtype == result.m.dtype == result.v.dtype == np.float32
    np.testing.assert_array_equal(params, np.array(PARAMS, dtype=np.float32))
    np.testing.assert_array_equal(delta, np.array(DELTA_1, dtype=np.float32))
    np.testing.assert_array_equal(m, 0.5)
    np.testing.assert_array_equal(v, 0.25)
    as64 = step(params.astype(np.float64), delta.astype(np.float64), m, v, **kwargs)
    assert as64.params.dtype == np.float64
    np.testing.assert_allclose(result.params, as64.params, rtol=1e-6)


def test_momentum_step_keeps_float32() -> None:
    step = fedavgm_step(
        np.ones(3, dtype=np.float32),
        np.ones(3, dtype=np.float32),
        None,
        server_learning_rate=np.float64(0.5),  # a numpy scalar must not promote to float64
        server_momentum=0.9,
    )
    assert step.params.dtype == step.momentum.dtype == np.float32


BAD_HYPER = [
    ("eta", 0.0),
    ("eta", -0.1),
    ("eta", float("nan")),
    ("eta", float("inf")),
    ("beta_1", 1.0),
    ("beta_1", -0.1),
    ("beta_2", 1.0),
    ("beta_2", float("nan")),
    ("tau", 0.0),
    ("tau", -1e-3),
]


@pytest.mark.parametrize(("name", "value"), BAD_HYPER)
@pytest.mark.parametrize("step", [fedadagrad_step, fedadam_step, fedyogi_step])
def test_adaptive_steps_reject_bad_hyper_parameters(
    step: AdaptiveStepFunction, name: str, value: float
) -> None:
    kwargs = {"eta": 0.1, "beta_1": 0.9, "tau": 1e-3}
    if step is not fedadagrad_step:
        kwargs["beta_2"] = 0.99
    elif name == "beta_2":
        return
    kwargs[name] = value
    with pytest.raises(ConfigurationError, match=name):
        step(np.zeros(2), np.zeros(2), None, None, **kwargs)


@pytest.mark.parametrize(
    ("eta", "beta"), [(0.0, 0.9), (-1.0, 0.9), (float("nan"), 0.9), (1.0, 1.0), (1.0, -0.5)]
)
def test_momentum_steps_reject_bad_hyper_parameters(eta: float, beta: float) -> None:
    with pytest.raises(ConfigurationError):
        fedavgm_step(np.zeros(2), np.zeros(2), None, server_learning_rate=eta, server_momentum=beta)
    if beta == 0.9:
        with pytest.raises(ConfigurationError):
            fedavg_step(np.zeros(2), np.zeros(2), server_learning_rate=eta)


def test_server_steps_reject_mismatched_arrays() -> None:
    with pytest.raises(InvalidUpdateError):
        fedavg_step(np.zeros(2), np.zeros(3), server_learning_rate=1.0)
    with pytest.raises(InvalidUpdateError):
        fedavgm_step(np.zeros(2), np.zeros(2), np.zeros(3), server_learning_rate=1.0, server_momentum=0.5)
    with pytest.raises(InvalidUpdateError):
        fedadam_step(np.zeros(2), np.zeros(2), None, np.zeros(1), eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    with pytest.raises(InvalidUpdateError):
        fedavg_step(np.zeros(2, dtype=np.int64), np.zeros(2), server_learning_rate=1.0)


# --------------------------------------------------------------- median and trimmed mean


@given(stacked=stacked_strategy)
@FAST
def test_trimmed_mean_with_beta_zero_is_the_mean(stacked: np.ndarray) -> None:
    np.testing.assert_allclose(trimmed_mean(stacked, beta=0.0), stacked.mean(axis=0), rtol=1e-12, atol=1e-12)


@given(stacked=stacked_strategy, beta=st.floats(min_value=0.0, max_value=0.49))
@FAST
def test_trimmed_mean_matches_a_sort_based_reference_and_stays_in_range(
    stacked: np.ndarray, beta: float
) -> None:
    n = stacked.shape[0]
    trim = math.floor(beta * n + 1e-9)
    reference = np.sort(stacked, axis=0)[trim : n - trim].mean(axis=0)
    result = trimmed_mean(stacked, beta=beta)
    np.testing.assert_allclose(result, reference, rtol=1e-12, atol=1e-9)
    tolerance = 1e-12 * (1.0 + np.abs(stacked).max())
    assert np.all(result >= stacked.min(axis=0) - tolerance)
    assert np.all(result <= stacked.max(axis=0) + tolerance)


def test_trimmed_mean_by_hand_drops_both_tails() -> None:
    stacked = np.array([[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [-90.0, 3.0], [100.0, 70.0]])
    # beta = 1/3 of 6 -> drop 2 from each end: column 0 keeps [2, 3], column 1 keeps [1, 2]
    np.testing.assert_allclose(trimmed_mean(stacked, beta=1 / 3), [2.5, 1.5])
    # floor(0.29 * 100) is 29 even though 0.29 * 100 == 28.999... in binary floating point
    column = np.arange(100, dtype=np.float64).reshape(100, 1)
    np.testing.assert_allclose(trimmed_mean(column, beta=0.29), [49.5])


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.01, float("nan")])
def test_trimmed_mean_rejects_bad_beta(beta: float) -> None:
    with pytest.raises(ConfigurationError):
        trimmed_mean(np.zeros((5, 2)), beta=beta)


def test_trimmed_mean_rejects_a_beta_that_leaves_nothing() -> None:
    # 0.4999999999999 * 2 rounds (with the tolerance) to trimming one of each end of two.
    with pytest.raises(ConfigurationError, match="at least one"):
        trimmed_mean(np.zeros((2, 1)), beta=0.4999999999999)


@given(
    update=hnp.arrays(np.float64, st.integers(1, 10), elements=finite),
    copies=st.integers(min_value=1, max_value=8),
)
@FAST
def test_median_of_identical_updates_is_that_update(update: np.ndarray, copies: int) -> None:
    np.testing.assert_array_equal(coordinate_median(np.stack([update] * copies)), update)


@given(stacked=stacked_strategy, shuffler=st.randoms(use_true_random=False))
@FAST
def test_median_is_invariant_to_permutations(stacked: np.ndarray, shuffler: random.Random) -> None:
    order = list(range(stacked.shape[0]))
    shuffler.shuffle(order)
    np.testing.assert_array_equal(coordinate_median(stacked[order]), coordinate_median(stacked))
    np.testing.assert_array_equal(coordinate_median(stacked), np.median(stacked, axis=0))


@given(
    honest=hnp.arrays(np.float64, st.tuples(st.just(4), st.integers(1, 6)), elements=finite),
    outlier=st.sampled_from([-1e12, 1e12, 1e300]),
    position=st.integers(min_value=0, max_value=4),
)
@FAST
def test_one_outlier_among_five_cannot_drag_the_median_out_of_the_honest_range(
    honest: np.ndarray, outlier: float, position: int
) -> None:
    stacked = np.insert(honest, position, np.full(honest.shape[1], outlier), axis=0)
    median = coordinate_median(stacked)
    assert np.all(median >= honest.min(axis=0))
    assert np.all(median <= honest.max(axis=0))


def test_robust_rules_keep_float32_and_reject_single_updates() -> None:
    stacked = np.ones((3, 4), dtype=np.float32)
    assert coordinate_median(stacked).dtype == np.float32
    assert trimmed_mean(stacked, beta=0.2).dtype == np.float32
    with pytest.raises(InvalidUpdateError):
        coordinate_median(np.ones(4))
    with pytest.raises(InvalidUpdateError):
        trimmed_mean(np.ones((0, 4)), beta=0.1)


# ----------------------------------------------------------------------- Krum, Multi-Krum


@given(stacked=stacked_strategy)
@FAST
def test_pairwise_distances_are_symmetric_with_zero_diagonal_and_correct(stacked: np.ndarray) -> None:
    distances = pairwise_squared_distances(stacked)
    assert distances.dtype == np.float64
    np.testing.assert_array_equal(distances, distances.T)
    np.testing.assert_array_equal(np.diag(distances), 0.0)
    brute = ((stacked[:, None, :] - stacked[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(distances, brute, rtol=1e-12, atol=1e-9)


@given(
    stacked=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 7), st.integers(2, 12)),
        elements=finite.map(np.float32),
    ),
    cut=st.integers(min_value=1, max_value=11),
)
@FAST
def test_pairwise_distances_accumulate_over_slices(stacked: np.ndarray, cut: int) -> None:
    cut = min(cut, stacked.shape[1] - 1)
    whole = pairwise_squared_distances(stacked)
    summed = pairwise_squared_distances(stacked[:, :cut]) + pairwise_squared_distances(stacked[:, cut:])
    np.testing.assert_allclose(summed, whole, rtol=1e-12, atol=1e-9)


def test_krum_scores_by_hand_exclude_self() -> None:
    distances = pairwise_squared_distances(np.array([[0.0], [1.0], [5.0]]))
    # f = 0, n = 3: each score is the single nearest *other* squared distance.
    np.testing.assert_array_equal(krum_scores(distances, num_byzantine=0), [1.0, 1.0, 16.0])
    np.testing.assert_array_equal(krum_select(distances, num_byzantine=0), [0])


def test_krum_ties_break_by_lowest_index() -> None:
    distances = pairwise_squared_distances(np.ones((6, 3)))
    np.testing.assert_array_equal(krum_select(distances, num_byzantine=1), [0])
    np.testing.assert_array_equal(krum_select(distances, num_byzantine=1, num_selected=4), [0, 1, 2, 3])


@st.composite
def honest_and_byzantine(draw: st.DrawFn) -> tuple[np.ndarray, set[int], int]:
    """Honest updates within 1 of a centre and f byzantine ones about 1e6 away, shuffled."""
    f = draw(st.integers(min_value=0, max_value=3))
    n = draw(st.integers(min_value=2 * f + 3, max_value=2 * f + 8))
    dim = draw(st.integers(min_value=1, max_value=6))
    rng = np.random.default_rng(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    centre = rng.uniform(-100, 100, dim)
    honest = centre + rng.uniform(-1, 1, (n - f, dim))
    colluding = draw(st.booleans())  # the byzantines all send the same vector, or each its own
    far = centre + 1e6 * (1 if draw(st.booleans()) else -1)
    byzantine = far + (np.zeros((f, dim)) if colluding else rng.uniform(-1e3, 1e3, (f, dim)))
    order = rng.permutation(n)
    stacked = np.concatenate([honest, byzantine])[order]
    bad = {int(position) for position, source in enumerate(order) if source >= n - f}
    return stacked, bad, f


@given(case=honest_and_byzantine())
@FAST
def test_krum_picks_an_honest_update(case: tuple[np.ndarray, set[int], int]) -> None:
    stacked, bad, f = case
    (chosen,) = krum_select(pairwise_squared_distances(stacked), num_byzantine=f)
    assert int(chosen) not in bad


@given(case=honest_and_byzantine(), data=st.data())
@FAST
def test_multi_krum_never_selects_far_byzantine_updates(
    case: tuple[np.ndarray, set[int], int], data: st.DataObject
) -> None:
    stacked, bad, f = case
    n = stacked.shape[0]
    count = data.draw(st.integers(min_value=1, max_value=n - f))
    selected = krum_select(pairwise_squared_distances(stacked), num_byzantine=f, num_selected=count)
    assert selected.dtype == np.intp
    assert len(selected) == count == len(set(selected.tolist()))
    assert not bad & set(selected.tolist())


@pytest.mark.parametrize("f", [0, 1, 2, 3])
def test_krum_needs_2f_plus_3_updates(f: int) -> None:
    enough = pairwise_squared_distances(np.arange(2 * f + 3, dtype=np.float64).reshape(-1, 1))
    assert krum_scores(enough, num_byzantine=f).shape == (2 * f + 3,)
    too_few = enough[:-1, :-1]
    with pytest.raises(ConfigurationError, match="2f \\+ 3"):
        krum_scores(too_few, num_byzantine=f)
    with pytest.raises(ConfigurationError):
        krum_select(too_few, num_byzantine=f)


def test_krum_rejects_bad_arguments() -> None:
    distances = pairwise_squared_distances(np.arange(7, dtype=np.float64).reshape(-1, 1))
    with pytest.raises(ConfigurationError):
        krum_scores(distances, num_byzantine=-1)
    with pytest.raises(ConfigurationError):
        krum_scores(distances, num_byzantine=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        krum_select(distances, num_byzantine=1, num_selected=0)
    with pytest.raises(ConfigurationError):
        krum_select(distances, num_byzantine=1, num_selected=8)
    with pytest.raises(InvalidUpdateError):
        krum_scores(np.zeros((3, 4)), num_byzantine=0)
