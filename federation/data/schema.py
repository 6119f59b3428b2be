"""The declared shape of a study's local data, and the encoded :class:`Dataset`.

Every hospital in a study loads its own CSV export against the same :class:`DataSchema`,
so that the encoded feature matrix has the same columns, in the same order, with the same
meaning everywhere: categorical levels are one-hot encoded in their *declared* order and
class labels are mapped to indices in their *declared* order, never in the order they
happen to appear in one site's file.

A schema is plain data: :meth:`DataSchema.to_json` gives a dict that can travel inside a
study configuration, and :meth:`DataSchema.from_json` validates such a dict and raises
:class:`~federation.errors.DataSchemaError` with a message that says what is wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task


class FeatureKind(enum.StrEnum):
    """How a feature column is parsed and encoded."""

    #: A real number, encoded as one column.
    NUMERIC = "numeric"
    #: One of a declared set of levels, one-hot encoded (one column per level).
    CATEGORICAL = "categorical"
    #: A yes/no value, encoded as one 0/1 column.
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column of the CSV file.

    ``categories`` is required for (and only allowed on) categorical features.
    ``value_range`` is an optional ``(low, high)`` a study may declare for a numeric
    feature so that every site can scale it identically without exchanging any
    statistics (see :meth:`federation.data.scaling.Standardizer.from_schema_ranges`).
    """

    name: str
    kind: FeatureKind = FeatureKind.NUMERIC
    categories: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataSchemaError("every feature needs a non-empty name")
        if self.name != self.name.strip():
            raise DataSchemaError(f"feature {self.name!r}: name has leading or trailing whitespace")
        try:
            kind = FeatureKind(self.kind)
        except ValueError:
            choices = ", ".join(k.value for k in FeatureKind)
            raise DataSchemaError(
                f"feature {self.name!r}: kind {self.kind!r} is not one of {choices}"
            ) from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "categories", tuple(self.categories))
        if kind is FeatureKind.CATEGORICAL:
            if len(self.categories) < 1:
                raise DataSchemaError(f"categorical feature {self.name!r} declares no categories")
            for category in self.categories:
                if not isinstance(category, str) or not category.strip():
                    raise DataSchemaError(
                        f"categorical feature {self.name!r}: categories must be non-empty strings"
                    )
                if category != category.strip():
                    raise DataSchemaError(
                        f"categorical feature {self.name!r}: category {category!r} has "
                        "leading or trailing whitespace"
                    )
            if len(set(self.categories)) != len(self.categories):
                raise DataSchemaError(f"categorical feature {self.name!r} declares a category twice")
        elif self.categories:
            raise DataSchemaError(f"feature {self.name!r}: only categorical features take categories")
        if self.value_range is not None:
            if kind is not FeatureKind.NUMERIC:
                raise DataSchemaError(f"feature {self.name!r}: only numeric features take a value_range")
            if len(self.value_range) != 2:
                raise DataSchemaError(f"feature {self.name!r}: value_range must be [low, high]")
            low, high = (float(v) for v in self.value_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise DataSchemaError(
                    f"feature {self.name!r}: value_range needs finite low < high, got {self.value_range}"
                )
            object.__setattr__(self, "value_range", (low, high))

    def encoded_names(self) -> tuple[str, ...]:
        """Names of the columns this feature contributes to the feature matrix.

        Numeric and boolean features keep their name; a categorical feature ``f`` with
        levels ``a, b`` becomes ``f=a, f=b``.
        """
        if self.kind is FeatureKind.CATEGORICAL:
            return tuple(f"{self.name}={category}" for category in self.categories)
        return (self.name,)

    @property
    def width(self) -> int:
        """Number of encoded columns."""
        return len(self.categories) if self.kind is FeatureKind.CATEGORICAL else 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.kind is FeatureKind.CATEGORICAL:
            data["categories"] = list(self.categories)
        if self.value_range is not None:
            data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_json(cls, data: object) -> FeatureSpec:
        if not isinstance(data, Mapping):
            raise DataSchemaError(f"each feature must be an object, got {type(data).__name__}")
        _reject_unknown_keys(data, {"name", "kind", "categories", "value_range"}, "feature")
        name = data.get("name")
        if not isinstance(name, str):
            raise DataSchemaError("each feature needs a string 'name'")
        kind = data.get("kind", FeatureKind.NUMERIC.value)
        if not isinstance(kind, str):
            raise DataSchemaError(f"feature {name!r}: 'kind' must be a string")
        categories = data.get("categories", [])
        if not _is_list(categories) or not all(isinstance(c, str) for c in categories):
            raise DataSchemaError(f"feature {name!r}: 'categories' must be a list of strings")
        raw_range = data.get("value_range")
        value_range: tuple[float, float] | None = None
        if raw_range is not None:
            if not _is_list(raw_range) or len(raw_range) != 2 or not all(_is_number(v) for v in raw_range):
                raise DataSchemaError(f"feature {name!r}: 'value_range' must be a list [low, high]")
            value_range = (float(raw_range[0]), float(raw_range[1]))
        try:
            feature_kind = FeatureKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in FeatureKind)
            raise DataSchemaError(f"feature {name!r}: kind {kind!r} is not one of {choices}") from None
        return cls(name, feature_kind, tuple(categories), value_range)


