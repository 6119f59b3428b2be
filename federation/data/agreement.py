"""The data agreement: feature scaling and categories agreed through the sites' agents.

Before a tabular study trains, the coordinator asks every approved site for a
:class:`SiteSummary` of its file: the row count, each numeric or boolean feature's sum and
sum of squares, and each categorical feature's row count per value. These are
aggregates, never rows. :func:`combine_summaries` adds them up:

* a categorical feature's categories become the union of what the sites hold (the
  declared ones first, in their order, then the new ones sorted), so every site one-hot
  encodes the same columns;
* a one-hot column's sum and sum of squares are both its value's row count, so the
  combined :class:`~federation.data.scaling.FeatureMoments` of the widened schema's
  encoded features follow exactly, and :meth:`Standardizer.from_moments` gives the
  pooled mean and standard deviation without any site's rows.

A site's summary is checked against the study's schema before it counts
(:meth:`SiteSummary.from_json`): a wrong feature list, negative or inconsistent counts
and non-finite sums are refused with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.data.scaling import FeatureMoments
from federation.data.schema import DataSchema, FeatureKind
from federation.errors import ConfigurationError

#: Bounds on what a site may report: rows (float64 counts stay exact below 2^53), values of
#: one categorical feature, and the length of one value.
MAX_ROWS = 2**53
MAX_CATEGORIES = 1000
MAX_CATEGORY_CHARS = 200


@dataclass(frozen=True)
class SiteSummary:
    """One site's aggregates for the agreement.

    ``numeric`` maps each numeric or boolean feature to its (sum, sum of squares);
    ``categories`` maps each categorical feature to its row count per value seen.
    """

    count: int
    numeric: Mapping[str, tuple[float, float]]
    categories: Mapping[str, Mapping[str, int]]

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "numeric": {name: {"sum": s, "sum_sq": q} for name, (s, q) in self.numeric.items()},
            "categories": {name: dict(counts) for name, counts in self.categories.items()},
        }

    @classmethod
    def from_json(cls, data: object, schema: DataSchema) -> SiteSummary:
        """A summary checked against ``schema``; :class:`ConfigurationError` says what is wrong."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("a site summary must be an object")
        count = data.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_ROWS:
            raise ConfigurationError(f"a site summary's count must be a whole number in 1..{MAX_ROWS}")
        summary = cls(
            count=count,
            numeric=_numeric_sums(data.get("numeric"), schema, count),
            categories=_category_counts(data.get("categories"), schema, count),
        )
        return summary


def _numeric_names(schema: DataSchema) -> list[str]:
    return [f.name for f in schema.features if f.kind is not FeatureKind.CATEGORICAL]


def _categorical_names(schema: DataSchema) -> list[str]:
    return [f.name for f in schema.features if f.kind is FeatureKind.CATEGORICAL]


def _same_names(given: Mapping[str, object], expected: list[str], what: str) -> None:
    if set(given) != set(expected):
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        raise ConfigurationError(
            f"a site summary's {what} features differ from the schema's: missing {missing}, "
            f"unexpected {extra}"
        )


def _numeric_sums(raw: object, schema: DataSchema, count: int) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("a site summary's numeric part must be an object")
    _same_names(raw, _numeric_names(schema), "numeric")
    sums: dict[str, tuple[float, float]] = {}
    for name, pair in raw.items():
        if not isinstance(pair, Mapping) or not all(_finite(pair.get(key)) for key in ("sum", "sum_sq")):
            raise ConfigurationError(f"feature {name!r}: sum and sum_sq must be finite numbers")
        total, total_sq = float(pair["sum"]), float(pair["sum_sq"])
        # Cauchy-Schwarz: sum^2 <= n * sum_sq for any real column (a little slack for rounding).
        if total_sq < 0 or total * total > count * total_sq * (1 + 1e-9) + 1e-9:
            raise ConfigurationError(f"feature {name!r}: sum and sum_sq cannot come from {count} real values")
        sums[str(name)] = (total, total_sq)
    return sums


def _category_counts(raw: object, schema: DataSchema, count: int) -> dict[str, dict[str, int]]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("a site summary's categories part must be an object")
    _same_names(raw, _categorical_names(schema), "categorical")
    counts: dict[str, dict[str, int]] = {}
    for name, per_value in raw.items():
        if not isinstance(per_value, Mapping) or not all(
            isinstance(value, str) and value.strip() == value and value and _whole(n)
            for value, n in per_value.items()
        ):
            raise ConfigurationError(
                f"feature {name!r}: categories must map non-empty values to row counts >= 1"
            )
        if len(per_value) > MAX_CATEGORIES or any(len(value) > MAX_CATEGORY_CHARS for value in per_value):
            raise ConfigurationError(
                f"feature {name!r}: at most {MAX_CATEGORIES} values of at most {MAX_CATEGORY_CHARS} "
                "characters (an identifier or free text is no category)"
            )
        if sum(per_value.values()) != count:
            raise ConfigurationError(f"feature {name!r}: the category counts do not add up to {count} rows")
        counts[str(name)] = {str(value): int(n) for value, n in per_value.items()}
    return counts


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def widened_schema(schema: DataSchema, seen: Mapping[str, Iterable[str]]) -> DataSchema:
    """``schema`` with each categorical feature's categories extended by the values ``seen``:
    the declared ones first, in their order, then the new ones sorted."""
    features = []
    for feature in schema.features:
        if feature.kind is not FeatureKind.CATEGORICAL:
            features.append(feature)
            continue
        new = sorted(set(seen.get(feature.name, ())) - set(feature.categories))
        features.append(replace(feature, categories=(*feature.categories, *new)))
    return replace(schema, features=tuple(features))


