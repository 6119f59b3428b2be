"""Feature scaling that every site applies identically, agreed without pooling data.

Models train better on standardized features, but no site may see another site's rows,
and scaling each site by its *own* statistics would give the same feature a different
meaning at every hospital. The study therefore agrees on one global transform:

1. Each site computes :func:`local_moments` over its encoded feature matrix: the row
   count and, per feature, the sum and the sum of squares. These are aggregates, never
   rows; because they are plain sums they can also be collected under secure
   aggregation so that the coordinator only ever sees the totals.
2. The coordinator collects the per-site :class:`FeatureMoments` once, before training,
   and adds them up with :func:`combine_moments`.
3. :meth:`Standardizer.from_moments` turns the totals into the global mean and
   (population, ``ddof=0``) standard deviation; the coordinator ships those two vectors
   in the study configuration (:meth:`Standardizer.to_json`).
4. Every site applies the same :meth:`Standardizer.transform` to its training and
   evaluation data (and the deployed model uses it too).

The combined moments give exactly the mean and standard deviation of the pooled data
(up to floating-point rounding; sums are accumulated in float64). The sum-of-squares
form loses precision when a feature's mean is huge compared with its spread; clinical
features in their usual units are far from that regime.

Alternatively a study may declare fixed ranges in the schema
(:attr:`~federation.data.schema.FeatureSpec.value_range`, e.g. age in ``[0, 120]``) and
build the transform with :meth:`Standardizer.from_schema_ranges`; then no statistics are
exchanged at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.data.schema import DataSchema, FeatureKind
from federation.errors import ConfigurationError, DataSchemaError

#: Standard deviations below this are treated as constant features and scaled by 1.
STD_FLOOR = 1e-12


@dataclass(frozen=True)
class FeatureMoments:
    """Count, per-feature sum and per-feature sum of squares of one or more sites' data."""

    count: int
    sum: NDArray[np.float64]
    sum_sq: NDArray[np.float64]

    def __post_init__(self) -> None:
        total = np.asarray(self.sum, dtype=np.float64)
        total_sq = np.asarray(self.sum_sq, dtype=np.float64)
        if total.ndim != 1 or total.shape != total_sq.shape:
            raise ConfigurationError(
                f"moments need 1-D sum and sum_sq of equal length, got {total.shape} and {total_sq.shape}"
            )
        if int(self.count) < 0:
            raise ConfigurationError(f"moment count must be non-negative, got {self.count}")
        if not (np.all(np.isfinite(total)) and np.all(np.isfinite(total_sq))):
            raise ConfigurationError("moments must be finite")
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "sum_sq", total_sq)

    @property
    def num_features(self) -> int:
        return int(self.sum.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum.tolist(), "sum_sq": self.sum_sq.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureMoments:
        try:
            return cls(int(data["count"]), np.asarray(data["sum"]), np.asarray(data["sum_sq"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"malformed feature moments: {error}") from error


def local_moments(features: ArrayLike) -> FeatureMoments:
    """The moments of one site's encoded ``(n, d)`` feature matrix (aggregates only)."""
    matrix = np.asarray(features, dtype=np.float64)
    if matrix.ndim != 2:
        raise DataSchemaError(f"features must be a 2-D (rows, features) array, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise DataSchemaError("features contain NaN or infinite values; impute them before scaling")
    return FeatureMoments(
        count=matrix.shape[0],
        sum=matrix.sum(axis=0),
        sum_sq=np.square(matrix).sum(axis=0),
    )


def combine_moments(moments: Sequence[FeatureMoments]) -> FeatureMoments:
    """The moments of the union of the sites' data: the element-wise sum."""
    if not moments:
        raise ConfigurationError("cannot combine an empty list of moments")
    widths = {m.num_features for m in moments}
    if len(widths) != 1:
        raise ConfigurationError(f"sites report moments for different numbers of features: {sorted(widths)}")
    return FeatureMoments(
        count=sum(m.count for m in moments),
        sum=np.sum([m.sum for m in moments], axis=0),
        sum_sq=np.sum([m.sum_sq for m in moments], axis=0),
    )


@dataclass(frozen=True)
class Standardizer:
    """The transform ``(x - mean) / std`` applied column-wise by every site.

    For a range-based transform (:meth:`from_schema_ranges`) ``mean`` holds each
    column's lower bound and ``std`` its width, mapping the declared range to ``[0, 1]``.
    """

    mean: NDArray[np.float64]
    std: NDArray[np.float64]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ConfigurationError(
                f"mean and std must be 1-D of equal length, got {mean.shape} and {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ConfigurationError("mean must be finite and std finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def from_moments(cls, moments: FeatureMoments) -> Standardizer:
        """Global mean and population std from combined moments (std below 1e-12 -> 1)."""
        if moments.count < 1:
            raise ConfigurationError("cannot standardize from moments of zero rows")
        mean = moments.sum / moments.count
        variance = np.maximum(moments.sum_sq / moments.count - np.square(mean), 0.0)
        std = np.sqrt(variance)
        return cls(mean=mean, std=np.where(std < STD_FLOOR, 1.0, std))

    @classmethod
    def from_schema_ranges(cls, schema: DataSchema) -> Standardizer:
        """Map every numeric feature's declared ``value_range`` to ``[0, 1]``.

        Boolean and one-hot columns are already in ``[0, 1]`` and are left unchanged.
        Every numeric feature must declare a range.
        """
        offsets: list[float] = []
        widths: list[float] = []
        unranged: list[str] = []
        for feature in schema.features:
            if feature.kind is FeatureKind.NUMERIC:
                if feature.value_range is None:
                    unranged.append(feature.name)
                    continue
                low, high = feature.value_range
                offsets.append(low)
                widths.append(high - low)
            else:
                offsets.extend([0.0] * feature.width)
                widths.extend([1.0] * feature.width)
        if unranged:
            raise ConfigurationError(
                f"numeric feature(s) without a declared value_range: {', '.join(unranged)}"
            )
        return cls(mean=np.asarray(offsets), std=np.asarray(widths))

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, features: ArrayLike) -> NDArray[np.float32]:
        """Scale an ``(n, d)`` feature matrix; returns float32."""
        matrix = np.asarray(features, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.num_features:
            raise DataSchemaError(
                f"expected a (rows, {self.num_features}) feature matrix, got shape {matrix.shape}"
            )
        return ((matrix - self.mean) / self.std).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Standardizer:
        try:
            return cls(mean=np.asarray(data["mean"]), std=np.asarray(data["std"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"malformed standardizer: {error}") from error
