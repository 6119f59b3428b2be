"""Cross-site evaluation combined exactly from per-site counts, not averaged per site.

Each site scores a model version on its held-out rows and sends counts only: its confusion
matrix (true class by predicted class), and for a binary model the scores of its positive
and of its negative rows counted in fine bins of [0, 1], its sum of squared errors (Brier)
and, per calibration bin, its rows, their summed scores and their positives. The combined
confusion matrix is the pooled one, so accuracy, balanced accuracy, sensitivity and
specificity are exact; so are the Brier score and the reliability curve. The ROC AUC comes
from the combined score histograms: rows whose scores share a fine bin count as ties, and
the pooled AUC lies within the stated bound of the estimate (unlike the example-weighted mean
of per-site AUCs, ``federation.metrics``, which has no bound).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.errors import ConfigurationError

#: Fine bins of the scores for the AUC; calibration bins for the reliability curve.
SCORE_BINS = 1000
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class SiteEvaluation:
    """One site's counts (or their sums over sites)."""

    confusion: NDArray[np.int64]
    positive_scores: NDArray[np.int64]
    negative_scores: NDArray[np.int64]
    squared_error: float
    calibration_rows: NDArray[np.int64]
    calibration_scores: NDArray[np.float64]
    calibration_positives: NDArray[np.int64]

    def __add__(self, other: SiteEvaluation) -> SiteEvaluation:
        if self.confusion.shape != other.confusion.shape:
            raise ConfigurationError("the sites' evaluations have different classes")
        return SiteEvaluation(
            self.confusion + other.confusion,
            self.positive_scores + other.positive_scores,
            self.negative_scores + other.negative_scores,
            self.squared_error + other.squared_error,
            self.calibration_rows + other.calibration_rows,
            self.calibration_scores + other.calibration_scores,
            self.calibration_positives + other.calibration_positives,
        )


def _calibration_bin(scores: NDArray[np.float64]) -> NDArray[np.intp]:
    # Bins (a, b] but the first [0, b], as scikit-learn's calibration_curve draws them.
    edges = np.linspace(0.0, 1.0 + 1e-8, CALIBRATION_BINS + 1)
    return np.searchsorted(edges[1:-1], scores, side="left")


def site_evaluation(labels: ArrayLike, scores: ArrayLike) -> SiteEvaluation:
    """A binary model's counts at one site: ``labels`` 0/1, ``scores`` the probability of 1."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape or y.size == 0:
        raise ConfigurationError("labels and scores must be non-empty and of one length")
    if np.any((y != 0) & (y != 1)) or not np.all((p >= 0) & (p <= 1)):
        raise ConfigurationError("labels must be 0 or 1 and scores probabilities")
    predicted = (p >= 0.5).astype(np.int64)
    confusion = np.zeros((2, 2), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    fine = np.minimum((p * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    coarse = _calibration_bin(p)
    return SiteEvaluation(
        confusion=confusion,
        positive_scores=np.bincount(fine[y == 1], minlength=SCORE_BINS),
        negative_scores=np.bincount(fine[y == 0], minlength=SCORE_BINS),
        squared_error=float(np.square(p - y).sum()),
        calibration_rows=np.bincount(coarse, minlength=CALIBRATION_BINS),
        calibration_scores=np.bincount(coarse, weights=p, minlength=CALIBRATION_BINS).astype(np.float64),
        calibration_positives=np.bincount(coarse, weights=y, minlength=CALIBRATION_BINS).astype(np.int64),
    )


def combine_evaluations(sites: Sequence[_Evaluation]) -> _Evaluation:
    """The sum of the sites' counts (binary or multiclass alike)."""
    if not sites:
        raise ConfigurationError("no evaluation to combine")
    total = sites[0]
    for site in sites[1:]:
        total = total + site
    return total


_Evaluation = TypeVar("_Evaluation", "SiteEvaluation", "MulticlassEvaluation")


@dataclass(frozen=True)
class CombinedMetrics:
    accuracy: float
    balanced_accuracy: float
    sensitivity: float
    specificity: float
    brier: float
    roc_auc: float
    #: The pooled AUC lies within ``roc_auc ± roc_auc_bound``.
    roc_auc_bound: float


