"""One secure-aggregation round in process: it must give what plaintext aggregation gives.

Tolerance. Site ``i`` masks ``n_i * (w_i - g)`` rounded to ``2^-f``; its weight ``n_i`` is an
integer and decodes exactly. So the decoded sum of ``s`` survivors is within
``error_bound(s, f) = s * 2^-(f+1)`` per coordinate of the exact sum, and the mean change
(the sum divided by ``W = sum n_i``) within ``error_bound(s, f) / W`` of the plaintext one:
about 7.8e-10 for 5 sites, ``f = 24`` and ``W = 192``. On top come float64 roundings of
values below 10 in magnitude (ulp 1.8e-15; a few dozen operations stay far below the
1e-12 allowed). Float32 models add float32 roundings (see ``float32_slack``).
"""

import random
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from federation.aggregation.strategies import (
    CoordinateMedian,
    FedAdam,
    FedAvg,
    Krum,
    MultiKrum,
    Strategy,
    TrimmedMean,
)
from federation.errors import ConfigurationError, InvalidUpdateError, SecureAggregationError
from federation.privacy import dp
from federation.privacy.secagg import DEFAULT_FRACTION_BITS, error_bound
from federation.privacy.secure_fedavg import ClientDP, flatten, secure_round, unflatten
from federation.types import ClientUpdate, ModelSpec, Weights

pytestmark = pytest.mark.privacy

NUM_EXAMPLES = (12, 40, 7, 100, 33)  # W = 192
FLOAT64_SLACK = 1e-12


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    """A repeatable stand-in for os.urandom: tests only, never for real keys."""
    return random.Random(seed).randbytes


def make_round(seed: int, dtype: type[np.floating] = np.float64) -> tuple[Weights, list[ClientUpdate]]:
    rng = np.random.default_rng(seed)
    shapes = {"dense/kernel": (4, 3), "dense/bias": (3,), "out/kernel": (3, 1)}
    global_weights = {name: rng.normal(0.0, 1.0, shape).astype(dtype) for name, shape in shapes.items()}
    updates = [
        ClientUpdate(
            {
                name: (array + rng.normal(0.0, 0.5, array.shape)).astype(dtype)
                for name, array in global_weights.items()
            },
            num_examples=count,
        )
        for count in NUM_EXAMPLES
    ]
    return global_weights, updates


def survivors_of(updates: list[ClientUpdate], dropped: tuple[int, ...]) -> list[ClientUpdate]:
    return [update for index, update in enumerate(updates) if index + 1 not in dropped]


def mean_change_tolerance(survivors: list[ClientUpdate], fraction_bits: int = DEFAULT_FRACTION_BITS) -> float:
    """``error_bound(s, f) / sum(n_i)``: the fixed-point error on the example-weighted mean change."""
    return error_bound(len(survivors), fraction_bits) / sum(u.num_examples for u in survivors)


