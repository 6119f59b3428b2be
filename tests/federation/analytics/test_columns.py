"""Column statistics, correlations and cross-tables from per-site sums, against pandas on the
pooled rows (random splits, missing values included)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.analytics.columns import (
    column_sums,
    combine_columns,
    correlation,
    cross_products,
    cross_table,
)

pytestmark = pytest.mark.analytics

cell = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan")))
site_rows = st.lists(st.tuples(cell, cell, cell), min_size=1, max_size=30)
COLUMNS = ("age", "bmi", "glucose")


def frame(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=float)


@settings(max_examples=50, deadline=None)
@given(sites=st.lists(site_rows, min_size=1, max_size=4))
def test_counts_means_variances_and_missing_values_are_the_pooled_ones(
    sites: list[list[tuple[float, ...]]],
) -> None:
    reports = [{name: column_sums(frame(rows)[name]) for name in COLUMNS} for rows in sites]
    combined = combine_columns(reports)
    pooled = pd.concat([frame(rows) for rows in sites], ignore_index=True)
    for name in COLUMNS:
        column = pooled[name]
        assert (combined[name].present, combined[name].missing) == (column.count(), column.isna().sum())
        if column.count():
            assert combined[name].mean == pytest.approx(column.mean(), rel=1e-9, abs=1e-9)
        if column.count() > 1:
            assert combined[name].variance == pytest.approx(column.var(), rel=1e-6, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(sites=st.lists(site_rows, min_size=1, max_size=4))
def test_correlations_are_the_pooled_complete_cases(sites: list[list[tuple[float, ...]]]) -> None:
    pooled = pd.concat([frame(rows) for rows in sites], ignore_index=True).dropna()
    if len(pooled) < 3 or (pooled.std() < 1e-3).any():
        return  # too few rows, or a constant column: no correlation to compare
    total = cross_products(frame(sites[0]).to_numpy())
    for rows in sites[1:]:
        total = total + cross_products(frame(rows).to_numpy())
    np.testing.assert_allclose(correlation(total), pooled.corr().to_numpy(), atol=1e-6)


def test_cross_tables_add_up_and_hide_small_cells() -> None:
    sites = [
        (["icu"] * 6 + ["ward"] * 2, ["yes"] * 6 + ["no"] * 2),
        (["icu"] * 3 + ["ward"] * 7, ["no"] * 3 + ["no"] * 7),
    ]
    tables = [cross_table(v, c, ["icu", "ward"], ["no", "yes"], min_count=5) for v, c in sites]
    counts = sum(t[0] for t in tables)
    suppressed = np.any([t[1] for t in tables], axis=0)
    values = [value for site_values, _ in sites for value in site_values]
    classes = [label for _, site_classes in sites for label in site_classes]
    pooled = pd.crosstab(pd.Series(values), pd.Series(classes)).to_numpy()
    # icu/yes: 6 kept; ward/no: site 1's 2 hidden, site 2's 7 kept; icu/no: site 2's 3 hidden.
    assert counts.tolist() == [[0, 6], [7, 0]]
    assert suppressed.tolist() == [[True, False], [True, False]]
    np.testing.assert_array_equal(counts[~suppressed], pooled[~suppressed])
