"""Kaplan–Meier and the log-rank test from per-site risk tables, against lifelines on the
pooled rows: random splits (property tests) and the NCCTG lung cancer data split by
institution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_lung
from lifelines.statistics import multivariate_logrank_test

from federation.analytics.survival import combine_tables, kaplan_meier, log_rank, risk_table
from federation.errors import ConfigurationError

pytestmark = pytest.mark.analytics

subjects = st.lists(st.tuples(st.integers(0, 40).map(float), st.booleans()), min_size=1, max_size=25)


def lifelines_curve(durations: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    fitter = KaplanMeierFitter().fit(durations, observed)
    return fitter.survival_function_.join(fitter.confidence_interval_)


@settings(max_examples=40, deadline=None)
@given(sites=st.lists(subjects, min_size=1, max_size=4))
def test_the_combined_curve_is_the_pooled_curve(sites: list[list[tuple[float, bool]]]) -> None:
    tables = [risk_table([t for t, _ in rows], [e for _, e in rows]) for rows in sites]
    combined = kaplan_meier(combine_tables(tables))
    pooled = [row for rows in sites for row in rows]
    durations = np.array([t for t, _ in pooled])
    observed = np.array([e for _, e in pooled])
    reference = lifelines_curve(durations, observed)
    # lifelines adds time 0; both list every distinct time.
    reference = reference.loc[[t for t in reference.index if t in set(combined.times)]]
    np.testing.assert_array_equal(combined.times, np.unique(durations))
    np.testing.assert_allclose(combined.survival, reference["KM_estimate"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(combined.lower, reference["KM_estimate_lower_0.95"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(combined.upper, reference["KM_estimate_upper_0.95"].to_numpy(), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(sites=st.lists(subjects, min_size=2, max_size=4))
def test_the_log_rank_test_from_tables_is_lifelines_on_the_pooled_rows(
    sites: list[list[tuple[float, bool]]],
) -> None:
    durations = np.array([t for rows in sites for t, _ in rows])
    observed = np.array([e for rows in sites for _, e in rows])
    groups = np.concatenate([[i] * len(rows) for i, rows in enumerate(sites)])
    reference = multivariate_logrank_test(durations, groups, observed)
    if not np.isfinite(reference.test_statistic):
        return  # no event anywhere: nothing to test
    ours = log_rank([risk_table([t for t, _ in rows], [e for _, e in rows]) for rows in sites])
    assert ours.degrees_of_freedom == len(sites) - 1
    assert ours.statistic == pytest.approx(reference.test_statistic, rel=1e-9, abs=1e-9)
    assert ours.p_value == pytest.approx(reference.p_value, rel=1e-9, abs=1e-12)


def test_the_lung_cancer_data_across_three_institutions() -> None:
    lung = load_lung().dropna(subset=["inst"])
    lung = lung[lung["inst"].isin([1.0, 12.0, 13.0])]
    event = (lung["status"] == 1).to_numpy()  # lifelines codes 1 dead, 0 censored
    assert event.sum() > 50
    tables = [
        risk_table(site["time"].to_numpy(), (site["status"] == 1).to_numpy())
        for _, site in lung.groupby("inst")
    ]
    combined = kaplan_meier(combine_tables(tables))
    reference = KaplanMeierFitter().fit(lung["time"], event).survival_function_["KM_estimate"]
    np.testing.assert_allclose(combined.survival, reference.loc[combined.times].to_numpy(), rtol=1e-12)
    ours = log_rank(tables)
    theirs = multivariate_logrank_test(lung["time"], lung["inst"], event)
    assert ours.statistic == pytest.approx(theirs.test_statistic, rel=1e-9)


def test_a_malformed_table_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="one length"):
        risk_table([1.0, 2.0], [1])
    with pytest.raises(ConfigurationError, match="non-negative"):
        risk_table([-1.0], [1])
    with pytest.raises(ConfigurationError, match="at least two sites"):
        log_rank([risk_table([1.0], [1])])
