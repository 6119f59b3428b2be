"""Combining LoRA adapters, checked against references that do not use the code under test:
plain numpy products and means, and the Eckart-Young-Mirsky theorem (the truncated SVD is
the best rank-r approximation; its error is the norm of the discarded singular values)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.aggregation.adapters import fedit_error, keep_frozen_a, svd_aggregate, svd_refactor
from federation.aggregation.strategies import FedAdam, FedAvg, Krum
from federation.errors import ConfigurationError, InvalidUpdateError
from federation.models.lora import AdapterAggregation, lora_pairs
from federation.privacy.settings import DifferentialPrivacy, DPLevel, PrivacySettings
from federation.rounds import RoundPlan
from federation.types import ClientUpdate, Weights

A, B = "layer.q.lora_A.weight", "layer.q.lora_B.weight"
HEAD = "classifier.weight"


def _site(rng: np.random.Generator, rank: int, inputs: int, outputs: int) -> Weights:
    return {
        A: rng.normal(size=(rank, inputs)).astype(np.float32),
        B: rng.normal(size=(outputs, rank)).astype(np.float32),
        HEAD: rng.normal(size=(2, 4)).astype(np.float32),
    }


def _reference_mean_product(sites: list[Weights], counts: list[int]) -> np.ndarray:
    total = sum(counts)
    return sum(
        (n / total) * (s[B].astype(np.float64) @ s[A].astype(np.float64))
        for s, n in zip(sites, counts, strict=True)
    )


shapes = st.tuples(
    st.integers(1, 4),  # rank
    st.integers(2, 9),  # in
    st.integers(2, 9),  # out
    st.integers(1, 5),  # sites
    st.integers(0, 2**31),  # seed
)


@settings(max_examples=60, deadline=None)
@given(shapes, st.lists(st.integers(1, 500), min_size=5, max_size=5))
def test_fedit_is_the_example_weighted_mean_of_a_and_of_b(shape, counts) -> None:
    rank, inputs, outputs, num_sites, seed = shape
    rng = np.random.default_rng(seed)
    sites = [_site(rng, rank, inputs, outputs) for _ in range(num_sites)]
    counts = counts[:num_sites]
    updates = [ClientUpdate(w, n) for w, n in zip(sites, counts, strict=True)]
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.FEDIT)
    result = plan.aggregate(_site(rng, rank, inputs, outputs), updates)
    total = sum(counts)
    for name in (A, B, HEAD):
        expected = sum((n / total) * s[name].astype(np.float64) for s, n in zip(sites, counts, strict=True))
        np.testing.assert_allclose(result.weights[name], expected, rtol=1e-5, atol=1e-5)
    # The error it reports is the paper's quantity, computed here from its definition.
    exact = _reference_mean_product(sites, counts)
    mean_a = sum((n / total) * s[A].astype(np.float64) for s, n in zip(sites, counts, strict=True))
    mean_b = sum((n / total) * s[B].astype(np.float64) for s, n in zip(sites, counts, strict=True))
    expected_error = np.linalg.norm(exact - mean_b @ mean_a) / np.linalg.norm(exact)
    assert result.details["lora_fedit_error"] == pytest.approx(expected_error, rel=1e-6, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(shapes, st.lists(st.integers(1, 500), min_size=5, max_size=5))
def test_svd_method_is_the_best_rank_r_approximation_of_the_mean_product(shape, counts) -> None:
    rank, inputs, outputs, num_sites, seed = shape
    rng = np.random.default_rng(seed)
    sites = [_site(rng, rank, inputs, outputs) for _ in range(num_sites)]
    counts = counts[:num_sites]
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.SVD)
    result = plan.aggregate(
        _site(rng, rank, inputs, outputs), [ClientUpdate(w, n) for w, n in zip(sites, counts, strict=True)]
    )
    target = _reference_mean_product(sites, counts)
    product = result.weights[B].astype(np.float64) @ result.weights[A].astype(np.float64)
    singular = np.linalg.svd(target, compute_uv=False)
    discarded = float(np.sqrt(np.sum(singular[rank:] ** 2)))
    # Eckart-Young-Mirsky: the error of the best rank-r approximation is the discarded part.
    assert np.linalg.norm(target - product) == pytest.approx(discarded, rel=1e-4, abs=1e-4)
    # ... and it keeps the r largest singular values of the mean product (numpy's SVD).
    kept = np.linalg.svd(product, compute_uv=False)[: min(rank, singular.size)]
    np.testing.assert_allclose(kept, singular[:rank], rtol=1e-4, atol=1e-4)
    expected_residual = discarded / np.linalg.norm(target)
    assert result.details["lora_svd_residual"] == pytest.approx(expected_residual, rel=1e-4, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(shapes, st.lists(st.integers(1, 500), min_size=5, max_size=5))
def test_svd_method_is_exact_when_the_mean_product_has_rank_at_most_r(shape, counts) -> None:
    rank, inputs, outputs, num_sites, seed = shape
    rng = np.random.default_rng(seed)
    shared_a = rng.normal(size=(rank, inputs)).astype(np.float32)  # one row space: rank <= r
    sites = [{**_site(rng, rank, inputs, outputs), A: shared_a} for _ in range(num_sites)]
    counts = counts[:num_sites]
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.SVD)
    result = plan.aggregate(
        _site(rng, rank, inputs, outputs), [ClientUpdate(w, n) for w, n in zip(sites, counts, strict=True)]
    )
    target = _reference_mean_product(sites, counts)
    product = result.weights[B].astype(np.float64) @ result.weights[A].astype(np.float64)
    assert np.linalg.norm(product - target) <= 1e-5 * np.linalg.norm(target)


def test_svd_method_beats_random_rank_r_matrices() -> None:
    rng = np.random.default_rng(3)
    target = rng.normal(size=(12, 10))
    factors = svd_refactor(target, 3)
    best = np.linalg.norm(target - factors.b.astype(np.float64) @ factors.a.astype(np.float64))
    for _ in range(200):
        guess = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 10))
        scale = np.sum(guess * target) / np.sum(guess * guess)  # the best multiple of the guess
        assert np.linalg.norm(target - scale * guess) >= best - 1e-4


@settings(max_examples=40, deadline=None)
@given(shapes, st.lists(st.integers(1, 500), min_size=5, max_size=5))
def test_ffa_keeps_the_global_a_and_is_exact(shape, counts) -> None:
    rank, inputs, outputs, num_sites, seed = shape
    rng = np.random.default_rng(seed)
    global_weights = _site(rng, rank, inputs, outputs)
    honest = [{**_site(rng, rank, inputs, outputs), A: global_weights[A]} for _ in range(num_sites)]
    counts = counts[:num_sites]
    # One site moved its A anyway: FFA-LoRA's server keeps the frozen one.
    sent = [{**honest[0], A: honest[0][A] + 1.0}, *honest[1:]]
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.FFA)
    result = plan.aggregate(global_weights, [ClientUpdate(w, n) for w, n in zip(sent, counts, strict=True)])
    np.testing.assert_array_equal(result.weights[A], global_weights[A])
    product = result.weights[B].astype(np.float64) @ result.weights[A].astype(np.float64)
    target = _reference_mean_product(honest, counts)
    assert np.linalg.norm(product - target) <= 1e-5 * max(np.linalg.norm(target), 1e-12)
    assert result.details["lora_fedit_error"] < 1e-6  # A shared: the mean of the products is exact


def test_ffa_keeps_a_under_client_level_dp() -> None:
    rng = np.random.default_rng(0)
    global_weights = _site(rng, 2, 5, 4)
    privacy = PrivacySettings(
        differential_privacy=DifferentialPrivacy(
            level=DPLevel.CLIENT, clipping_norm=1.0, noise_multiplier=1.0
        ),
        epsilon=8.0,
    )
    plan = RoundPlan(FedAvg(), privacy, adapters=AdapterAggregation.FFA)
    sites = [ClientUpdate(_site(rng, 2, 5, 4), 10) for _ in range(3)]
    result = plan.aggregate(global_weights, sites, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(result.weights[A], global_weights[A])
    assert not np.array_equal(result.weights[B], global_weights[B])


def test_svd_keeps_spare_rows_of_a_trainable_when_the_mean_product_has_low_rank() -> None:
    rng = np.random.default_rng(1)
    global_weights = _site(rng, 3, 5, 4)
    shared_a = rng.normal(size=(3, 5)).astype(np.float32)
    # Every site's B is zero but in its first column: the mean product has rank 1 < r = 3.
    sites = []
    for _ in range(3):
        b = np.zeros((4, 3), np.float32)
        b[:, 0] = rng.normal(size=4)
        sites.append({**_site(rng, 3, 5, 4), A: shared_a, B: b})
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.SVD)
    result = plan.aggregate(global_weights, [ClientUpdate(w, 10) for w in sites]).weights
    product = result[B].astype(np.float64) @ result[A].astype(np.float64)
    target = _reference_mean_product(sites, [10, 10, 10])
    assert np.linalg.norm(product - target) <= 1e-5 * np.linalg.norm(target)
    np.testing.assert_array_equal(result[A][1:], global_weights[A][1:])  # spare rows: the old A
    assert not result[B][:, 1:].any()  # with zero columns of B, so the product is unchanged


def test_svd_refuses_adapters_whose_product_overflows() -> None:
    # Finite float32 factors whose balanced refactorisation is not: B gets sqrt(|a| / |b|) times larger.
    huge = {A: np.full((1, 100), 3e38, np.float32), B: np.full((2, 1), 3e38, np.float32)}
    with pytest.raises(InvalidUpdateError, match=r"overflow"):
        svd_aggregate(huge, [huge, huge], [0.5, 0.5], [(A, B)], rank=1)


def test_error_is_zero_while_every_b_is_zero() -> None:
    rng = np.random.default_rng(0)
    sites = [{**_site(rng, 2, 4, 3), B: np.zeros((3, 2), np.float32)} for _ in range(3)]
    assert fedit_error(sites, [1 / 3] * 3, [(A, B)]) == 0.0
    _, residual = svd_aggregate(sites[0], sites, [1 / 3] * 3, [(A, B)], rank=2)
    assert residual == 0.0


def test_keep_frozen_a_copies_the_global_a() -> None:
    global_weights = {A: np.ones((1, 2), np.float32), B: np.zeros((2, 1), np.float32)}
    kept = keep_frozen_a(
        {A: np.zeros((1, 2), np.float32), B: np.ones((2, 1), np.float32)}, global_weights, [(A, B)]
    )
    np.testing.assert_array_equal(kept[A], global_weights[A])
    assert kept[A] is not global_weights[A]


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (
            RoundPlan(FedAvg(), PrivacySettings(secure_aggregation=True), adapters=AdapterAggregation.SVD),
            "secure",
        ),
        (RoundPlan(FedAdam(), adapters=AdapterAggregation.SVD), "fedadam"),
        (
            RoundPlan(FedAvg(server_learning_rate=0.5), adapters=AdapterAggregation.SVD),
            "server learning rate",
        ),
        (RoundPlan(Krum(), adapters=AdapterAggregation.SVD), "krum"),
    ],
)
def test_svd_is_refused_where_it_cannot_see_or_keep_the_mean_product(plan: RoundPlan, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        plan.check(num_sites=3)


@pytest.mark.parametrize("method", [AdapterAggregation.FEDIT, AdapterAggregation.FFA])
def test_element_wise_methods_accept_robust_rules_and_secure_aggregation(method: AdapterAggregation) -> None:
    RoundPlan(Krum(), adapters=method).check(num_sites=5)
    RoundPlan(FedAdam(), PrivacySettings(secure_aggregation=True), adapters=method).check(num_sites=3)


def test_plan_keeps_its_adapter_method_through_json() -> None:
    plan = RoundPlan(FedAvg(), adapters=AdapterAggregation.SVD)
    assert RoundPlan.from_json(plan.to_json()).adapters is AdapterAggregation.SVD
    assert RoundPlan.from_json(RoundPlan(FedAvg()).to_json()).adapters is None
    with pytest.raises(ConfigurationError, match="adapters"):
        RoundPlan.from_json({**plan.to_json(), "adapters": "mean"})


def test_lora_pairs_finds_each_adapter_and_refuses_a_lone_factor() -> None:
    from federation.types import ModelSpec

    spec = ModelSpec.from_weights(_site(np.random.default_rng(0), 2, 3, 4))
    assert lora_pairs(spec) == [(A, B)]
    lone = ModelSpec.from_weights({A: np.zeros((2, 3), np.float32)})
    with pytest.raises(ConfigurationError, match="partner"):
        lora_pairs(lone)
