"""Secure aggregation: whole rounds with dropouts, what the server sees, and the maths."""

import json
import math
import random
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from federation.errors import ConfigurationError, SecureAggregationError
from federation.privacy.secagg import (
    SHAMIR_PRIME,
    AdvertisedKeys,
    SecAggClient,
    SecAggConfig,
    UnmaskingShares,
    add_pairwise_masks,
    decode,
    encode,
    error_bound,
    lagrange_interpolate,
    max_abs_value,
    minimum_threshold,
    pack_weighted,
    pairwise_mask_seed,
    prg,
    prg_fill,
    private_key_bytes,
    public_key_bytes,
    roster_from_json,
    roster_to_json,
    shamir_reconstruct,
    shamir_split,
    unmask_sum,
    unpack_weighted_sum,
)

pytestmark = pytest.mark.privacy

FAST = settings(max_examples=40, deadline=None)
SITES = (3, 7, 11, 20, 42)  # not 1..n: site ids are the Shamir x-coordinates
CONTEXT = b"job=7;round=2"


def via_json(message: object) -> object:
    """What the control plane does to every message: JSON out, JSON back in."""
    return json.loads(json.dumps(message))


@dataclass
class Round:
    config: SecAggConfig
    clients: dict[int, SecAggClient]
    roster: dict[int, AdvertisedKeys]


def start_round(sites: Iterable[int], *, threshold: int, dimension: int) -> Round:
    config = SecAggConfig(round_context=CONTEXT, threshold=threshold, dimension=dimension)
    clients = {site: SecAggClient(site_id=site, config=config) for site in sites}
    advertised = {site: client.advertise_keys() for site, client in clients.items()}
    roster = roster_from_json(via_json(roster_to_json(advertised)))  # type: ignore[arg-type]
    return Round(config, clients, roster)


def share_all(round_: Round) -> dict[int, dict[int, bytes]]:
    """Each site's inbound bundles: ``{receiver: {sender: ciphertext}}``."""
    inbound: dict[int, dict[int, bytes]] = defaultdict(dict)
    for sender, client in round_.clients.items():
        for receiver, ciphertext in client.share_keys(round_.roster).items():
            inbound[receiver][sender] = ciphertext
    return inbound


def run_round(
    inputs: Mapping[int, NDArray[np.float64]],
    *,
    threshold: int = 3,
    dropped_after_sharing: Collection[int] = (),
    silent_in_unmasking: Collection[int] = (),
) -> NDArray[np.float64]:
    """One whole round, every message through JSON; returns the server's decoded sum."""
    dimension = len(next(iter(inputs.values())))
    round_ = start_round(inputs, threshold=threshold, dimension=dimension)
    inbound = share_all(round_)
    masked = {
        site: round_.clients[site].masked_input(inputs[site], inbound[site])
        for site in inputs
        if site not in dropped_after_sharing
    }
    answers = {
        site: UnmaskingShares.from_json(
            via_json(  # type: ignore[arg-type]
                round_.clients[site]
                .unmasking_shares(
                    survivors=list(masked), dropped=dropped_after_sharing, inbound=inbound[site]
                )
                .to_json()
            )
        )
        for site in masked
        if site not in silent_in_unmasking
    }
    return unmask_sum(round_.config, round_.roster, masked, answers, dropped_after_sharing)


def site_updates(dimension: int, seed: int = 0) -> tuple[dict[int, NDArray[np.float64]], dict[int, int]]:
    rng = np.random.default_rng(seed)
    updates = {site: rng.normal(0.0, 0.05, dimension) for site in SITES}
    counts = {site: int(rng.integers(50, 5000)) for site in SITES}
    return updates, counts


# ------------------------------------------------------------------ whole rounds