def assert_close(actual: Weights, expected: Weights, atol: float | dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        tolerance = atol[name] if isinstance(atol, dict) else atol
        np.testing.assert_allclose(actual[name], array, rtol=0, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("dropped", [(), (2,), (1, 4)])
@pytest.mark.parametrize("strategy", [FedAvg(), FedAvg(server_learning_rate=0.5)])
def test_fedavg_equals_plaintext_fedavg_over_the_sites_that_masked(
    dropped: tuple[int, ...], strategy: FedAvg
) -> None:
    global_weights, updates = make_round(seed=1)
    survivors = survivors_of(updates, dropped)
    result = secure_round(
        global_weights,
        updates,
        strategy=strategy,
        dropped_before_masking=dropped,
        random_bytes=seeded_bytes(2),
    )
    expected = strategy.aggregate(global_weights, survivors)
    # The server step g + eta * (mean - g) scales the error by eta <= 1.
    assert_close(result.weights, expected.weights, mean_change_tolerance(survivors) + FLOAT64_SLACK)
    assert result.details["secure_aggregation_sites"] == 5 - len(dropped)
    assert result.details["num_updates"] == 1  # the strategy saw one mean, never a site's update


@pytest.mark.parametrize(("before_masking", "before_unmasking"), [((), (3,)), ((), (3, 5)), ((1,), (3,))])
def test_a_site_that_drops_before_unmasking_is_still_counted(
    before_masking: tuple[int, ...], before_unmasking: tuple[int, ...]
) -> None:
    global_weights, updates = make_round(seed=3)
    survivors = survivors_of(updates, before_masking)
    result = secure_round(
        global_weights,
        updates,
        strategy=FedAvg(),
        dropped_before_masking=before_masking,
        dropped_before_unmasking=before_unmasking,
        random_bytes=seeded_bytes(4),
    )
    expected = FedAvg().aggregate(global_weights, survivors)
    assert_close(result.weights, expected.weights, mean_change_tolerance(survivors) + FLOAT64_SLACK)
    assert result.details["secure_aggregation_sites"] == len(survivors)


def float32_slack(updates: list[ClientUpdate], name: str) -> float:
    """Plaintext FedAvg folds the ``n`` float32 updates into a float32 accumulator (one
    rounding per product and per sum, each at most half an ulp of a value no larger than
    ``max |w|``); the secure path rounds ``g + mean change`` to float32 once. Together:
    below ``(n + 2) * eps32 * max |w|``."""
    largest = max(float(np.max(np.abs(u.weights[name]))) for u in updates)
    return (len(updates) + 2) * float(np.finfo(np.float32).eps) * largest


def test_float32_models_keep_their_dtype_and_match_within_float32_rounding() -> None:
    global_weights, updates = make_round(seed=5, dtype=np.float32)
    result = secure_round(global_weights, updates, strategy=FedAvg(), random_bytes=seeded_bytes(6))
    expected = FedAvg().aggregate(global_weights, updates)
    bound = mean_change_tolerance(updates)
    assert_close(
        result.weights, expected.weights, {n: bound + float32_slack(updates, n) for n in global_weights}
    )


def fedadam_tolerance(
    strategy: FedAdam, delta: NDArray[np.floating], state: Weights, name: str, error: float
) -> float:
    """How far FedAdam's step can move when its delta moves by ``error`` (first order, x2).

    ``x' = x + eta * m / (sqrt(v) + tau)`` with ``m = b1 m0 + (1 - b1) d`` and
    ``v = b2 v0 + (1 - b2) d^2``, so ``|dx'/dd| <= eta * ((1 - b1) / (S + tau)
    + |m| (1 - b2) |d| / (S (S + tau)^2))`` with ``S = sqrt(v)``.
    """
    m, v = np.abs(state[f"m/{name}"]), state[f"v/{name}"]
    root = np.sqrt(v)
    slope = (1 - strategy.beta_1) / (root + strategy.tau)
    slope = slope + m * (1 - strategy.beta_2) * np.abs(delta) / (root * (root + strategy.tau) ** 2)
    return 2.0 * strategy.server_learning_rate * float(np.max(slope)) * error + FLOAT64_SLACK


def test_fedadam_steps_on_the_one_mean_with_state_in_and_out() -> None:
    strategy = FedAdam()
    first_global, first_updates = make_round(seed=7)
    state_in = strategy.aggregate(first_global, first_updates).state  # a previous round's moments
    global_weights, updates = make_round(seed=8)
    plaintext_mean = FedAvg().aggregate(global_weights, updates).weights
    expected = strategy.aggregate(global_weights, [ClientUpdate(plaintext_mean, 1)], state=state_in)

    result = secure_round(
        global_weights, updates, strategy=strategy, state=state_in, random_bytes=seeded_bytes(9)
    )
    error = mean_change_tolerance(updates) + FLOAT64_SLACK  # on the delta d = mean - g
    deltas = {name: plaintext_mean[name] - array for name, array in global_weights.items()}
    assert_close(
        result.weights,
        expected.weights,
        {n: fedadam_tolerance(strategy, deltas[n], expected.state, n, error) for n in global_weights},
    )
    # m moves by (1 - b1) * error, v by (1 - b2) * 2 |d| * error: both below 'error' here.
    assert_close(result.state, expected.state, error)
    assert sorted(result.state) == sorted(f"{slot}/{n}" for slot in ("m", "v") for n in global_weights)


def test_too_few_maskers_fail_the_round() -> None:
    global_weights, updates = make_round(seed=10)
    with pytest.raises(SecureAggregationError, match="threshold is 3"):
        secure_round(
            global_weights, updates, strategy=FedAvg(), threshold=3, dropped_before_masking=(1, 3, 5)
        )


def test_too_few_unmasking_answers_fail_the_round() -> None:
    global_weights, updates = make_round(seed=11)
    with pytest.raises(SecureAggregationError, match="answered the unmasking request"):
        secure_round(
            global_weights,
            updates,
            strategy=FedAvg(),
            threshold=3,
            dropped_before_masking=(1,),
            dropped_before_unmasking=(2, 4),
        )


@pytest.mark.parametrize(
    "strategy",
    [
        CoordinateMedian(),
        TrimmedMean(),
        Krum(),
        MultiKrum(),
        FedAvg(max_weight_share=0.5),
        FedAdam(max_weight_share=0.5),
    ],
    ids=lambda s: f"{s.name.value}-{s.params()}",
)
def test_strategies_that_need_single_updates_or_weights_are_refused(strategy: Strategy) -> None:
    global_weights, updates = make_round(seed=12)
    with pytest.raises(ConfigurationError, match="secure aggregation"):
        secure_round(global_weights, updates, strategy=strategy)


@pytest.mark.parametrize(
    ("num_sites", "threshold", "dropped"),
    [(2, None, ()), (5, 2, ()), (5, 6, ()), (5, None, (6,))],
)
def test_bad_round_configurations_are_refused(
    num_sites: int, threshold: int | None, dropped: tuple[int, ...]
) -> None:
    global_weights, updates = make_round(seed=13)
    with pytest.raises(ConfigurationError):
        secure_round(
            global_weights,
            updates[:num_sites],
            strategy=FedAvg(),
            threshold=threshold,
            dropped_before_masking=dropped,
        )


@pytest.mark.parametrize("dropped", [(), (2,)])
def test_client_dp_with_tiny_noise_is_the_unweighted_mean_of_clipped_changes(
    dropped: tuple[int, ...],
) -> None:
    global_weights, updates = make_round(seed=14)
    clipping_norm = 0.8
    survivors = survivors_of(updates, dropped)
    clipped = [dp.clip_delta(u.weights, global_weights, clipping_norm)[0] for u in survivors]
    assert (
        sum(dp.clip_delta(u.weights, global_weights, clipping_norm)[1] > clipping_norm for u in survivors)
        >= 2
    )
    expected = {
        name: array + np.mean([c[name] - array for c in clipped], axis=0)
        for name, array in global_weights.items()
    }
    privacy = ClientDP(noise_multiplier=1e-9, clipping_norm=clipping_norm, rng=np.random.default_rng(15))

    result = secure_round(
        global_weights,
        updates,
        strategy=FedAvg(),
        dropped_before_masking=dropped,
        client_dp=privacy,
        random_bytes=seeded_bytes(16),
    )
    # Each site packs the weight 1: the mean change is within error_bound(s) / s = 2^-(f+1)
    # (3e-8); the noise has std 1e-9 * C / s < 2e-10, and 8 std covers every coordinate.
    num_sites = len(survivors)
    tolerance = error_bound(num_sites) / num_sites + 8 * 1e-9 * clipping_norm / num_sites + FLOAT64_SLACK
    assert_close(result.weights, expected, tolerance)
    assert result.details["num_sites"] == num_sites
    assert result.details["secure_aggregation_sites"] == num_sites
    assert result.details["noise_std"] == pytest.approx(1e-9 * clipping_norm / num_sites)


def test_client_dp_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        ClientDP(noise_multiplier=0.0, clipping_norm=1.0, rng=np.random.default_rng(0))
    with pytest.raises(ConfigurationError):
        ClientDP(noise_multiplier=1.0, clipping_norm=-1.0, rng=np.random.default_rng(0))


def test_flatten_follows_the_spec_order_and_unflatten_inverts_it() -> None:
    weights = {"b": np.array([5.0], np.float32), "a": np.arange(4.0).reshape(2, 2)}
    spec = ModelSpec.from_weights({"a": weights["a"], "b": weights["b"]})
    vector = flatten(weights, spec)
    assert vector.dtype == np.float64
    np.testing.assert_array_equal(vector, [0.0, 1.0, 2.0, 3.0, 5.0])
    back = unflatten(vector, spec)
    assert list(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"], weights["a"])
    with pytest.raises(InvalidUpdateError):
        flatten({"a": weights["a"]}, spec)
    with pytest.raises(InvalidUpdateError):
        unflatten(vector[:-1], spec)


@pytest.mark.parametrize("fraction_bits", [8, 12])
def test_coarse_fixed_point_stays_within_the_derived_bound(fraction_bits: int) -> None:
    """With few fraction bits the rounding error is large enough to see, and still bounded."""
    global_weights, updates = make_round(seed=17)
    result = secure_round(
        global_weights, updates, strategy=FedAvg(), fraction_bits=fraction_bits, random_bytes=seeded_bytes(18)
    )
    expected = FedAvg().aggregate(global_weights, updates)
    assert_close(
        result.weights, expected.weights, mean_change_tolerance(updates, fraction_bits) + FLOAT64_SLACK
    )
