"""Histograms over agreed bins, with small cells suppressed at the site, and quantiles read
from fine bins within a stated bound.

Each site counts its values per bin of edges everyone agreed on (no value leaves the site),
then suppresses any cell with fewer than ``min_count`` rows (a site's policy sets it;
default 5): the cell is sent as 0 and marked. The combined histogram adds the counts; a cell
suppressed at any site is a lower bound there, and marked so. Without suppression the
combined counts are exactly the pooled ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.errors import ConfigurationError

DEFAULT_MIN_COUNT = 5


@dataclass(frozen=True)
class BinCounts:
    """Counts per bin of ``edges`` (``len(edges) - 1`` bins; the last one closed on the right)
    and which of them were suppressed (sent as 0, or, combined, at least one site's was)."""

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    suppressed: NDArray[np.bool_]

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise ConfigurationError("bin edges must be at least two finite, strictly increasing numbers")
        counts = np.asarray(self.counts, dtype=np.int64)
        suppressed = np.asarray(self.suppressed, dtype=bool)
        if counts.shape != (edges.size - 1,) or suppressed.shape != counts.shape or np.any(counts < 0):
            raise ConfigurationError(f"{edges.size - 1} bins need as many non-negative counts and marks")
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "suppressed", suppressed)


def site_histogram(values: ArrayLike, edges: ArrayLike, *, min_count: int = DEFAULT_MIN_COUNT) -> BinCounts:
    """One site's counts per bin, cells below ``min_count`` (but above 0) suppressed.
    Values outside the edges are not counted (agree edges that cover the data)."""
    data = np.asarray(values, dtype=np.float64)
    bins = np.asarray(edges, dtype=np.float64)
    counts, _ = np.histogram(data[np.isfinite(data)], bins=bins)
    kept, small = suppress(counts, min_count)
    return BinCounts(bins, kept, small)


def suppress(counts: ArrayLike, min_count: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Cells with fewer than ``min_count`` rows (but some) sent as 0, and which they were."""
    if min_count < 1:
        raise ConfigurationError("min_count must be at least 1")
    cells = np.asarray(counts, dtype=np.int64)
    small = (cells > 0) & (cells < min_count)
    return np.where(small, 0, cells), small


def combine_histograms(histograms: Sequence[BinCounts]) -> BinCounts:
    """The sum of the sites' counts; a cell any site suppressed stays marked."""
    if not histograms:
        raise ConfigurationError("no histogram to combine")
    edges = histograms[0].edges
    if any(h.edges.shape != edges.shape or np.any(h.edges != edges) for h in histograms):
        raise ConfigurationError("the sites' histograms use different bin edges")
    counts = np.sum([h.counts for h in histograms], axis=0)
    suppressed = np.any([h.suppressed for h in histograms], axis=0)
    return BinCounts(edges, counts, suppressed)


def quantile_bounds(histogram: BinCounts, q: float) -> tuple[float, float]:
    """The bin that holds the ``q``-quantile of the counted values: the quantile (any
    definition that picks a value of the data, such as the inverted CDF) lies within it, so
    the error is at most the bin's width. Suppressed cells make the bounds approximate."""
    if not 0.0 <= q <= 1.0:
        raise ConfigurationError("q must lie in [0, 1]")
    total = int(histogram.counts.sum())
    if total == 0:
        raise ConfigurationError("no counted value")
    rank = max(1, int(np.ceil(q * total)))  # the inverted CDF's rank
    index = int(np.searchsorted(np.cumsum(histogram.counts), rank, side="left"))
    return float(histogram.edges[index]), float(histogram.edges[index + 1])