@pytest.mark.parametrize(
    ("dropped", "silent"),
    [((), ()), ((11,), ()), ((7, 42), ()), ((), (20,)), ((3,), (42,))],
    ids=["no dropout", "1 dropped after sharing", "2 dropped after sharing", "1 silent", "1 + 1"],
)
def test_the_unmasked_sum_is_plaintext_fedavg_within_the_bound(
    dropped: tuple[int, ...], silent: tuple[int, ...]
) -> None:
    updates, counts = site_updates(1000)
    inputs = {site: pack_weighted(updates[site], counts[site]) for site in SITES}
    total = run_round(inputs, dropped_after_sharing=dropped, silent_in_unmasking=silent)

    survivors = [site for site in SITES if site not in dropped]  # silent sites still count
    exact = np.array([math.fsum(column) for column in zip(*(inputs[s] for s in survivors), strict=True)])
    bound = error_bound(len(survivors))
    assert np.all(np.abs(total - exact) <= bound + np.abs(exact) * 2.0**-53)

    vector_sum, weight_sum = unpack_weighted_sum(total)
    assert weight_sum == sum(counts[s] for s in survivors)  # integers: exact
    plaintext = np.average([updates[s] for s in survivors], axis=0, weights=[counts[s] for s in survivors])
    np.testing.assert_allclose(vector_sum / weight_sum, plaintext, rtol=0, atol=bound / weight_sum + 1e-15)


def test_fewer_answers_than_the_threshold_fail_the_round_cleanly() -> None:
    updates, counts = site_updates(50)
    inputs = {site: pack_weighted(updates[site], counts[site]) for site in SITES}
    with pytest.raises(SecureAggregationError, match=r"only 2 sites answered.*threshold is 3"):
        run_round(inputs, dropped_after_sharing=(3, 7), silent_in_unmasking=(11,))


def test_sites_refuse_to_unmask_when_fewer_than_the_threshold_survived() -> None:
    updates, counts = site_updates(50)
    inputs = {site: pack_weighted(updates[site], counts[site]) for site in SITES}
    with pytest.raises(SecureAggregationError, match="only 2 survivors; the threshold is 3"):
        run_round(inputs, dropped_after_sharing=(3, 7, 11))


# ------------------------------------------------------------- what the server sees


def test_a_stored_masked_input_is_uncorrelated_with_its_site_update() -> None:
    dimension = 20_000
    ramp = np.linspace(-50.0, 50.0, dimension)  # a strongly structured update
    inputs = {site: ramp * (index + 1) for index, site in enumerate(SITES)}
    round_ = start_round(SITES, threshold=3, dimension=dimension)
    inbound = share_all(round_)
    limit = 4.0 / math.sqrt(dimension)
    for site in SITES:
        masked = round_.clients[site].masked_input(inputs[site], inbound[site])
        encoded = encode(inputs[site]).view(np.int64).astype(np.float64)
        correlation = np.corrcoef(encoded, masked.astype(np.float64))[0, 1]
        assert abs(correlation) < limit
        top_bits = (masked >> np.uint64(63)).astype(np.float64)
        assert abs(top_bits.mean() - 0.5) < 2 * limit  # the bit's std is 0.5 / sqrt(d)
        assert abs(masked.astype(np.float64).mean() / 2.0**64 - 0.5) < 2 * limit


# ------------------------------------------------------------------ Shamir sharing


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    secret = draw(st.binary(min_size=32, max_size=32))
    ids = draw(st.lists(st.integers(1, 2**63 - 1), min_size=2, max_size=8, unique=True))
    threshold = draw(st.integers(1, len(ids)))
    return secret, threshold, ids


@FAST
@given(sharings(), st.randoms(use_true_random=False))
def test_any_threshold_shares_rebuild_the_secret(
    sharing: tuple[bytes, int, list[int]], chooser: random.Random
) -> None:
    secret, threshold, ids = sharing
    shares = shamir_split(secret, threshold=threshold, share_ids=ids)
    chosen = chooser.sample(ids, chooser.randint(threshold, len(ids)))
    assert shamir_reconstruct({x: shares[x] for x in chosen}, threshold=threshold) == secret


