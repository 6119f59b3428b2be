"""Evaluation metrics computed at a silo and combined across silos.

A silo evaluates the global model on its own data with :func:`compute_metrics` and
reports only the resulting numbers (aggregates, never rows) together with its number of
examples; the coordinator checks and combines the reports with
:mod:`federation.metric_reports`.

Metric names:

* binary and multiclass: ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (F1 averaged
  over the classes present), ``roc_auc`` (when defined, see below) and ``log_loss``;
* regression: ``mse``, ``mae`` and ``r2`` (when defined, see below).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics as skm

from federation.errors import ConfigurationError
from federation.types import Task

#: Probabilities are clipped to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]`` for the log loss.
PROBABILITY_CLIP = 1e-7


def compute_metrics(task: Task, labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """Evaluate predictions ``scores`` against true ``labels`` at one silo.

    * Binary: ``labels`` are 0/1 and ``scores`` is the predicted probability of class 1,
      shape ``(n,)``; the predicted class is ``scores >= 0.5``.
    * Multiclass: ``labels`` are class indices in ``[0, C)`` and ``scores`` is an
      ``(n, C)`` matrix of class probabilities; the predicted class is the arg-max.
      ``roc_auc`` is the one-vs-rest AUC averaged (unweighted, "macro") over the classes
      present locally; classes absent from the silo's labels are skipped because their
      one-vs-rest AUC is undefined.
    * Regression: ``labels`` and ``scores`` are ``(n,)`` targets and predictions.

    A silo often lacks some classes. If fewer than two classes are present locally the
    ROC AUC is undefined, and ``roc_auc`` is *omitted* from the result rather than
    reported as NaN or raising. Likewise ``r2`` is omitted when the local targets are
    constant (or there is a single example). ``balanced_accuracy`` averages recall over
    the classes present locally.

    For the log loss, probabilities are clipped to ``[1e-7, 1 - 1e-7]`` (and multiclass
    rows renormalized) so that a confident mistake costs a large but finite amount.
    """
    task = Task(task)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ConfigurationError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ConfigurationError("scores contain NaN or infinite values")
    if task is Task.REGRESSION:
        return _regression_metrics(y.astype(np.float64), s)
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ConfigurationError("classification labels must be integer class indices")
    y_int = y.astype(np.int64)
    if task is Task.BINARY:
        return _binary_metrics(y_int, s)
    return _multiclass_metrics(y_int, s)


def _binary_metrics(y: NDArray[np.int64], p: NDArray[np.float64]) -> dict[str, float]:
    if p.shape != y.shape:
        raise ConfigurationError(f"binary scores must have shape {y.shape} (P(class 1)), got {p.shape}")
    if np.any((y != 0) & (y != 1)):
        raise ConfigurationError("binary labels must be 0 or 1")
    if np.any((p < 0) | (p > 1)):
        raise ConfigurationError("binary scores must be probabilities in [0, 1]")
    predicted = (p >= 0.5).astype(np.int64)
    result = _label_metrics(y, predicted)
    if len(np.unique(y)) == 2:
        result["roc_auc"] = float(skm.roc_auc_score(y, p))
    clipped = np.clip(p, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    result["log_loss"] = float(skm.log_loss(y, clipped, labels=[0, 1]))
    return result


def _multiclass_metrics(y: NDArray[np.int64], p: NDArray[np.float64]) -> dict[str, float]:
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
        raise ConfigurationError(
            f"multiclass scores must be an ({y.shape[0]}, C) probability matrix with C >= 2, got {p.shape}"
        )
    num_classes = p.shape[1]
    if np.any((y < 0) | (y >= num_classes)):
        raise ConfigurationError(f"multiclass labels must lie in [0, {num_classes})")
    if np.any((p < 0) | (p > 1)):
        raise ConfigurationError("multiclass scores must be probabilities in [0, 1]")
    predicted = np.argmax(p, axis=1)
    result = _label_metrics(y, predicted)
    present = np.unique(y)
    if len(present) >= 2:
        per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in present]
        result["roc_auc"] = float(np.mean(per_class))
    clipped = np.clip(p, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    clipped /= clipped.sum(axis=1, keepdims=True)
    result["log_loss"] = float(skm.log_loss(y, clipped, labels=np.arange(num_classes)))
    return result


def _label_metrics(y: NDArray[np.int64], predicted: NDArray[np.int64]) -> dict[str, float]:
    accuracy = float(skm.accuracy_score(y, predicted))
    # Mean recall over the classes present in ``y``; computed directly because sklearn
    # warns when the predictions contain classes the labels lack.
    present = np.unique(y)
    recalls = [float(np.mean(predicted[y == c] == c)) for c in present]
    # F1 averaged over the classes present locally: a class the model never predicts scores
    # 0, which accuracy hides when the labels are skewed.
    macro_f1 = float(skm.f1_score(y, predicted, labels=present, average="macro", zero_division=0))
    return {"accuracy": accuracy, "balanced_accuracy": float(np.mean(recalls)), "macro_f1": macro_f1}


def _regression_metrics(y: NDArray[np.float64], predicted: NDArray[np.float64]) -> dict[str, float]:
    if predicted.shape != y.shape:
        raise ConfigurationError(f"regression predictions must have shape {y.shape}, got {predicted.shape}")
    result = {
        "mse": float(skm.mean_squared_error(y, predicted)),
        "mae": float(skm.mean_absolute_error(y, predicted)),
    }
    if y.shape[0] >= 2 and np.ptp(y) > 0:
        result["r2"] = float(skm.r2_score(y, predicted))
    return result
