"""Histograms with small cells suppressed at the site, combined, and quantile bounds from
fine bins, against numpy on the pooled values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.analytics.counts import combine_histograms, quantile_bounds, site_histogram
from federation.errors import ConfigurationError

pytestmark = pytest.mark.analytics

EDGES = np.linspace(0.0, 100.0, 21)
site_values = st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=50, deadline=None)
@given(sites=st.lists(site_values, min_size=1, max_size=4))
def test_without_suppression_the_combined_histogram_is_the_pooled_one(sites: list[list[float]]) -> None:
    combined = combine_histograms([site_histogram(values, EDGES, min_count=1) for values in sites])
    pooled, _ = np.histogram(np.concatenate(sites), bins=EDGES)
    np.testing.assert_array_equal(combined.counts, pooled)
    assert not combined.suppressed.any()


@settings(max_examples=50, deadline=None)
@given(sites=st.lists(site_values, min_size=1, max_size=4), min_count=st.integers(2, 6))
def test_suppression_hides_only_small_cells_and_marks_them(sites: list[list[float]], min_count: int) -> None:
    combined = combine_histograms([site_histogram(values, EDGES, min_count=min_count) for values in sites])
    pooled, _ = np.histogram(np.concatenate(sites), bins=EDGES)
    assert np.all(combined.counts <= pooled)
    np.testing.assert_array_equal(combined.counts[~combined.suppressed], pooled[~combined.suppressed])


def test_the_threshold_boundary() -> None:
    at, below = [5.0] * 5, [15.0] * 4  # bin [5, 10) holds 5 rows, bin [15, 20) holds 4
    histogram = site_histogram(at + below, EDGES, min_count=5)
    assert (histogram.counts[1], histogram.suppressed[1]) == (5, False)  # exactly the minimum: kept
    assert (histogram.counts[3], histogram.suppressed[3]) == (0, True)  # one below: hidden, marked


@settings(max_examples=50, deadline=None)
@given(sites=st.lists(site_values, min_size=1, max_size=4), q=st.floats(0.0, 1.0))
def test_the_pooled_quantile_lies_in_the_bounds(sites: list[list[float]], q: float) -> None:
    combined = combine_histograms([site_histogram(values, EDGES, min_count=1) for values in sites])
    low, high = quantile_bounds(combined, q)
    pooled = float(np.quantile(np.concatenate(sites), q, method="inverted_cdf"))
    assert low <= pooled <= high
    assert high - low == pytest.approx(5.0)  # the stated bound: one bin's width


def test_histograms_of_other_bins_do_not_combine() -> None:
    with pytest.raises(ConfigurationError, match="different bin edges"):
        combine_histograms([site_histogram([1.0], EDGES), site_histogram([1.0], np.linspace(0, 100, 11))])