@FAST
@given(sharings(), st.binary(min_size=32, max_size=32))
def test_fewer_than_threshold_shares_are_consistent_with_every_secret(
    sharing: tuple[bytes, int, list[int]], other_secret: bytes
) -> None:
    secret, threshold, ids = sharing
    if threshold < 2:
        return
    shares = shamir_split(secret, threshold=threshold, share_ids=ids)
    known = {x: shares[x] for x in ids[: threshold - 1]}
    # Through the t-1 known points and (0, other_secret) passes exactly one polynomial of
    # degree t-1: its value at the last id is a share that makes other_secret the answer.
    forged_points = known | {0: int.from_bytes(other_secret, "big")}
    forged_share = lagrange_interpolate(forged_points, ids[-1])
    rebuilt = shamir_reconstruct(known | {ids[-1]: forged_share}, threshold=threshold)
    assert rebuilt == other_secret
    with pytest.raises(SecureAggregationError, match="cannot rebuild"):
        shamir_reconstruct(known, threshold=threshold)


def test_shares_of_different_sharings_are_refused_rather_than_returning_garbage() -> None:
    # Mixed shares interpolate to a uniform field element, which is a 32-byte value with
    # probability 2^256 / (2^521 - 1): the check catches them all but never in practice.
    first = shamir_split(bytes(range(32)), threshold=2, share_ids=[1, 2, 3])
    second = shamir_split(bytes(range(32)), threshold=2, share_ids=[1, 2, 3])
    with pytest.raises(SecureAggregationError, match="inconsistent"):
        shamir_reconstruct({1: first[1], 2: second[2]}, threshold=2)
    assert 0 <= first[1] < SHAMIR_PRIME


# --------------------------------------------------------------- fixed-point maths


@st.composite
def encodable(draw: st.DrawFn) -> tuple[NDArray[np.float64], int]:
    fraction_bits = draw(st.integers(0, 62))
    limit = max_abs_value(fraction_bits)
    values = draw(
        hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-limit, limit, allow_subnormal=False))
    )
    return values, fraction_bits


@FAST
@given(encodable())
def test_encode_then_decode_is_within_half_a_step(case: tuple[NDArray[np.float64], int]) -> None:
    values, fraction_bits = case
    decoded = decode(encode(values, fraction_bits), fraction_bits)
    assert np.all(np.abs(decoded - values) <= 2.0 ** -(fraction_bits + 1))


@FAST
@given(st.lists(hnp.arrays(np.float64, 6, elements=st.floats(-1e6, 1e6)), min_size=1, max_size=10))
def test_a_ring_sum_decodes_within_the_error_bound(vectors: list[NDArray[np.float64]]) -> None:
    total = np.zeros(6, dtype=np.uint64)
    for vector in vectors:
        total += encode(vector, num_summands=len(vectors))
    exact = np.array([math.fsum(column) for column in zip(*vectors, strict=True)])
    error = np.abs(decode(total) - exact)
    assert np.all(error <= error_bound(len(vectors)) + np.abs(exact) * 2.0**-53)


def test_values_that_could_wrap_the_sum_are_refused() -> None:
    limit = max_abs_value(24, num_summands=5)
    encode(np.array([limit, -limit]), 24, num_summands=5)
    with pytest.raises(SecureAggregationError, match="the sum could wrap"):
        encode(np.array([limit * 1.0001]), 24, num_summands=5)
    with pytest.raises(SecureAggregationError, match="NaN"):
        encode(np.array([0.0, np.nan]))


# ----------------------------------------------------------------- pairwise masks