@dataclass(frozen=True)
class DataSchema:
    """The columns of a study's CSV file and how to turn them into a :class:`Dataset`.

    ``classes`` lists the class labels (as they are written in the label column) of a
    classification study; class ``classes[i]`` becomes label index ``i`` at every site.
    A binary study declares exactly two classes, the second being the "positive" class.
    Regression studies declare no classes. ``site_column``, if given, names a column
    whose value identifies the site a row comes from (used to partition pooled public
    data by site in simulations); it is not a feature.
    """

    features: tuple[FeatureSpec, ...]
    label: str
    task: Task
    classes: tuple[str, ...] | None = None
    site_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise DataSchemaError("a schema needs at least one feature")
        if not all(isinstance(f, FeatureSpec) for f in self.features):
            raise DataSchemaError("schema features must be FeatureSpec objects")
        try:
            task = Task(self.task)
        except ValueError:
            choices = ", ".join(t.value for t in Task)
            raise DataSchemaError(f"task {self.task!r} is not one of {choices}") from None
        object.__setattr__(self, "task", task)
        if not isinstance(self.label, str) or not self.label.strip():
            raise DataSchemaError("the schema needs a non-empty label column name")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataSchemaError(f"features declared more than once: {', '.join(duplicates)}")
        if self.label in names:
            raise DataSchemaError(f"the label column {self.label!r} is also declared as a feature")
        if self.site_column is not None:
            if not isinstance(self.site_column, str) or not self.site_column.strip():
                raise DataSchemaError("site_column must be a non-empty column name")
            if self.site_column == self.label or self.site_column in names:
                raise DataSchemaError(f"the site column {self.site_column!r} is also the label or a feature")
        encoded = self.encoded_feature_names()
        if len(set(encoded)) != len(encoded):
            raise DataSchemaError("two features encode to the same column name; rename one of them")
        if task is Task.REGRESSION:
            if self.classes is not None:
                raise DataSchemaError("a regression schema must not declare classes")
            return
        if self.classes is None:
            raise DataSchemaError(
                f"a {task.value} schema must declare its classes so that every site maps "
                "class labels to the same indices"
            )
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        if not all(isinstance(c, str) and c.strip() and c == c.strip() for c in classes):
            raise DataSchemaError("classes must be non-empty strings without leading or trailing whitespace")
        if len(set(classes)) != len(classes):
            raise DataSchemaError("a class is declared more than once")
        if task is Task.BINARY and len(classes) != 2:
            raise DataSchemaError(f"a binary schema declares exactly 2 classes, got {len(classes)}")
        if task is Task.MULTICLASS and len(classes) < 2:
            raise DataSchemaError(f"a multiclass schema declares at least 2 classes, got {len(classes)}")

    @property
    def num_classes(self) -> int:
        """2 for binary, C for multiclass, 1 for regression."""
        return 1 if self.classes is None else len(self.classes)

    def encoded_feature_names(self) -> tuple[str, ...]:
        """Names of the columns of the encoded feature matrix, in order."""
        return tuple(name for feature in self.features for name in feature.encoded_names())

    def required_columns(self) -> tuple[str, ...]:
        """Every CSV column the schema reads: features, label and site column."""
        columns = [f.name for f in self.features] + [self.label]
        if self.site_column is not None:
            columns.append(self.site_column)
        return tuple(columns)

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON-compatible) that :meth:`from_json` turns back into this schema."""
        return {
            "features": [f.to_json() for f in self.features],
            "label": self.label,
            "task": self.task.value,
            "classes": None if self.classes is None else list(self.classes),
            "site_column": self.site_column,
        }

    @classmethod
    def from_json(cls, data: object) -> DataSchema:
        """Validate and parse a dict produced by :meth:`to_json` (or written by hand)."""
        if not isinstance(data, Mapping):
            raise DataSchemaError(f"a data schema must be an object, got {type(data).__name__}")
        # "kind" tells a tabular schema from a text one (federation.data.text.parse_data_schema).
        _reject_unknown_keys(data, {"kind", "features", "label", "task", "classes", "site_column"}, "schema")
        kind = data.get("kind", "tabular")
        if kind != "tabular":
            raise DataSchemaError(f"a tabular data schema has 'kind' \"tabular\" or no 'kind', got {kind!r}")
        for key in ("features", "label", "task"):
            if key not in data:
                raise DataSchemaError(f"the data schema is missing {key!r}")
        features = data["features"]
        if not _is_list(features):
            raise DataSchemaError("'features' must be a list of feature objects")
        label = data["label"]
        if not isinstance(label, str):
            raise DataSchemaError("'label' must be a string (the label column name)")
        task = data["task"]
        if not isinstance(task, str) or task not in {t.value for t in Task}:
            choices = ", ".join(t.value for t in Task)
            raise DataSchemaError(f"'task' must be one of {choices}")
        classes = _class_labels(data.get("classes"))
        site_column = data.get("site_column")
        if site_column is not None and not isinstance(site_column, str):
            raise DataSchemaError("'site_column' must be a string or null")
        return cls(
            features=tuple(FeatureSpec.from_json(f) for f in features),
            label=label,
            task=Task(task),
            classes=None if classes is None else tuple(classes),
            site_column=site_column,
        )


def _class_labels(classes: object) -> list[str] | None:
    """The declared classes as the label column writes them: strings, or whole numbers
    (``[0, 1]`` reads as the labels ``"0"`` and ``"1"``)."""
    if classes is None:
        return None
    if (
        not isinstance(classes, Sequence)
        or isinstance(classes, str | bytes)
        or not all(isinstance(c, str) or _is_whole(c) for c in classes)
    ):
        raise DataSchemaError("'classes' must be a list of strings or whole numbers (or null for regression)")
    return [c if isinstance(c, str) else str(c) for c in classes]


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reject_unknown_keys(data: Mapping[Any, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise DataSchemaError(
            f"unknown {what} key(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


@dataclass(frozen=True)
class Dataset:
    """A site's local data, encoded and ready for a model.

    ``features`` is a float32 ``(n, d)`` matrix whose columns are named by
    ``feature_names``; ``labels`` holds int64 class indices in ``[0, num_classes)`` for
    classification and float32 targets for regression. ``num_classes`` is 2 for binary,
    C for multiclass and 1 for regression. ``sites``, if present, holds one site name
    per row (see :func:`federation.data.partition.partition_by_site`).

    Arrays are converted to the canonical dtypes on construction; shapes and label
    ranges are checked and a mismatch raises :class:`~federation.errors.DataSchemaError`.
    """

    features: NDArray[np.float32]
    labels: NDArray[Any]
    task: Task
    feature_names: tuple[str, ...]
    num_classes: int
    sites: NDArray[Any] | None = None

    def __post_init__(self) -> None:
        task = Task(self.task)
        object.__setattr__(self, "task", task)
        features = np.asarray(self.features, dtype=np.float32)
        if features.ndim != 2:
            raise DataSchemaError(
                f"features must be a 2-D (rows, features) array, got shape {features.shape}"
            )
        n, d = features.shape
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if len(self.feature_names) != d:
            raise DataSchemaError(f"{len(self.feature_names)} feature names for {d} feature columns")
        raw_labels = np.asarray(self.labels)
        if task is Task.REGRESSION and raw_labels.dtype.kind not in "biuf":
            raise DataSchemaError("regression targets must be numbers")
        if raw_labels.shape != (n,):
            raise DataSchemaError(f"labels must have shape ({n},), got {raw_labels.shape}")
        if task is Task.REGRESSION:
            if self.num_classes != 1:
                raise DataSchemaError(f"a regression dataset has num_classes 1, got {self.num_classes}")
            labels = raw_labels.astype(np.float32)
        else:
            expected = "exactly 2" if task is Task.BINARY else "at least 2"
            if (task is Task.BINARY and self.num_classes != 2) or self.num_classes < 2:
                raise DataSchemaError(
                    f"a {task.value} dataset has {expected} classes, got {self.num_classes}"
                )
            if raw_labels.dtype.kind not in "biuf":
                raise DataSchemaError("class labels must be integer class indices")
            integral = raw_labels.dtype.kind in "biu" or bool(np.all(np.equal(np.mod(raw_labels, 1), 0)))
            if not integral:
                raise DataSchemaError("class labels must be integer class indices")
            labels = raw_labels.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataSchemaError(f"class labels must lie in [0, {self.num_classes})")
        object.__setattr__(self, "labels", labels)
        if self.sites is not None:
            sites = np.asarray(self.sites)
            if sites.shape != (n,):
                raise DataSchemaError(f"sites must have shape ({n},), got {sites.shape}")
            object.__setattr__(self, "sites", sites)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def subset(self, indices: ArrayLike) -> Dataset:
        """The rows at ``indices`` (an integer index array), in that order."""
        index = np.asarray(indices, dtype=np.intp)
        if index.ndim != 1:
            raise DataSchemaError("subset indices must be a 1-D integer array")
        return Dataset(
            features=self.features[index],
            labels=self.labels[index],
            task=self.task,
            feature_names=self.feature_names,
            num_classes=self.num_classes,
            sites=None if self.sites is None else self.sites[index],
        )

    def with_features(self, features: NDArray[np.float32]) -> Dataset:
        """The same rows with transformed features (e.g. after standardization)."""
        return dataclasses.replace(self, features=features)

    @classmethod
    def concatenate(cls, datasets: Sequence[Dataset]) -> Dataset:
        """The rows of several data sets of one schema, stacked in order."""
        if not datasets:
            raise DataSchemaError("cannot concatenate zero data sets")
        first = datasets[0]
        if any(d.feature_names != first.feature_names or d.task is not first.task for d in datasets):
            raise DataSchemaError("only data sets with the same features and task can be concatenated")
        sites = [d.sites for d in datasets]
        return cls(
            features=np.concatenate([d.features for d in datasets]),
            labels=np.concatenate([d.labels for d in datasets]),
            task=first.task,
            feature_names=first.feature_names,
            num_classes=first.num_classes,
            sites=None if any(s is None for s in sites) else np.concatenate(sites),  # type: ignore[arg-type]
        )

    def train_test_split(
        self, test_fraction: float, rng: np.random.Generator, stratify: bool = True
    ) -> tuple[Dataset, Dataset]:
        """Split into ``(train, test)`` with about ``test_fraction`` of the rows in ``test``.

        With ``stratify`` (classification only; ignored for regression) each class is
        split in the same proportion, so both parts keep the class balance. Both parts
        are non-empty, which needs at least two rows.
        """
        train_rows, test_rows = self.split_indices(test_fraction, rng, stratify)
        return self.subset(train_rows), self.subset(test_rows)

    def split_indices(
        self, test_fraction: float, rng: np.random.Generator, stratify: bool = True
    ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The row indices of :meth:`train_test_split`: ``(train, test)``, each sorted."""
        classes = self.labels if stratify and self.task is not Task.REGRESSION else None
        return split_row_indices(len(self), test_fraction, rng, stratify_by=classes)


