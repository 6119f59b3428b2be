import math

import numpy as np
import pytest
from sklearn import metrics as skm

from federation.errors import ConfigurationError
from federation.metric_reports import combine_metrics
from federation.metrics import compute_metrics
from federation.types import Task


def test_binary_metrics_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.8])
    result = compute_metrics(Task.BINARY, labels, scores)
    assert set(result) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss"}
    # predictions 0, 1, 0, 1 -> two of four right; recall 1/2 in each class
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["balanced_accuracy"] == pytest.approx(0.5)
    # positive/negative pairs ranked correctly: (0.4>0.1), (0.8>0.1), (0.8>0.6); not (0.4>0.6)
    assert result["roc_auc"] == pytest.approx(3 / 4)
    expected_loss = -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.8)) / 4
    assert result["log_loss"] == pytest.approx(expected_loss)


def test_binary_balanced_accuracy_differs_from_accuracy() -> None:
    labels = np.array([0, 0, 0, 1])
    result = compute_metrics(Task.BINARY, labels, np.array([0.2, 0.2, 0.2, 0.2]))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["balanced_accuracy"] == pytest.approx(0.5)


def test_macro_f1_counts_a_class_never_predicted_as_zero() -> None:
    # Hand-computed: labels 0,0,0,1,2; predictions 0,0,0,0,2. Class 0: precision 3/4,
    # recall 1, F1 6/7; class 1 never predicted: F1 0; class 2: F1 1. Mean (6/7 + 0 + 1) / 3.
    labels = np.array([0, 0, 0, 1, 2])
    scores = np.eye(3)[[0, 0, 0, 0, 2]] * 0.8 + 0.2 / 3
    result = compute_metrics(Task.MULTICLASS, labels, scores)
    assert result["macro_f1"] == pytest.approx((6 / 7 + 0 + 1) / 3)
    assert result["accuracy"] == pytest.approx(0.8)


def test_binary_log_loss_is_clipped() -> None:
    result = compute_metrics(Task.BINARY, np.array([1, 0]), np.array([0.0, 0.0]))
    assert math.isfinite(result["log_loss"])
    assert result["log_loss"] == pytest.approx(-math.log(1e-7) / 2, rel=1e-6)


def test_single_class_silo_omits_auc() -> None:
    result = compute_metrics(Task.BINARY, np.array([1, 1, 1]), np.array([0.9, 0.2, 0.7]))
    assert "roc_auc" not in result
    assert result["accuracy"] == pytest.approx(2 / 3)
    multi = compute_metrics(Task.MULTICLASS, np.array([2, 2]), np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]))
    assert "roc_auc" not in multi
    assert multi["accuracy"] == pytest.approx(0.5)


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = compute_metrics(Task.MULTICLASS, labels, probs)
    predicted = probs.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted))
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probs), rel=1e-6)


def test_multiclass_auc_skips_locally_absent_classes() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    result = compute_metrics(Task.MULTICLASS, labels, probs)
    auc0 = skm.roc_auc_score(labels == 0, probs[:, 0])
    auc1 = skm.roc_auc_score(labels == 1, probs[:, 1])
    assert result["roc_auc"] == pytest.approx((auc0 + auc1) / 2)
    assert math.isfinite(result["roc_auc"])


def test_regression_hand_computed() -> None:
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    predictions = np.array([1.0, 3.0, 3.0, 2.0])
    result = compute_metrics(Task.REGRESSION, labels, predictions)
    assert result["mse"] == pytest.approx((0 + 1 + 0 + 4) / 4)
    assert result["mae"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    # total sum of squares around mean 2.5 is 5.0, residual sum of squares 5.0
    assert result["r2"] == pytest.approx(0.0)
    constant = compute_metrics(Task.REGRESSION, np.array([2.0, 2.0]), np.array([2.0, 3.0]))
    assert "r2" not in constant
    assert constant["mse"] == pytest.approx(0.5)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ConfigurationError, match="binary scores"):
        compute_metrics(Task.BINARY, np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(ConfigurationError, match="probability matrix"):
        compute_metrics(Task.MULTICLASS, np.array([0, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ConfigurationError, match="NaN"):
        compute_metrics(Task.REGRESSION, np.array([0.0]), np.array([np.nan]))


def test_combine_metrics_is_example_weighted() -> None:
    combined = combine_metrics(
        [
            ({"accuracy": 1.0, "roc_auc": 0.9}, 30),
            ({"accuracy": 0.5, "roc_auc": 0.6}, 10),
            ({"accuracy": 0.0}, 60),  # single-class silo: no AUC
        ]
    )
    assert combined["accuracy"] == pytest.approx((30 * 1.0 + 10 * 0.5 + 60 * 0.0) / 100)
    assert combined["roc_auc"] == pytest.approx((30 * 0.9 + 10 * 0.6) / 40)
    assert combine_metrics([]) == {}


def test_combined_accuracy_equals_pooled_accuracy() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=90)
    scores = rng.random(90)
    silos = [slice(0, 10), slice(10, 55), slice(55, 90)]
    reports = [(compute_metrics(Task.BINARY, labels[s], scores[s]), len(labels[s])) for s in silos]
    combined = combine_metrics(reports)
    pooled = compute_metrics(Task.BINARY, labels, scores)
    assert combined["accuracy"] == pytest.approx(pooled["accuracy"])
    assert combined["log_loss"] == pytest.approx(pooled["log_loss"])


def test_combine_metrics_rejects_bad_reports() -> None:
    with pytest.raises(ConfigurationError, match="non-negative"):
        combine_metrics([({"accuracy": 1.0}, -1)])
    with pytest.raises(ConfigurationError, match="not finite"):
        combine_metrics([({"accuracy": math.nan}, 5)])