@FAST
@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=6, unique=True), st.data())
def test_pairwise_masks_cancel_in_the_sum(sites: list[int], data: st.DataObject) -> None:
    pairs = [(site, peer) for index, site in enumerate(sites) for peer in sites[index + 1 :]]
    drawn = data.draw(
        st.lists(st.binary(min_size=32, max_size=32), min_size=len(pairs), max_size=len(pairs), unique=True)
    )
    seeds = {}
    for (site, peer), seed in zip(pairs, drawn, strict=True):
        seeds[site, peer] = seeds[peer, site] = seed
    total = np.zeros(17, dtype=np.uint64)
    for site in sites:
        mask = np.zeros(17, dtype=np.uint64)
        add_pairwise_masks(mask, site, {peer: seeds[site, peer] for peer in sites if peer != site})
        assert np.any(mask != 0)
        total += mask
    assert np.all(total == 0)


def test_both_sites_of_a_pair_derive_the_same_seed_and_only_for_this_round() -> None:
    u_key, v_key = private_key_bytes(), private_key_bytes()
    u_seed = pairwise_mask_seed(u_key, public_key_bytes(v_key), round_context=CONTEXT, site_id=3, peer_id=7)
    v_seed = pairwise_mask_seed(v_key, public_key_bytes(u_key), round_context=CONTEXT, site_id=7, peer_id=3)
    assert u_seed == v_seed
    other_round = pairwise_mask_seed(
        u_key, public_key_bytes(v_key), round_context=b"r3", site_id=3, peer_id=7
    )
    assert other_round != u_seed
    assert not np.array_equal(prg(u_seed, 8), prg(other_round, 8))


def test_the_prg_fills_long_vectors_with_uniform_bits_chunk_by_chunk() -> None:
    # Longer than one internal chunk, so the chunked fill is checked against the one-shot prg.
    # Its speed is a figure of bench/secagg_bench.py, not a test.
    values = np.zeros(3_000_000, dtype=np.uint64)
    prg_fill(bytes(range(32)), values)
    assert abs(float((values >> np.uint64(63)).mean()) - 0.5) < 0.01
    np.testing.assert_array_equal(values[-5:], prg(bytes(range(32)), 3_000_000)[-5:])
    np.testing.assert_array_equal(values[:5], prg(bytes(range(32)), 5))


# ----------------------------------------------- never both shares of the same site


def _prepared_client() -> tuple[dict[str, object], dict[int, bytes]]:
    """Site 1 of a 4-site round, after its masked input: its saved state and its inbound."""
    round_ = start_round((1, 2, 3, 4), threshold=3, dimension=3)
    inbound = share_all(round_)
    for site, client in round_.clients.items():
        client.masked_input(np.array([1.0, 2.0, 3.0]), inbound[site])
    return round_.clients[1].to_json(), inbound[1]


PREPARED_STATE, PREPARED_INBOUND = _prepared_client()
requests = st.tuples(st.sets(st.sampled_from((1, 2, 3, 4))), st.sets(st.sampled_from((2, 3, 4))))


@FAST
@given(st.lists(requests, min_size=1, max_size=3))
def test_a_site_never_reveals_both_shares_of_one_site(
    sequence: list[tuple[set[int], set[int]]],
) -> None:
    revealed: dict[int, set[str]] = defaultdict(set)
    state = PREPARED_STATE
    for survivors, dropped in sequence:
        client = SecAggClient.from_json(via_json(state))  # type: ignore[arg-type]  # a restart between
        try:
            answer = client.unmasking_shares(survivors=survivors, dropped=dropped, inbound=PREPARED_INBOUND)
        except SecureAggregationError:
            continue
        finally:
            state = client.to_json()
        assert not survivors & dropped
        for site in answer.self_mask_shares:
            revealed[site].add("self mask")
        for site in answer.mask_key_shares:
            revealed[site].add("mask key")
        assert all(len(kinds) == 1 for kinds in revealed.values())


