"""The one-off secure sum (the data agreement's summaries): the masks cancel in the sum of
every site's input and in no smaller set; the fixed point keeps counts exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federation.errors import SecureAggregationError
from federation.privacy import secagg
from federation.privacy.secure_sum import (
    FRACTION_BITS,
    MAX_ABS_VALUE,
    decode_wide,
    encode_wide,
    from_text,
    masked_input,
    masked_length,
    to_text,
    unmasked_sum,
)


def inputs(vectors: list[np.ndarray], question: str = "q") -> list[np.ndarray]:
    keys = {site: secagg.private_key_bytes() for site in range(1, len(vectors) + 1)}
    roster = {site: secagg.public_key_bytes(key) for site, key in keys.items()}
    return [
        masked_input(vector, site_id=site, private_key=keys[site], roster=roster, question=question)
        for site, vector in zip(keys, vectors, strict=True)
    ]


values = arrays(np.float64, 6, elements=st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=30, deadline=None)
@given(vectors=st.lists(values, min_size=2, max_size=5))
def test_the_masks_cancel_in_the_sum_of_every_input(vectors: list[np.ndarray]) -> None:
    total = unmasked_sum(inputs(vectors))
    bound = secagg.error_bound(len(vectors), FRACTION_BITS)
    np.testing.assert_allclose(total, np.sum(vectors, axis=0), rtol=0, atol=bound + 1e-9)


def test_without_one_input_the_sum_means_nothing() -> None:
    counts = [np.array([100.0, 5.0]), np.array([200.0, 7.0]), np.array([50.0, 1.0])]
    masked = inputs(counts)
    assert unmasked_sum(masked).tolist() == [350.0, 13.0]  # counts are exact
    partial = unmasked_sum(masked[:2])
    assert abs(partial[0] - 300.0) > 1e6  # the third site's masks remain


def test_masks_are_bound_to_the_question() -> None:
    keys = {site: secagg.private_key_bytes() for site in (1, 2)}
    roster = {site: secagg.public_key_bytes(key) for site, key in keys.items()}
    first = masked_input(np.ones(3), site_id=1, private_key=keys[1], roster=roster, question="a")
    second = masked_input(np.ones(3), site_id=2, private_key=keys[2], roster=roster, question="b")
    assert abs(unmasked_sum([first, second])[0] - 2.0) > 1e6


def test_a_roster_without_this_site_or_alone_is_refused() -> None:
    key = secagg.private_key_bytes()
    other = secagg.public_key_bytes(secagg.private_key_bytes())
    with pytest.raises(SecureAggregationError, match="own key"):
        masked_input(np.ones(2), site_id=1, private_key=key, roster={2: other}, question="q")
    with pytest.raises(SecureAggregationError, match="at least two"):
        masked_input(
            np.ones(2), site_id=1, private_key=key, roster={1: secagg.public_key_bytes(key)}, question="q"
        )


def test_the_text_form_round_trips_and_checks_its_length() -> None:
    masked = inputs([np.arange(4.0), np.arange(4.0)])[0]
    assert (from_text(to_text(masked), masked_length(4)) == masked).all()
    with pytest.raises(SecureAggregationError, match="holds 20 lanes"):
        from_text(to_text(masked), masked_length(5))
    with pytest.raises(SecureAggregationError, match="base64"):
        from_text("not base64!", masked_length(4))


def test_sums_of_squares_far_beyond_one_64_bit_word_stay_exact() -> None:
    # A platelet count (2.5e5) squared over 5,000 rows: 3e14 a site, beyond 2^63 / 2^24.
    vectors = [
        np.array([3.125e14, 5000.0, -7.5]),
        np.array([2.5e14, 4000.0, 2.25]),
        np.array([1e14, 1.0, 0.0]),
    ]
    total = unmasked_sum(inputs(vectors))
    assert total.tolist() == [6.625e14, 9001.0, -5.25]  # exact: every addend is a multiple of 2^-24


@settings(max_examples=50, deadline=None)
@given(value=st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE, allow_nan=False))
def test_the_wide_encoding_round_trips(value: float) -> None:
    decoded = decode_wide(encode_wide(np.array([value])))[0]
    assert abs(decoded - value) <= 2.0**-25 + abs(value) * 2.0**-52
