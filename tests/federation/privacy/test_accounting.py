"""Epsilon accounting: the known value, agreement with dp-accounting and Opacus, the
bisection, and the ledger state that survives restarts as JSON."""

import json
import math
from collections.abc import Callable

import pytest
from dp_accounting import dp_event, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from federation.errors import ConfigurationError
from federation.privacy.accounting import (
    MIN_NOISE_MULTIPLIER,
    NOISE_TOLERANCE,
    PrivacyEvent,
    PrivacyLedgerState,
    client_level_epsilon,
    dp_sgd_schedule,
    events_epsilon,
    noise_for_epsilon,
    sample_level_epsilon,
    sample_level_noise_for_job,
)

pytestmark = pytest.mark.privacy

DELTA = 1e-5
#: Opacus tries other Renyi orders and drops those whose series does not converge, so its
#: epsilon for subsampled Gaussians differs from dp-accounting's, by at most 0.11 % below.
OPACUS_RTOL = 2e-3


def direct_epsilon(events: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    """dp-accounting's RDP accountant used by hand, as its documentation shows."""
    accountant = rdp.RdpAccountant()
    for noise, rate, steps in events:
        gaussian = dp_event.GaussianDpEvent(noise)
        event = gaussian if rate == 1.0 else dp_event.PoissonSampledDpEvent(rate, gaussian)
        accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def opacus_epsilon(events: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    accountant = RDPAccountant()
    accountant.history = list(events)
    return float(accountant.get_epsilon(delta))


def test_the_known_value_of_fifty_gaussian_rounds() -> None:
    assert client_level_epsilon(noise_multiplier=1.0, rounds=50, delta=DELTA) == pytest.approx(
        57.301693, abs=1e-6
    )
    ledger = PrivacyLedgerState()
    for _ in range(50):
        ledger = ledger.spend(PrivacyEvent(1.0, 1.0, 1))
    assert ledger.epsilon(DELTA) == pytest.approx(57.301693, abs=1e-6)
    assert opacus_epsilon([(1.0, 1.0, 50)]) == pytest.approx(57.301693, rel=1e-6)


@pytest.mark.parametrize(
    ("noise", "rate", "steps"),
    [(1.0, 1.0, 10), (4.7, 1.0, 10), (1.1, 0.2, 50), (2.4, 0.0667, 150), (0.9, 0.01, 1000)],
)
def test_our_epsilon_is_dp_accountings_and_close_to_opacuss(noise: float, rate: float, steps: int) -> None:
    ours = (
        client_level_epsilon(noise_multiplier=noise, rounds=steps, delta=DELTA)
        if rate == 1.0
        else sample_level_epsilon(noise_multiplier=noise, sampling_rate=rate, steps=steps, delta=DELTA)
    )
    # The same accountant (dp-accounting's RDP) on the same events: the same number.
    assert ours == pytest.approx(direct_epsilon([(noise, rate, steps)]), rel=1e-12)
    # Opacus: the same for the plain Gaussian, within OPACUS_RTOL for the subsampled one.
    opacus_rtol = 1e-12 if rate == 1.0 else OPACUS_RTOL
    assert ours == pytest.approx(opacus_epsilon([(noise, rate, steps)]), rel=opacus_rtol)


def test_a_ledger_of_mixed_events_matches_one_direct_composition() -> None:
    events = [(1.2, 0.2, 25), (1.2, 0.2, 25), (2.0, 0.1, 40), (5.0, 1.0, 3)]
    ledger = PrivacyLedgerState()
    for event in events:
        ledger = ledger.spend(PrivacyEvent(*event))
    assert len(ledger.events) == 3  # the first two merged
    assert ledger.total_steps == 93
    assert ledger.epsilon(DELTA) == pytest.approx(direct_epsilon(events), rel=1e-12)
    assert ledger.epsilon(DELTA) == pytest.approx(opacus_epsilon(events), rel=OPACUS_RTOL)


def test_a_restarted_ledger_spends_what_an_uninterrupted_one_does() -> None:
    uninterrupted = PrivacyLedgerState()
    restarted = PrivacyLedgerState()
    for round_number in range(4):
        event = PrivacyEvent(1.3, 0.2, 5)
        uninterrupted = uninterrupted.spend(event)
        # Written to disk and read back after every round, as the agent does.
        restarted = PrivacyLedgerState.from_json(json.loads(json.dumps(restarted.spend(event).to_json())))
        assert restarted.epsilon(DELTA) == uninterrupted.epsilon(DELTA), round_number
    assert restarted == uninterrupted


def test_nothing_spent_is_zero_epsilon() -> None:
    assert PrivacyLedgerState().epsilon(DELTA) == 0.0
    assert events_epsilon([], delta=DELTA) == 0.0


noise_values = st.floats(min_value=0.3, max_value=50.0, allow_nan=False)
round_counts = st.integers(min_value=1, max_value=1000)


@settings(deadline=None, max_examples=60)
@given(noise=noise_values, factor=st.floats(min_value=1.01, max_value=3.0), rounds=round_counts)
def test_epsilon_decreases_as_the_noise_grows(noise: float, factor: float, rounds: int) -> None:
    less_noise = client_level_epsilon(noise_multiplier=noise, rounds=rounds, delta=DELTA)
    more_noise = client_level_epsilon(noise_multiplier=noise * factor, rounds=rounds, delta=DELTA)
    assert more_noise < less_noise


@settings(deadline=None, max_examples=60)
@given(noise=noise_values, rounds=round_counts, more=st.integers(min_value=1, max_value=1000))
def test_epsilon_increases_with_the_rounds(noise: float, rounds: int, more: int) -> None:
    fewer = client_level_epsilon(noise_multiplier=noise, rounds=rounds, delta=DELTA)
    assert client_level_epsilon(noise_multiplier=noise, rounds=rounds + more, delta=DELTA) > fewer


@settings(deadline=None, max_examples=25)
@given(target=st.floats(min_value=0.1, max_value=50.0), rounds=st.integers(min_value=1, max_value=500))
def test_noise_for_epsilon_inverts_epsilon_within_its_tolerance(target: float, rounds: int) -> None:
    noise = noise_for_epsilon(target_epsilon=target, delta=DELTA, steps=rounds)

    def epsilon(z: float) -> float:
        return client_level_epsilon(noise_multiplier=z, rounds=rounds, delta=DELTA)

    assert epsilon(noise) <= target
    if noise > MIN_NOISE_MULTIPLIER:
        assert epsilon(noise * (1 - NOISE_TOLERANCE)) > target


def test_noise_for_a_dp_sgd_job_meets_its_budget_and_no_less_noise_does() -> None:
    noise = sample_level_noise_for_job(
        target_epsilon=3.0, delta=DELTA, rounds=10, epochs=1, num_examples=152, batch_size=32
    )
    schedule = dp_sgd_schedule(num_examples=152, batch_size=32)
    assert schedule == (0.2, 5)

    def epsilon(z: float) -> float:
        return sample_level_epsilon(noise_multiplier=z, sampling_rate=0.2, steps=50, delta=DELTA)

    assert epsilon(noise) <= 3.0 < epsilon(noise * (1 - NOISE_TOLERANCE))
    assert opacus_epsilon([(noise, 0.2, 50)]) == pytest.approx(epsilon(noise), rel=OPACUS_RTOL)


events = st.builds(
    PrivacyEvent,
    noise_multiplier=st.floats(min_value=0.1, max_value=100.0),
    sampling_rate=st.floats(min_value=1e-4, max_value=1.0),
    steps=st.integers(min_value=1, max_value=10**6),
)


@given(st.lists(events, max_size=20))
def test_a_ledger_survives_a_json_round_trip(spent: list[PrivacyEvent]) -> None:
    ledger = PrivacyLedgerState()
    for event in spent:
        ledger = ledger.spend(event)
    text = json.dumps(ledger.to_json())
    assert PrivacyLedgerState.from_json(json.loads(text)) == ledger
    assert ledger.total_steps == sum(event.steps for event in spent)


@pytest.mark.parametrize(
    "document",
    [
        {"accountant": "pld", "version": 1, "events": []},
        {"accountant": "rdp", "version": 2, "events": []},
        {"accountant": "rdp", "version": 1, "events": {}},
        {"accountant": "rdp", "version": 1, "events": [{"noise_multiplier": 1.0, "sampling_rate": 1.0}]},
        {
            "accountant": "rdp",
            "version": 1,
            "events": [{"noise_multiplier": 1.0, "sampling_rate": 1.0, "steps": 1.5}],
        },
        {
            "accountant": "rdp",
            "version": 1,
            "events": [{"noise_multiplier": -1, "sampling_rate": 1.0, "steps": 1}],
        },
        {
            "accountant": "rdp",
            "version": 1,
            "events": [{"noise_multiplier": 1, "sampling_rate": 1.5, "steps": 1}],
        },
    ],
)
def test_a_malformed_ledger_is_refused(document: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        PrivacyLedgerState.from_json(document)


@pytest.mark.parametrize(
    "call",
    [
        lambda: client_level_epsilon(noise_multiplier=0.0, rounds=1, delta=DELTA),
        lambda: client_level_epsilon(noise_multiplier=1.0, rounds=0, delta=DELTA),
        lambda: client_level_epsilon(noise_multiplier=1.0, rounds=1, delta=1.0),
        lambda: sample_level_epsilon(noise_multiplier=1.0, sampling_rate=0.0, steps=1, delta=DELTA),
        lambda: noise_for_epsilon(target_epsilon=0.0, delta=DELTA, steps=1),
        lambda: noise_for_epsilon(target_epsilon=1.0, delta=DELTA, steps=1, tolerance=0.0),
        lambda: noise_for_epsilon(target_epsilon=1e-6, delta=DELTA, steps=10**6),
        lambda: dp_sgd_schedule(num_examples=0, batch_size=32),
    ],
)
def test_bad_arguments_raise_configuration_errors(call: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        call()


def test_a_huge_budget_needs_only_the_smallest_noise() -> None:
    assert noise_for_epsilon(target_epsilon=1e9, delta=DELTA, steps=1) == MIN_NOISE_MULTIPLIER
    assert math.isfinite(client_level_epsilon(noise_multiplier=MIN_NOISE_MULTIPLIER, rounds=1, delta=DELTA))