def summarise(schema: DataSchema, features: ArrayLike) -> SiteSummary:
    """The summary of one site's ``features``, encoded with ``schema`` (which must list every
    category the site holds, :func:`widened_schema`); unheld categories are left out."""
    matrix = np.asarray(features, dtype=np.float64)
    numeric: dict[str, tuple[float, float]] = {}
    categories: dict[str, dict[str, int]] = {}
    column = 0
    for feature in schema.features:
        block = matrix[:, column : column + feature.width]
        column += feature.width
        if feature.kind is FeatureKind.CATEGORICAL:
            held = block.sum(axis=0)
            categories[feature.name] = {c: int(n) for c, n in zip(feature.categories, held, strict=True) if n}
        else:
            numeric[feature.name] = (float(block.sum()), float(np.square(block).sum()))
    return SiteSummary(count=int(matrix.shape[0]), numeric=numeric, categories=categories)


@dataclass(frozen=True)
class Agreement:
    """The combined result: the schema with the union of categories and the moments of its
    encoded features over every site's rows."""

    schema: DataSchema
    moments: FeatureMoments


def combine_summaries(schema: DataSchema, summaries: Sequence[SiteSummary]) -> Agreement:
    """The union of categories and the pooled moments, from the sites' summaries."""
    if not summaries:
        raise ConfigurationError("cannot combine the summaries of no site")
    seen = {
        name: [v for s in summaries for v in s.categories.get(name, {})]
        for name in _categorical_names(schema)
    }
    agreed = widened_schema(schema, seen)
    sums: list[float] = []
    squares: list[float] = []
    for feature in agreed.features:
        if feature.kind is FeatureKind.CATEGORICAL:
            for category in feature.categories:
                held = sum(s.categories[feature.name].get(category, 0) for s in summaries)
                sums.append(held)  # a one-hot column's values are 0 or 1: sum = sum of squares
                squares.append(held)
        else:
            sums.append(sum(s.numeric[feature.name][0] for s in summaries))
            squares.append(sum(s.numeric[feature.name][1] for s in summaries))
    count = sum(s.count for s in summaries)
    return Agreement(agreed, FeatureMoments(count=count, sum=np.asarray(sums), sum_sq=np.asarray(squares)))


# --- the summary as one vector: for summing under secure aggregation ----------------------


def summary_length(schema: DataSchema) -> int:
    """The length of :func:`summary_vector` for ``schema``."""
    numeric = len(_numeric_names(schema))
    categories = sum(len(f.categories) for f in schema.features if f.kind is FeatureKind.CATEGORICAL)
    return 1 + 2 * numeric + categories


def summary_vector(summary: SiteSummary, schema: DataSchema) -> NDArray[np.float64]:
    """``[count, sum and sum of squares of each numeric or boolean feature, row count of each
    declared category]`` in the schema's order: a fixed layout, so sites' vectors add up.
    A value the schema does not declare has no place in it (:func:`undeclared_values`)."""
    values: list[float] = [float(summary.count)]
    for feature in schema.features:
        if feature.kind is FeatureKind.CATEGORICAL:
            held = summary.categories.get(feature.name, {})
            values.extend(float(held.get(category, 0)) for category in feature.categories)
        else:
            values.extend(summary.numeric[feature.name])
    return np.asarray(values, dtype=np.float64)


def summary_of_vector(vector: ArrayLike, schema: DataSchema) -> SiteSummary:
    """The summary a (summed) :func:`summary_vector` stands for; counts rounded to whole rows."""
    values = np.asarray(vector, dtype=np.float64)
    if values.shape != (summary_length(schema),):
        raise ConfigurationError(f"a summary vector of this schema has {summary_length(schema)} values")
    numeric: dict[str, tuple[float, float]] = {}
    categories: dict[str, dict[str, int]] = {}
    position = 1
    for feature in schema.features:
        if feature.kind is FeatureKind.CATEGORICAL:
            counts = np.rint(values[position : position + feature.width]).astype(int)
            categories[feature.name] = {
                c: int(n) for c, n in zip(feature.categories, counts, strict=True) if n
            }
            position += feature.width
        else:
            numeric[feature.name] = (float(values[position]), float(values[position + 1]))
            position += 2
    return SiteSummary(count=int(np.rint(values[0])), numeric=numeric, categories=categories)


def undeclared_values(summary: SiteSummary, schema: DataSchema) -> list[str]:
    """The categorical features for which ``summary`` counts values ``schema`` does not declare."""
    declared = {f.name: set(f.categories) for f in schema.features if f.kind is FeatureKind.CATEGORICAL}
    return sorted(name for name, held in summary.categories.items() if set(held) - declared.get(name, set()))
