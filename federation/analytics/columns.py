"""Counts, means, variances, missing values and correlations of numeric columns, and
cross-tables of a categorical column against the label, from per-site sums.

A site sends, per column, its count of present values, its count of missing ones, their sum
and sum of squares; for correlations, over its rows where every column is present, the row
count, the sums and the matrix of sums of cross-products. All are plain sums, so the
combined mean and variance are the pooled ones to floating-point precision. A cross-table
is a count per (value, class) cell, suppressed like a histogram's cells
(:func:`federation.analytics.counts.suppress`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.analytics.counts import DEFAULT_MIN_COUNT, suppress
from federation.errors import ConfigurationError


@dataclass(frozen=True)
class ColumnSums:
    """One site's sums of one column (or their total over sites)."""

    present: int
    missing: int
    total: float
    total_sq: float

    def __add__(self, other: ColumnSums) -> ColumnSums:
        return ColumnSums(
            self.present + other.present,
            self.missing + other.missing,
            self.total + other.total,
            self.total_sq + other.total_sq,
        )

    @property
    def mean(self) -> float:
        return self.total / self.present if self.present else float("nan")

    @property
    def variance(self) -> float:
        """The sample variance (``ddof=1``, as pandas)."""
        if self.present < 2:
            return float("nan")
        return max(self.total_sq - self.total * self.total / self.present, 0.0) / (self.present - 1)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))


def column_sums(values: ArrayLike) -> ColumnSums:
    """A site's sums of one column; NaN marks a missing value."""
    data = np.asarray(values, dtype=np.float64)
    present = data[~np.isnan(data)]
    if np.any(np.isinf(present)):
        raise ConfigurationError("a column holds an infinite value")
    return ColumnSums(
        int(present.size),
        int(data.size - present.size),
        float(present.sum()),
        float(np.square(present).sum()),
    )


def combine_columns(sites: Sequence[Mapping[str, ColumnSums]]) -> dict[str, ColumnSums]:
    """Per column, the sum of the sites' sums (every site must report the same columns)."""
    if not sites:
        raise ConfigurationError("no site to combine")
    names = set(sites[0])
    if any(set(site) != names for site in sites):
        raise ConfigurationError("the sites report different columns")
    combined: dict[str, ColumnSums] = {}
    for name in sites[0]:
        total = ColumnSums(0, 0, 0.0, 0.0)
        for site in sites:
            total = total + site[name]
        combined[name] = total
    return combined


@dataclass(frozen=True)
class CrossProducts:
    """Over rows with every column present: the count, the sums and ``sum x x^T``."""

    count: int
    totals: NDArray[np.float64]
    products: NDArray[np.float64]

    def __add__(self, other: CrossProducts) -> CrossProducts:
        return CrossProducts(
            self.count + other.count, self.totals + other.totals, self.products + other.products
        )


def cross_products(matrix: ArrayLike) -> CrossProducts:
    """A site's cross-products of its ``(rows, columns)`` values (rows with a NaN left out)."""
    data = np.asarray(matrix, dtype=np.float64)
    complete = data[~np.isnan(data).any(axis=1)]
    return CrossProducts(int(complete.shape[0]), complete.sum(axis=0), complete.T @ complete)


def correlation(total: CrossProducts) -> NDArray[np.float64]:
    """Pearson correlations from combined cross-products (the pooled complete cases')."""
    if total.count < 2:
        raise ConfigurationError("correlations need at least two complete rows")
    mean = total.totals / total.count
    covariance = total.products / total.count - np.outer(mean, mean)
    scale = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        result = covariance / np.outer(scale, scale)
    return np.asarray(np.clip(result, -1.0, 1.0), dtype=np.float64)


def cross_table(
    values: Sequence[str],
    labels: Sequence[str],
    categories: Sequence[str],
    classes: Sequence[str],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """A site's ``(category, class)`` counts over agreed categories and classes, small cells
    suppressed; rows with another value or class are not counted."""
    category_index = {c: i for i, c in enumerate(categories)}
    class_index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(categories), len(classes)), dtype=np.int64)
    for value, label in zip(values, labels, strict=True):
        if value in category_index and label in class_index:
            counts[category_index[value], class_index[label]] += 1
    return suppress(counts, min_count)
