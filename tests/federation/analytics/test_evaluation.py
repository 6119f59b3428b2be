"""Cross-site evaluation from per-site counts, against scikit-learn on the pooled rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
)

from federation.analytics.evaluation import (
    combine_evaluations,
    combined_metrics,
    multiclass_metrics,
    reliability_curve,
    site_evaluation,
    site_multiclass_evaluation,
)

pytestmark = pytest.mark.analytics

site_rows = st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(sites=st.lists(site_rows, min_size=1, max_size=4))
def test_combined_metrics_are_the_pooled_ones(sites: list[list[tuple[int, float]]]) -> None:
    total = combine_evaluations(
        [site_evaluation([y for y, _ in rows], [p for _, p in rows]) for rows in sites]
    )
    ours = combined_metrics(total)
    y = np.array([label for rows in sites for label, _ in rows])
    p = np.array([score for rows in sites for _, score in rows])
    predicted = (p >= 0.5).astype(int)
    assert ours.accuracy == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert ours.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    if len(set(y)) == 2:
        assert ours.sensitivity == pytest.approx(recall_score(y, predicted), abs=1e-12)
        assert ours.specificity == pytest.approx(recall_score(1 - y, 1 - predicted), abs=1e-12)
        assert ours.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, predicted), abs=1e-12)
        assert abs(ours.roc_auc - roc_auc_score(y, p)) <= ours.roc_auc_bound + 1e-12
    observed, predicted_mean = reliability_curve(total)
    reference_observed, reference_predicted = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(observed, reference_observed, atol=1e-12)
    np.testing.assert_allclose(predicted_mean, reference_predicted, atol=1e-12)


def test_the_combined_auc_is_not_the_mean_of_the_sites_aucs() -> None:
    # Each site ranks its own rows perfectly, but the sites' scores sit on different scales.
    site_a = ([0, 0, 1, 1], [0.10, 0.20, 0.30, 0.40])
    site_b = ([0, 0, 1, 1], [0.60, 0.70, 0.80, 0.90])
    total = combine_evaluations([site_evaluation(*site_a), site_evaluation(*site_b)])
    pooled = roc_auc_score(site_a[0] + site_b[0], site_a[1] + site_b[1])
    assert pooled == pytest.approx(0.75)  # while each site's AUC, and their mean, is 1
    ours = combined_metrics(total)
    assert ours.roc_auc == pytest.approx(pooled)
    assert ours.roc_auc_bound == 0.0  # no two scores share a fine bin


def probabilities(raw: list[list[float]]) -> np.ndarray:
    scores = np.asarray(raw, dtype=np.float64) + 1e-3
    return scores / scores.sum(axis=1, keepdims=True)


multiclass_rows = st.lists(
    st.tuples(st.integers(0, 2), st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(sites=st.lists(multiclass_rows, min_size=1, max_size=3))
def test_multiclass_metrics_are_the_pooled_ones(sites: list[list[tuple[int, list[float]]]]) -> None:
    evaluations = [
        site_multiclass_evaluation([y for y, _ in rows], probabilities([s for _, s in rows]))
        for rows in sites
    ]
    ours = multiclass_metrics(combine_evaluations(evaluations))
    y = np.array([label for rows in sites for label, _ in rows])
    p = probabilities([s for rows in sites for _, s in rows])
    predicted = p.argmax(axis=1)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    labels = sorted(set(y) | set(predicted))
    assert ours["macro_f1"] == pytest.approx(
        f1_score(y, predicted, labels=labels, average="macro"), abs=1e-12
    )
    assert ours["balanced_accuracy"] == pytest.approx(
        np.mean([recall_score(y == c, predicted == c) for c in sorted(set(y))]), abs=1e-12
    )
    per_class = [roc_auc_score(y == c, p[:, c]) for c in sorted(set(y)) if 0 < (y == c).sum() < len(y)]
    if per_class:
        assert abs(ours["roc_auc"] - np.mean(per_class)) <= ours["roc_auc_bound"] + 1e-12
