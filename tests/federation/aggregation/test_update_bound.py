"""The update norm bound: parsing, the norm against numpy's, clipping onto the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federation.aggregation.update_bound import BoundAction, UpdateNormBound, weights_norm
from federation.errors import ConfigurationError

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
tensors = arrays(np.float32, st.integers(1, 20), elements=finite32)


@settings(max_examples=100, deadline=None)
@given(first=tensors, second=tensors)
def test_the_norm_is_numpys_norm_of_all_values(first: np.ndarray, second: np.ndarray) -> None:
    weights = {"a": first, "b": second}
    reference = np.linalg.norm(np.concatenate([first, second]).astype(np.float64))
    assert weights_norm(weights) == pytest.approx(reference, rel=1e-12, abs=1e-300)


def test_the_norm_of_the_largest_float32_values_is_finite_and_right() -> None:
    huge = np.full(1000, np.finfo(np.float32).max, dtype=np.float32)
    assert weights_norm({"w": huge}) == pytest.approx(float(np.finfo(np.float32).max) * math.sqrt(1000))
    as_float64 = {"w": np.full(1000, 1e300)}  # squares overflow float64 unless scaled
    assert weights_norm(as_float64) == pytest.approx(1e300 * math.sqrt(1000))


@settings(max_examples=100, deadline=None)
@given(base=tensors, change=tensors, ratio=st.floats(0.01, 100))
def test_clipping_lands_on_the_bound_in_the_same_direction(
    base: np.ndarray, change: np.ndarray, ratio: float
) -> None:
    size = min(base.size, change.size)
    global_weights = {"w": base[:size]}
    update = {"w": (base[:size].astype(np.float64) + change[:size]).astype(np.float32)}
    bound = UpdateNormBound(max_ratio=ratio, action=BoundAction.CLIP)
    limit = ratio * max(float(np.linalg.norm(base[:size].astype(np.float64))), 1.0)
    check = bound.apply(update, global_weights)
    sent = update["w"].astype(np.float64) - base[:size]
    assert check.change_norm == pytest.approx(np.linalg.norm(sent), rel=1e-9, abs=1e-9)
    assert check.limit == pytest.approx(limit)
    kept = check.weights["w"].astype(np.float64) - base[:size]
    if np.linalg.norm(sent) <= limit:
        assert not check.clipped
        np.testing.assert_array_equal(check.weights["w"], update["w"])
    else:
        assert check.clipped
        # float32 storage of the result: relative error of about 1e-7 of the model's scale
        scale = float(np.max(np.abs(base[:size]))) + limit
        assert np.linalg.norm(kept) == pytest.approx(limit, rel=1e-5, abs=1e-5 * scale * math.sqrt(size))
        cosine = float(kept @ sent) / (np.linalg.norm(kept) * np.linalg.norm(sent))
        assert cosine > 1 - 1e-4 or np.linalg.norm(kept) < 1e-3 * scale


def test_refuse_never_changes_the_update() -> None:
    bound = UpdateNormBound(max_ratio=1.0, action=BoundAction.REFUSE)
    global_weights = {"w": np.zeros(4, dtype=np.float32)}
    update = {"w": np.full(4, 3.4e38, dtype=np.float32)}
    check = bound.apply(update, global_weights)
    assert not check.within
    assert not check.clipped
    assert check.weights["w"] is update["w"]
    assert check.limit == 1.0  # the floor: a model at zero may still move by max_ratio


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_ratio": 0}, "above 0"),
        ({"max_ratio": -1}, "above 0"),
        ({"max_ratio": "10"}, "above 0"),
        ({"max_ratio": True}, "above 0"),
        ({"action": "clip"}, "needs max_ratio"),
        ({"max_ratio": 10, "action": "ignore"}, "refuse or clip"),
        ({"max_ratio": 10, "norm": 2}, "unknown"),
        ([10], "must be an object"),
    ],
)
def test_malformed_bounds_are_refused_with_a_reason(data: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        UpdateNormBound.from_json(data)


def test_the_bound_round_trips_through_json_and_defaults_to_refuse() -> None:
    bound = UpdateNormBound.from_json({"max_ratio": 5})
    assert bound is not None
    assert bound.action is BoundAction.REFUSE
    assert UpdateNormBound.from_json(bound.to_json()) == bound
    assert UpdateNormBound.from_json(None) is None
