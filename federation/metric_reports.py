"""What a site may report about a model, and how the reports are combined.

A site reports aggregates only (never rows): the metrics of :mod:`federation.metrics`,
optionally prefixed ``global_`` (the round's base model) or ``local_`` (after local
training), with its number of examples. These reports cross a trust boundary, so each is
checked against the known names and their ranges before it is stored or combined: a
finite but absurd value (``1e308``) times a huge example count would otherwise overflow the
combination to infinity, which no JSON column can hold.

This module needs neither scikit-learn nor torch, so the control plane can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from federation.errors import ConfigurationError

#: The prefixes a report may put before a metric name.
METRIC_PREFIXES = ("", "global_", "local_")
#: The largest magnitude of an error metric (mse, mae, log loss) or of a negative r2. Losses
#: of real models are far below it, and ``MAX_NUM_EXAMPLES`` reports of it sum to < 1e300.
MAX_METRIC_MAGNITUDE = 1e12
#: The largest example count a site may report: more patients than any hospital holds.
MAX_NUM_EXAMPLES = 1_000_000_000
#: At most this many metrics in one report.
MAX_METRICS_PER_REPORT = 64


@dataclass(frozen=True)
class MetricRange:
    low: float
    high: float


#: Every metric :func:`federation.metrics.compute_metrics` reports, with the values it can take.
METRIC_RANGES: dict[str, MetricRange] = {
    "accuracy": MetricRange(0.0, 1.0),
    "balanced_accuracy": MetricRange(0.0, 1.0),
    "macro_f1": MetricRange(0.0, 1.0),
    "roc_auc": MetricRange(0.0, 1.0),
    "log_loss": MetricRange(0.0, MAX_METRIC_MAGNITUDE),
    "mse": MetricRange(0.0, MAX_METRIC_MAGNITUDE),
    "mae": MetricRange(0.0, MAX_METRIC_MAGNITUDE),
    "r2": MetricRange(-MAX_METRIC_MAGNITUDE, 1.0),
}


def metric_range(name: str) -> MetricRange | None:
    """The range of a reported metric name (``accuracy``, ``global_roc_auc``, ...), or None."""
    for prefix in METRIC_PREFIXES:
        if prefix and not name.startswith(prefix):
            continue
        found = METRIC_RANGES.get(name.removeprefix(prefix))
        if found is not None:
            return found
    return None


def check_num_examples(value: object) -> int:
    """A strict positive integer below the bound: ``"100"``, ``100.0`` and ``True`` are refused.

    >>> check_num_examples(120)
    120
    >>> check_num_examples(True)
    Traceback (most recent call last):
    ...
    federation.errors.ConfigurationError: num_examples must be an integer, got bool
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"num_examples must be an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_NUM_EXAMPLES:
        raise ConfigurationError(f"num_examples must lie between 1 and {MAX_NUM_EXAMPLES}, got {value}")
    return value


def check_reported_metrics(metrics: object) -> dict[str, float]:
    """A site's metric report, checked: known names, real numbers, each in its range.

    >>> check_reported_metrics({"global_accuracy": 0.9, "local_log_loss": 0.2})
    {'global_accuracy': 0.9, 'local_log_loss': 0.2}
    >>> check_reported_metrics({"global_accuracy": 1e308})
    Traceback (most recent call last):
    ...
    federation.errors.ConfigurationError: metric 'global_accuracy' must lie in [0, 1], got 1e+308
    """
    if not isinstance(metrics, Mapping):
        raise ConfigurationError("metrics must be an object of metric names and numbers")
    if len(metrics) > MAX_METRICS_PER_REPORT:
        raise ConfigurationError(f"at most {MAX_METRICS_PER_REPORT} metrics may be reported")
    return {str(name): _checked_value(str(name), value) for name, value in metrics.items()}


def _checked_value(name: str, value: object) -> float:
    allowed = metric_range(name)
    if allowed is None:
        known = ", ".join(sorted(METRIC_RANGES))
        raise ConfigurationError(
            f"unknown metric {name[:100]!r}: report {known}, optionally prefixed global_ or local_"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"metric {name!r} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ConfigurationError(f"metric {name!r} is outside the range of a float") from None
    if not math.isfinite(number):
        raise ConfigurationError(f"metric {name!r} is not finite")
    if not allowed.low <= number <= allowed.high:
        bounds = f"[{allowed.low:g}, {allowed.high:g}]"
        raise ConfigurationError(f"metric {name!r} must lie in {bounds}, got {number:g}")
    return number


def combine_metrics(per_silo: Sequence[tuple[Mapping[str, float], int]]) -> dict[str, float]:
    """Combine per-silo ``(metrics, num_examples)`` reports by example-weighted mean.

    Each metric is averaged over the silos that *report* it, weighted by their example
    counts; a silo that omits a metric (e.g. ``roc_auc`` where only one class is
    present) simply does not contribute to that metric. Silos with zero examples carry
    no weight.

    For metrics that are means over examples (``accuracy``, ``log_loss``, ``mse``,
    ``mae``) the weighted mean equals the value on the pooled data. For the others it is
    only an approximation: the example-weighted mean of per-silo ROC AUCs is not the
    pooled AUC (that would rank scores across silos), and the same holds for
    ``balanced_accuracy`` and ``r2``.

    The result is checked finite before it is returned: a combination that overflowed
    raises :class:`ConfigurationError` instead of reaching storage.
    """
    terms: dict[str, list[float]] = {}
    weights: dict[str, int] = {}
    for metrics, num_examples in per_silo:
        if num_examples < 0:
            raise ConfigurationError(f"num_examples must be non-negative, got {num_examples}")
        for name, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                raise ConfigurationError(f"metric {name!r} is not finite")
            terms.setdefault(name, []).append(value * num_examples)
            weights[name] = weights.get(name, 0) + num_examples
    combined = {name: _sum(terms[name]) / weights[name] for name in terms if weights[name] > 0}
    overflowed = sorted(name for name, value in combined.items() if not math.isfinite(value))
    if overflowed:
        raise ConfigurationError(f"the combined metrics {', '.join(overflowed)} are not finite")
    return combined


def _sum(values: list[float]) -> float:
    try:
        return math.fsum(values)
    except OverflowError:  # the partial sums left the float range
        return math.inf