def test_a_request_for_both_shares_of_a_site_is_refused() -> None:
    client = SecAggClient.from_json(PREPARED_STATE)
    with pytest.raises(SecureAggregationError, match="refusing: sites \\[2\\]"):
        client.unmasking_shares(survivors=[1, 2, 3], dropped=[2], inbound=PREPARED_INBOUND)
    client.unmasking_shares(survivors=[1, 3, 4], dropped=[2], inbound=PREPARED_INBOUND)
    with pytest.raises(SecureAggregationError, match="already revealed the other share of sites \\[2\\]"):
        client.unmasking_shares(survivors=[1, 2, 3, 4], dropped=[], inbound=PREPARED_INBOUND)


# ------------------------------------------------------------------------ bad input


def test_bad_input_gets_a_clear_error() -> None:
    round_ = start_round((1, 2, 3), threshold=2, dimension=4)
    inbound = share_all(round_)
    client = round_.clients[1]
    with pytest.raises(SecureAggregationError, match=r"shape \(5,\), expected \(4,\)"):
        client.masked_input(np.zeros(5), inbound[1])
    tampered = dict(inbound[1])
    tampered[2] = tampered[2][:-1] + bytes([tampered[2][-1] ^ 1])
    with pytest.raises(SecureAggregationError, match="from site 2 does not decrypt"):
        client.masked_input(np.zeros(4), tampered)
    swapped = {2: inbound[3][2], 3: inbound[1][3]}  # site 2's bundle for site 3, not for 1
    with pytest.raises(SecureAggregationError, match="from site 2 does not decrypt"):
        client.masked_input(np.zeros(4), swapped)


def test_a_roster_below_the_threshold_or_a_majority_is_refused() -> None:
    round_ = start_round((1, 2, 3, 4, 5), threshold=4, dimension=2)
    small = {site: round_.roster[site] for site in (1, 2, 3)}
    with pytest.raises(SecureAggregationError, match="3 sites, fewer than the threshold 4"):
        round_.clients[1].share_keys(small)
    weak = start_round((1, 2, 3, 4, 5, 6), threshold=3, dimension=2)
    with pytest.raises(SecureAggregationError, match="threshold 3 is unsafe for 6 sites"):
        weak.clients[1].share_keys(weak.roster)
    assert minimum_threshold(6) == 4


def test_the_server_refuses_a_masked_input_of_the_wrong_shape() -> None:
    round_ = start_round((1, 2, 3), threshold=2, dimension=4)
    masked = {1: np.zeros(4, np.uint64), 2: np.zeros(3, np.uint64)}
    with pytest.raises(SecureAggregationError, match="site 2 has shape"):
        unmask_sum(round_.config, round_.roster, masked, {}, ())


def test_a_config_with_bad_values_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="round_context"):
        SecAggConfig(round_context=b"", threshold=2, dimension=3)
    with pytest.raises(ConfigurationError, match="threshold"):
        SecAggConfig(round_context=CONTEXT, threshold=1, dimension=3)
    with pytest.raises(ConfigurationError, match="fraction_bits"):
        SecAggConfig(round_context=CONTEXT, threshold=2, dimension=3, fraction_bits=63)


# ---------------------------------------------------------------- retries, restarts


def test_a_restarted_site_resumes_and_a_repeat_masks_the_same_input_only() -> None:
    round_ = start_round((1, 2, 3), threshold=2, dimension=3)
    first_bundles = round_.clients[1].share_keys(round_.roster)
    inbound = share_all(round_)
    restored = SecAggClient.from_json(via_json(round_.clients[1].to_json()))  # type: ignore[arg-type]
    assert restored.advertise_keys() == round_.clients[1].advertise_keys()
    assert first_bundles.keys() == restored.share_keys(round_.roster).keys()

    vector = np.array([0.5, -1.5, 2.0])
    masked = restored.masked_input(vector, inbound[1])
    np.testing.assert_array_equal(restored.masked_input(vector, inbound[1]), masked)
    with pytest.raises(SecureAggregationError, match="already masked a different input"):
        restored.masked_input(vector + 1.0, inbound[1])
