"""The round plan: one compatibility check and one aggregation, against independent references.

The references below are written from the papers' formulas with plain numpy (FedAvg's
weighted mean, McMahan et al. 2017; DP-FedAvg's clipped mean plus Gaussian noise, McMahan
et al. 2018), never with the functions the plan calls.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.aggregation.strategies import (
    CoordinateMedian,
    FedAdam,
    FedAvg,
    FedProx,
    Krum,
    MultiKrum,
    Strategy,
    TrimmedMean,
    build_strategy,
)
from federation.aggregation.streaming import StoredUpdate
from federation.errors import ConfigurationError, InvalidUpdateError, SecureAggregationError
from federation.models.base import ModelKind
from federation.privacy import accounting, secagg
from federation.privacy.settings import DifferentialPrivacy, DPLevel, PrivacySettings
from federation.rounds import MIN_SECURE_SITES, RoundPlan, UnmaskedSum
from federation.types import ClientUpdate, ModelSpec, Weights
from federation.wire import serialize_weights

MEAN_RULES = [FedAvg(), FedProx(), FedAdam()]
SINGLE_UPDATE_RULES = [CoordinateMedian(), TrimmedMean(), Krum(), MultiKrum()]


def _settings(
    *,
    secure: bool = False,
    threshold: int | None = None,
    level: DPLevel | None = None,
    noise: float | None = 1.0,
    clipping_norm: float = 1.0,
) -> PrivacySettings:
    mechanism = None if level is None else DifferentialPrivacy(level, clipping_norm, noise)
    return PrivacySettings(
        secure_aggregation=secure,
        secure_aggregation_threshold=threshold,
        differential_privacy=mechanism,
        epsilon=None if mechanism is None else 10.0,
    )


def _round(seed: int, num_sites: int, shape: tuple[int, ...] = (3, 2)) -> tuple[Weights, list[ClientUpdate]]:
    rng = np.random.default_rng(seed)
    global_weights = {
        "w": rng.normal(size=shape).astype(np.float32),
        "b": rng.normal(size=2).astype(np.float32),
    }
    updates = [
        ClientUpdate(
            {
                name: (array + rng.normal(0, 2, array.shape)).astype(np.float32)
                for name, array in global_weights.items()
            },
            num_examples=int(rng.integers(1, 100)),
        )
        for _ in range(num_sites)
    ]
    return global_weights, updates


# --- the compatibility check ---------------------------------------------------------------


@given(num_sites=st.integers(1, 40), threshold=st.one_of(st.none(), st.integers(2, 45)))
def test_secure_aggregation_needs_three_sites_and_a_majority_threshold(
    num_sites: int, threshold: int | None
) -> None:
    plan = RoundPlan(FedAvg(), _settings(secure=True, threshold=threshold))
    chosen = threshold if threshold is not None else num_sites // 2 + 1
    fits = num_sites >= 3 and 2 * chosen > num_sites and chosen <= num_sites
    if fits:
        plan.check(num_sites)
        assert plan.secure_threshold(num_sites) == chosen
    else:
        with pytest.raises(ConfigurationError):
            plan.check(num_sites)


@pytest.mark.parametrize("strategy", SINGLE_UPDATE_RULES, ids=lambda s: s.name.value)
def test_rules_that_need_single_updates_refuse_secure_aggregation_and_client_dp(strategy: Strategy) -> None:
    with pytest.raises(ConfigurationError, match="needs every site's update on its own"):
        RoundPlan(strategy, _settings(secure=True)).check(5)
    with pytest.raises(ConfigurationError, match="each update on its own"):
        RoundPlan(strategy, _settings(level=DPLevel.CLIENT)).check(5)
    RoundPlan(strategy, _settings(level=DPLevel.SAMPLE)).check(5, ModelKind.MLP)
    RoundPlan(strategy).check(strategy.minimum_updates())


@given(f=st.integers(min_value=0, max_value=3), selected=st.integers(min_value=1, max_value=6))
@settings(max_examples=25, deadline=None)
def test_a_plan_refuses_exactly_the_site_counts_its_rule_cannot_combine(f: int, selected: int) -> None:
    """The plan's check and the aggregation itself agree: with as many sites as the check
    allows, Multi-Krum combines a round; with one fewer, the check refuses at setup, before
    any site trains (Krum needs n >= 2f + 3: Blanchard et al., NeurIPS 2017)."""
    strategy = MultiKrum(num_byzantine=f, num_selected=selected)
    fewest = strategy.minimum_updates()
    assert fewest == max(2 * f + 3, selected)
    plan = RoundPlan(strategy)
    plan.check(fewest)
    with pytest.raises(ConfigurationError, match=f"needs at least {fewest} sites"):
        plan.check(fewest - 1)
    rng = np.random.default_rng(f)
    updates = [ClientUpdate({"w": rng.normal(size=3).astype(np.float32)}, 10) for _ in range(fewest)]
    strategy.aggregate({"w": np.zeros(3, np.float32)}, updates)


@pytest.mark.parametrize("strategy", MEAN_RULES, ids=lambda s: s.name.value)
def test_mean_rules_run_under_every_mechanism(strategy: Strategy) -> None:
    for level in (None, DPLevel.CLIENT):
        RoundPlan(strategy, _settings(secure=True, level=level)).check(MIN_SECURE_SITES, ModelKind.LOGISTIC)


def test_a_weight_cap_refuses_secure_aggregation() -> None:
    with pytest.raises(ConfigurationError, match="max_weight_share"):
        RoundPlan(FedAvg(max_weight_share=0.5), _settings(secure=True)).check(5)


@pytest.mark.parametrize("kind", list(ModelKind), ids=lambda kind: kind.value)
def test_sample_level_dp_needs_a_torch_model_and_no_proximal_term(kind: ModelKind) -> None:
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.SAMPLE, noise=None))
    if kind.uses_torch:
        plan.check(3, kind)
        with pytest.raises(ConfigurationError, match="proximal_mu"):
            plan.check(3, kind, proximal_mu=0.01)
    else:
        with pytest.raises(ConfigurationError, match="torch model"):
            plan.check(3, kind)


# --- resolving the noise and storing the plan ------------------------------------------------


def test_the_resolved_noise_keeps_every_round_within_the_budget() -> None:
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT, noise=None)).resolved(num_rounds=5)
    noise = plan.client_noise_multiplier
    assert noise is not None
    spent = accounting.client_level_epsilon(noise_multiplier=noise, rounds=5, delta=1e-5)
    assert 10.0 * 0.98 < spent <= 10.0 + 1e-6


def test_a_budget_that_cannot_pay_one_round_is_refused() -> None:
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT, noise=0.3))
    with pytest.raises(ConfigurationError, match="more than the study's budget"):
        plan.resolved(num_rounds=1)


def test_an_unresolved_client_dp_plan_does_not_aggregate() -> None:
    global_weights, updates = _round(1, 3)
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT, noise=None))
    with pytest.raises(ConfigurationError, match="resolved"):
        plan.aggregate(global_weights, updates, rng=np.random.default_rng(0))


@given(
    name=st.sampled_from(["fedavg", "fedadam", "median", "fedprox"]),
    secure=st.booleans(),
    level=st.one_of(st.none(), st.sampled_from(list(DPLevel))),
    noise=st.floats(0.3, 5.0),
    with_spec=st.booleans(),
)
def test_a_plan_reads_back_from_its_json(
    name: str, secure: bool, level: DPLevel | None, noise: float, with_spec: bool
) -> None:
    spec = ModelSpec.from_weights({"w": np.zeros((2, 3), np.float32)}) if with_spec else None
    plan = RoundPlan(build_strategy(name), _settings(secure=secure, level=level, noise=noise), spec)
    assert RoundPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"strategy": "fedavg"},
        {"strategy": {"name": "nope"}},
        {"strategy": {"name": "fedavg"}, "privacy": []},
    ],
)
def test_a_malformed_plan_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RoundPlan.from_json(data)


# --- aggregation against references -----------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), num_sites=st.integers(1, 6))
def test_a_plain_round_is_fedavgs_weighted_mean(seed: int, num_sites: int) -> None:
    global_weights, updates = _round(seed, num_sites)
    result = RoundPlan(FedAvg()).aggregate(global_weights, updates)
    total = sum(u.num_examples for u in updates)
    for name in global_weights:
        expected = sum(u.num_examples * u.weights[name].astype(np.float64) for u in updates) / total
        np.testing.assert_allclose(result.weights[name], expected, rtol=1e-5, atol=1e-5)


def _reference_dp_fedavg(
    global_weights: Weights, updates: list[ClientUpdate], noise: float, clipping_norm: float, seed: int
) -> Weights:
    """DP-FedAvg by hand: clip each whole delta to C, average unweighted, add N(0, (z C / n)^2)."""
    names = list(global_weights)
    rng = np.random.default_rng(seed)
    mean = {name: np.zeros(global_weights[name].shape) for name in names}
    for update in updates:
        delta = {name: update.weights[name].astype(np.float64) - global_weights[name] for name in names}
        norm = np.sqrt(sum(float(np.sum(d**2)) for d in delta.values()))
        scale = min(1.0, clipping_norm / norm)
        for name in names:
            mean[name] += delta[name] * scale / len(updates)
    std = noise * clipping_norm / len(updates)
    return {name: global_weights[name] + mean[name] + rng.normal(0, std, mean[name].shape) for name in names}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_sites=st.integers(1, 6),
    noise=st.floats(0.1, 3.0),
    clipping_norm=st.floats(0.05, 5.0),
)
def test_a_client_dp_round_is_dp_fedavg(
    seed: int, num_sites: int, noise: float, clipping_norm: float
) -> None:
    global_weights, updates = _round(seed, num_sites)
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT, noise=noise, clipping_norm=clipping_norm))
    result = plan.aggregate(global_weights, updates, rng=np.random.default_rng(seed))
    expected = _reference_dp_fedavg(global_weights, updates, noise, clipping_norm, seed)
    for name in global_weights:
        np.testing.assert_allclose(result.weights[name], expected[name], rtol=1e-5, atol=1e-5)
    assert result.details["num_sites"] == num_sites
    assert result.details["noise_std"] == pytest.approx(noise * clipping_norm / num_sites)


def _packed_sum(global_weights: Weights, updates: list[ClientUpdate], *, unit_weights: bool) -> np.ndarray:
    """``sum [n_i * (w_i - g)..., n_i]`` in the plan's flat layout (names in the spec's order)."""
    vectors = []
    for update in updates:
        change = np.concatenate(
            [(update.weights[n].astype(np.float64) - global_weights[n]).ravel() for n in global_weights]
        )
        weight = 1.0 if unit_weights else float(update.num_examples)
        vectors.append(np.append(change * weight, weight))
    return np.sum(vectors, axis=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), num_sites=st.integers(3, 7))
def test_a_secure_round_from_the_unmasked_sum_is_fedavg(seed: int, num_sites: int) -> None:
    global_weights, updates = _round(seed, num_sites)
    summed = UnmaskedSum(_packed_sum(global_weights, updates, unit_weights=False), num_sites)
    result = RoundPlan(FedAvg(), _settings(secure=True)).aggregate(global_weights, summed)
    total = sum(u.num_examples for u in updates)
    for name in global_weights:
        expected = sum(u.num_examples * u.weights[name].astype(np.float64) for u in updates) / total
        np.testing.assert_allclose(result.weights[name], expected, rtol=1e-5, atol=1e-5)
    assert result.details["secure_aggregation_sites"] == num_sites


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), num_sites=st.integers(3, 7), noise=st.floats(0.1, 3.0))
def test_a_secure_client_dp_round_adds_the_noise_to_the_sum(seed: int, num_sites: int, noise: float) -> None:
    global_weights, updates = _round(seed, num_sites)
    summed = _packed_sum(global_weights, updates, unit_weights=True)
    plan = RoundPlan(FedAvg(), _settings(secure=True, level=DPLevel.CLIENT, noise=noise))
    result = plan.aggregate(global_weights, UnmaskedSum(summed, num_sites), rng=np.random.default_rng(seed))
    rng, offset = np.random.default_rng(seed), 0
    for name, array in global_weights.items():
        change = summed[offset : offset + array.size].reshape(array.shape) / num_sites
        expected = array + change + rng.normal(0, noise / num_sites, array.shape)
        np.testing.assert_allclose(result.weights[name], expected, rtol=1e-5, atol=1e-5)
        offset += array.size


def test_a_secure_client_dp_sum_must_hold_one_weight_per_site() -> None:
    global_weights, updates = _round(3, 4)
    summed = _packed_sum(global_weights, updates, unit_weights=False)  # example counts, not 1s
    plan = RoundPlan(FedAvg(), _settings(secure=True, level=DPLevel.CLIENT))
    with pytest.raises(SecureAggregationError, match="not the 4 sites"):
        plan.aggregate(global_weights, UnmaskedSum(summed, 4), rng=np.random.default_rng(0))


def test_inputs_must_fit_the_plan() -> None:
    global_weights, updates = _round(4, 3)
    summed = UnmaskedSum(_packed_sum(global_weights, updates, unit_weights=False), 3)
    with pytest.raises(ConfigurationError, match="unmasked sum"):
        RoundPlan(FedAvg(), _settings(secure=True)).aggregate(global_weights, updates)
    with pytest.raises(ConfigurationError, match="no secure aggregation"):
        RoundPlan(FedAvg()).aggregate(global_weights, summed)
    with pytest.raises(ConfigurationError, match="rng"):
        RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT)).aggregate(global_weights, updates)
    other = ModelSpec.from_weights({"w": np.zeros(1, np.float32)})
    with pytest.raises(ConfigurationError, match="model spec"):
        RoundPlan(FedAvg(), model_spec=other).aggregate(global_weights, updates)


@pytest.mark.parametrize("level", [None, DPLevel.CLIENT], ids=["plain", "client-dp"])
def test_stored_updates_aggregate_to_the_same_bytes_as_in_memory_ones(
    tmp_path: Path, level: DPLevel | None
) -> None:
    global_weights, updates = _round(5, 4)
    spec = ModelSpec.from_weights(global_weights)
    stored = []
    for index, update in enumerate(updates):
        path = tmp_path / f"{index}.safetensors"
        path.write_bytes(serialize_weights(update.weights, spec=spec))
        stored.append(StoredUpdate(path, update.num_examples))
    plan = RoundPlan(FedAdam(), _settings(level=level), model_spec=spec)
    from_memory = plan.aggregate(global_weights, updates, rng=np.random.default_rng(9))
    from_files = plan.aggregate(global_weights, stored, rng=np.random.default_rng(9))
    for name in global_weights:
        np.testing.assert_array_equal(from_files.weights[name], from_memory.weights[name])
    assert from_files.state.keys() == from_memory.state.keys()


def test_a_stored_update_read_whole_is_checked_against_its_digest(tmp_path: Path) -> None:
    global_weights, updates = _round(7, 3)
    spec = ModelSpec.from_weights(global_weights)
    stored = []
    for index, update in enumerate(updates):
        data = serialize_weights(update.weights, spec=spec)
        path = tmp_path / f"{index}.safetensors"
        path.write_bytes(data)
        stored.append(StoredUpdate(path, update.num_examples, hashlib.sha256(data).hexdigest()))
    plan = RoundPlan(FedAvg(), _settings(level=DPLevel.CLIENT))
    plan.aggregate(global_weights, stored, rng=np.random.default_rng(0))
    stored[1] = StoredUpdate(stored[1].path, stored[1].num_examples, "0" * 64)
    with pytest.raises(InvalidUpdateError, match="digest"):
        plan.aggregate(global_weights, stored, rng=np.random.default_rng(0))


def test_the_fixed_point_sum_of_the_protocol_decodes_to_the_same_model() -> None:
    """Encoded, summed in the ring and decoded (what unmasking yields), the packed inputs
    give the plaintext secure result within the stated error bound."""
    global_weights, updates = _round(6, 5)
    packed = [_packed_sum(global_weights, [update], unit_weights=False) for update in updates]
    ring_sum = np.sum([secagg.encode(vector) for vector in packed], axis=0, dtype=np.uint64)
    plan = RoundPlan(FedAvg(), _settings(secure=True))
    exact = plan.aggregate(global_weights, UnmaskedSum(np.sum(packed, axis=0), 5))
    decoded = plan.aggregate(global_weights, UnmaskedSum(secagg.decode(ring_sum), 5))
    total = sum(u.num_examples for u in updates)
    for name in global_weights:
        np.testing.assert_allclose(
            decoded.weights[name], exact.weights[name], atol=secagg.error_bound(5) / total + 1e-6, rtol=0
        )


@pytest.mark.parametrize("weight_sum", [-5.0, 0.0, 2.5, 3 * 10**9 + 1.0])
def test_a_secure_sum_with_a_false_example_count_fails_the_round(weight_sum: float) -> None:
    """Three sites of 1 to 10^9 examples each make a summed count in [3, 3 * 10^9]: a site that
    packed a false weight (negative, below 1, above 10^9) puts it outside, and the round fails."""
    global_weights, updates = _round(5, 3)
    summed = _packed_sum(global_weights, updates, unit_weights=False)
    summed[-1] = weight_sum
    plan = RoundPlan(FedAvg(), _settings(secure=True))
    with pytest.raises(SecureAggregationError, match="masked example counts sum to"):
        plan.aggregate(global_weights, UnmaskedSum(summed, 3))
