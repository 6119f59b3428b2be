"""Kaplan–Meier curves and the log-rank test across sites, from per-site risk tables.

A site's :class:`RiskTable` lists, at each distinct time of its own, how many of its
subjects are still at risk (time at least ``t``) and how many had the event at ``t``.
Between a site's own times its at-risk count stays as it was at the next one, so tables of
different sites line up on the union of their times (:func:`combine_tables`) and add up: the
combined table is exactly the pooled one, and so are the curve and the test computed from it.
The site reveals its event and censoring times and counts, not its rows' other values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from federation.errors import ConfigurationError

#: The normal quantile of a 95% confidence band.
Z_95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class RiskTable:
    """At each distinct time: the subjects at risk and the events."""

    times: NDArray[np.float64]
    at_risk: NDArray[np.int64]
    events: NDArray[np.int64]

    def __post_init__(self) -> None:
        times = np.asarray(self.times, dtype=np.float64)
        at_risk = np.asarray(self.at_risk, dtype=np.int64)
        events = np.asarray(self.events, dtype=np.int64)
        if not (times.ndim == 1 and times.shape == at_risk.shape == events.shape):
            raise ConfigurationError("a risk table needs times, at-risk and event counts of one length")
        if times.size and (not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0)):
            raise ConfigurationError("a risk table's times must be finite and strictly increasing")
        if np.any(events < 0) or np.any(events > at_risk) or np.any(np.diff(at_risk) > 0):
            raise ConfigurationError(
                "a risk table's counts must satisfy 0 <= events <= at risk, at risk never rising"
            )
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "at_risk", at_risk)
        object.__setattr__(self, "events", events)

    def at_risk_at(self, times: NDArray[np.float64]) -> NDArray[np.int64]:
        """The subjects still at risk at each of ``times`` (0 after this table's last time)."""
        index = np.searchsorted(self.times, times, side="left")
        padded = np.append(self.at_risk, 0)
        return padded[index]

    def events_at(self, times: NDArray[np.float64]) -> NDArray[np.int64]:
        """The events at each of ``times`` (0 at a time this table does not list)."""
        if self.times.size == 0:
            return np.zeros(len(times), dtype=np.int64)
        index = np.searchsorted(self.times, times, side="left")
        found = (index < self.times.size) & (self.times[np.minimum(index, self.times.size - 1)] == times)
        return np.where(found, np.append(self.events, 0)[index], 0)


def risk_table(durations: ArrayLike, observed: ArrayLike) -> RiskTable:
    """One site's table from its subjects' times and event flags (1: the event, 0: censored)."""
    time = np.asarray(durations, dtype=np.float64)
    event = np.asarray(observed).astype(bool)
    if time.ndim != 1 or time.shape != event.shape or time.size == 0:
        raise ConfigurationError("durations and event flags must be non-empty and of one length")
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ConfigurationError("durations must be finite and non-negative")
    distinct = np.unique(time)
    at_risk = time.size - np.searchsorted(np.sort(time), distinct, side="left")
    events = np.bincount(np.searchsorted(distinct, time[event]), minlength=distinct.size)
    return RiskTable(distinct, at_risk, events)


def combine_tables(tables: Sequence[RiskTable]) -> RiskTable:
    """The pooled table: on the union of the sites' times, at-risk and event counts added."""
    if not tables:
        raise ConfigurationError("no risk table to combine")
    times = np.unique(np.concatenate([table.times for table in tables]))
    at_risk = np.sum([table.at_risk_at(times) for table in tables], axis=0)
    events = np.sum([table.events_at(times) for table in tables], axis=0)
    return RiskTable(times, at_risk, events)


@dataclass(frozen=True)
class SurvivalCurve:
    """The Kaplan–Meier estimate after each time, with a 95% band (exponential Greenwood)."""

    times: NDArray[np.float64]
    survival: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]


def kaplan_meier(table: RiskTable) -> SurvivalCurve:
    """``S(t) = prod (1 - d_i / n_i)`` over the times up to ``t``; the band is lifelines'
    default: ``S ** exp(±z * sqrt(v))`` with ``v = sum d/(n(n-d)) / log(S)^2``."""
    n, d = table.at_risk.astype(np.float64), table.events.astype(np.float64)
    survival = np.asarray(np.cumprod(1.0 - d / n), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(np.where(n > d, d / (n * (n - d)), np.inf))
        log_s = np.log(survival)
        spread = Z_95 * np.sqrt(greenwood / np.square(log_s))
        lower = np.power(survival, np.exp(spread))
        upper = np.power(survival, np.exp(-spread))
    # Where the estimate is 1 (no event yet) or 0 (everyone had it) the band is the point.
    lower = np.where(np.isfinite(lower), lower, survival)
    upper = np.where(np.isfinite(upper), upper, survival)
    return SurvivalCurve(table.times, survival, np.clip(lower, 0, 1), np.clip(upper, 0, 1))


@dataclass(frozen=True)
class LogRankResult:
    statistic: float
    degrees_of_freedom: int
    p_value: float


def log_rank(tables: Sequence[RiskTable]) -> LogRankResult:
    """The log-rank test that every site's survival is the same, from their tables alone."""
    if len(tables) < 2:
        raise ConfigurationError("the log-rank test compares at least two sites")
    times = combine_tables(tables).times
    n_g = np.array([table.at_risk_at(times) for table in tables], dtype=np.float64)
    d_g = np.array([table.events_at(times) for table in tables], dtype=np.float64)
    n, d = n_g.sum(axis=0), d_g.sum(axis=0)
    used = d > 0
    n_g, d_g, n, d = n_g[:, used], d_g[:, used], n[used], d[used]
    expected = (n_g * d / n).sum(axis=1)
    share = n_g / n
    # d(n - d)/(n - 1); one subject left at risk (n = d = 1) adds no variance.
    weight = np.divide(d * (n - d), n - 1, out=np.zeros_like(d), where=n > 1)
    covariance = np.einsum("t,gt,ht->gh", weight, share, -share)
    covariance[np.diag_indices_from(covariance)] += (weight * share).sum(axis=1)
    deviation = d_g.sum(axis=1) - expected
    k = len(tables) - 1
    # A pseudo-inverse, as lifelines takes: a site with no variance left adds nothing.
    statistic = float(deviation[:k] @ np.linalg.pinv(covariance[:k, :k]) @ deviation[:k])
    return LogRankResult(statistic, k, float(stats.chi2.sf(statistic, k)))