def split_row_indices(
    num_rows: int, test_fraction: float, rng: np.random.Generator, *, stratify_by: NDArray[Any] | None
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``(train, test)`` row indices, each sorted, about ``test_fraction`` of them in test
    and both non-empty; with ``stratify_by`` (class labels) every class split alike."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigurationError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    if num_rows < 2:
        raise ConfigurationError(f"cannot split a dataset of {num_rows} row(s) into train and test")
    n_test = min(max(round(num_rows * test_fraction), 1), num_rows - 1)
    if stratify_by is not None:
        test_index = stratified_test_rows(stratify_by, n_test, rng)
    else:
        test_index = rng.permutation(num_rows)[:n_test]
    is_test = np.zeros(num_rows, dtype=bool)
    is_test[test_index] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def stratified_test_rows(
    labels: NDArray[np.int64], n_test: int, rng: np.random.Generator
) -> NDArray[np.intp]:
    """Pick ``n_test`` rows so that every class contributes in proportion to its size.

    Per-class quotas are rounded by the largest-remainder rule, so they sum to exactly
    ``n_test``; ties between remainders are broken at random.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_test / labels.shape[0])
    quotas = np.floor(exact).astype(np.int64)
    shortfall = n_test - int(quotas.sum())
    if shortfall > 0:
        remainders = exact - quotas
        order = np.lexsort((rng.random(len(classes)), -remainders))
        quotas[order[:shortfall]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == cls))[:quota]
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return np.concatenate(chosen).astype(np.intp)