def combined_metrics(total: SiteEvaluation) -> CombinedMetrics:
    """Exact metrics from the combined counts; the AUC within its bound."""
    confusion = total.confusion.astype(np.float64)
    rows = confusion.sum()
    sensitivity = confusion[1, 1] / confusion[1].sum() if confusion[1].sum() else float("nan")
    specificity = confusion[0, 0] / confusion[0].sum() if confusion[0].sum() else float("nan")
    auc, bound = _auc_with_bound(
        total.positive_scores.astype(np.float64), total.negative_scores.astype(np.float64)
    )
    return CombinedMetrics(
        accuracy=float(np.trace(confusion) / rows),
        balanced_accuracy=float(np.nanmean([sensitivity, specificity])),
        sensitivity=float(sensitivity),
        specificity=float(specificity),
        brier=total.squared_error / rows,
        roc_auc=auc,
        roc_auc_bound=bound,
    )


def reliability_curve(total: SiteEvaluation) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per non-empty calibration bin: the observed frequency of the positive class and the
    mean predicted probability (scikit-learn's ``calibration_curve``, uniform bins)."""
    present = total.calibration_rows > 0
    rows = total.calibration_rows[present].astype(np.float64)
    return total.calibration_positives[present] / rows, total.calibration_scores[present] / rows


# --- multiclass: a confusion matrix and one score histogram per class -----------------------


@dataclass(frozen=True)
class MulticlassEvaluation:
    """One site's ``(true, predicted)`` counts and, per class, the histograms of that class's
    score over its rows of the class and over the others (one-vs-rest), or their sums."""

    confusion: NDArray[np.int64]
    class_scores: NDArray[np.int64]
    other_scores: NDArray[np.int64]

    def __add__(self, other: MulticlassEvaluation) -> MulticlassEvaluation:
        if self.confusion.shape != other.confusion.shape:
            raise ConfigurationError("the sites' evaluations have different classes")
        return MulticlassEvaluation(
            self.confusion + other.confusion,
            self.class_scores + other.class_scores,
            self.other_scores + other.other_scores,
        )


def site_multiclass_evaluation(labels: ArrayLike, scores: ArrayLike) -> MulticlassEvaluation:
    """Counts of a model scoring ``(rows, classes)`` probabilities against class indices."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or y.size == 0:
        raise ConfigurationError("scores must be (rows, classes) and labels one per row")
    classes = p.shape[1]
    if np.any((y < 0) | (y >= classes)) or not np.all((p >= 0) & (p <= 1)):
        raise ConfigurationError("labels must be class indices and scores probabilities")
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y, p.argmax(axis=1)), 1)
    fine = np.minimum((p * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    own = np.stack([np.bincount(fine[y == c, c], minlength=SCORE_BINS) for c in range(classes)])
    rest = np.stack([np.bincount(fine[y != c, c], minlength=SCORE_BINS) for c in range(classes)])
    return MulticlassEvaluation(confusion, own, rest)


def _auc_with_bound(positives: NDArray[np.float64], negatives: NDArray[np.float64]) -> tuple[float, float]:
    """The AUC from score histograms, rows sharing a bin counted as ties (half a win), and
    the bound on its error: half the tied pairs' share."""
    pairs = positives.sum() * negatives.sum()
    if not pairs:
        return float("nan"), float("nan")
    below = np.cumsum(negatives) - negatives  # negatives in lower bins than each bin
    ties = float((positives * negatives).sum())
    return (float((positives * below).sum()) + ties / 2) / pairs, ties / 2 / pairs


def multiclass_metrics(total: MulticlassEvaluation) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present), macro-F1, and the
    one-vs-rest ROC AUC averaged over the classes present, within ``roc_auc_bound``."""
    confusion = total.confusion.astype(np.float64)
    true_rows, predicted_rows, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    present = true_rows > 0
    recall = hits[present] / true_rows[present]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(true_rows + predicted_rows > 0, 2 * hits / (true_rows + predicted_rows), 0.0)
    aucs = [
        _auc_with_bound(total.class_scores[c].astype(np.float64), total.other_scores[c].astype(np.float64))
        for c in np.flatnonzero(present)
    ]
    defined = [(auc, bound) for auc, bound in aucs if np.isfinite(auc)]
    return {
        "accuracy": float(hits.sum() / confusion.sum()),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1[present | (predicted_rows > 0)].mean()),
        "roc_auc": float(np.mean([a for a, _ in defined])) if defined else float("nan"),
        "roc_auc_bound": float(np.mean([b for _, b in defined])) if defined else float("nan"),
    }
