"""Propose a data schema from a site's own CSV file, for its operator to review.

Each column but the label is read by what its cells hold, in the loader's own terms
(:mod:`federation.data.csv_loader`): every cell a finite number, a numeric feature; every
cell one of the boolean spellings (``yes/no``, ``true/false``, ``0/1``...), a boolean one;
a few distinct values, a categorical one with them as its categories. A column with many
distinct values that are not numbers (an identifier, free text) is left out, and said so.
The label's distinct values become the classes (two: binary, the second sorted one being
the "positive" class; a few: multiclass), or, for a number with many values, regression.

The proposal runs at the site and prints nothing but the schema and notes about columns;
its categories and classes are values from the file, so the operator reviews them (a rare
category can identify a patient) before the schema goes to the coordinator.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from federation.data.csv_loader import FALSE_VALUES, TRUE_VALUES
from federation.data.schema import DataSchema, FeatureKind, FeatureSpec
from federation.errors import DataSchemaError
from federation.types import Task

#: A column with more distinct non-numeric values than this is no categorical feature.
MAX_CATEGORIES = 20
#: A label with more distinct values than this is regression (if numeric) or refused.
MAX_CLASSES = 20
#: Values seen fewer times than this are flagged for review.
RARE_COUNT = 5


@dataclass(frozen=True)
class SchemaSuggestion:
    """The proposed schema and one note per column that needs the operator's eye."""

    schema: DataSchema
    notes: list[str] = field(default_factory=list)
    rows: int = 0


def suggest_schema(
    path: str | Path,
    *,
    label: str,
    task: Task | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> SchemaSuggestion:
    """A schema for ``path`` with ``label`` as its label column (``task`` to override the
    guess); raises :class:`DataSchemaError` naming the file when it cannot be read."""
    header, columns = _read_columns(Path(path))
    if label not in header:
        raise DataSchemaError(f"{path}: no column {label!r} (the header has {', '.join(header)})")
    notes: list[str] = []
    features = []
    for name in header:
        if name == label:
            continue
        feature = _feature(name, columns[name], max_categories, notes)
        if feature is not None:
            features.append(feature)
    if not features:
        raise DataSchemaError(f"{path}: no column besides {label!r} can be a feature")
    label_task, classes = _label(label, columns[label], task, notes)
    schema = DataSchema(features=tuple(features), label=label, task=label_task, classes=classes)
    return SchemaSuggestion(schema, notes, rows=len(columns[label]))


def _read_columns(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not header or not any(header):
                raise DataSchemaError(f"{path}: no header row")
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise DataSchemaError(f"{path}: columns named more than once: {', '.join(duplicates)}")
            columns: dict[str, list[str]] = {name: [] for name in header}
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise DataSchemaError(
                        f"{path}, line {line}: {len(row)} cells, the header has {len(header)}"
                    )
                for name, cell in zip(header, row, strict=True):
                    columns[name].append(cell.strip())
    except OSError as error:
        raise DataSchemaError(f"{path}: cannot open ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise DataSchemaError(f"{path}: not valid UTF-8 text") from None
    except csv.Error as error:
        raise DataSchemaError(f"{path}: malformed CSV ({error})") from None
    if not columns[header[0]]:
        raise DataSchemaError(f"{path}: no data rows")
    return header, columns


def _feature(name: str, cells: list[str], max_categories: int, notes: list[str]) -> FeatureSpec | None:
    values = [cell for cell in cells if cell]
    empty = len(cells) - len(values)
    if empty:
        notes.append(f"{name}: {empty} empty cell(s); impute them before loading (the loader refuses them)")
    if not values:
        notes.append(f"{name}: left out, every cell is empty")
        return None
    if _all_boolean(values):
        return FeatureSpec(name, FeatureKind.BOOLEAN)
    if all(_is_number(value) for value in values):
        return FeatureSpec(name, FeatureKind.NUMERIC)
    counts = Counter(values)
    if len(counts) == len(values) > 1:
        notes.append(f"{name}: left out, every row has its own value (an identifier?)")
        return None
    if len(counts) > max_categories:
        notes.append(
            f"{name}: left out, {len(counts)} distinct values that are not all numbers "
            f"(an identifier or free text?); more than {max_categories} cannot be categories"
        )
        return None
    _note_rare(name, counts, notes)
    return FeatureSpec(name, FeatureKind.CATEGORICAL, tuple(sorted(counts)))


def _label(
    name: str, cells: list[str], task: Task | None, notes: list[str]
) -> tuple[Task, tuple[str, ...] | None]:
    if any(not cell for cell in cells):
        raise DataSchemaError(f"the label column {name!r} has empty cells; every row needs its label")
    counts = Counter(cells)
    numeric = all(_is_number(value) for value in counts)
    if task is None:
        if numeric and len(counts) > MAX_CLASSES:
            task = Task.REGRESSION
        else:
            task = Task.BINARY if len(counts) == 2 else Task.MULTICLASS
    if task is Task.REGRESSION:
        if not numeric:
            raise DataSchemaError(
                f"the label column {name!r} holds values that are not numbers: no regression"
            )
        return task, None
    if len(counts) > MAX_CLASSES:
        raise DataSchemaError(
            f"the label column {name!r} has {len(counts)} distinct values; a classification "
            f"label takes at most {MAX_CLASSES}"
        )
    if task is Task.BINARY and len(counts) != 2:
        raise DataSchemaError(
            f"the label column {name!r} has {len(counts)} distinct values, not the 2 of binary"
        )
    if len(counts) < 2:
        raise DataSchemaError(f"the label column {name!r} holds a single value; there is nothing to learn")
    _note_rare(name, counts, notes)
    classes = tuple(sorted(counts, key=_class_order))
    if task is Task.BINARY:
        notes.append(f"{name}: {classes[1]!r} is the positive class (the second); swap them if not")
    return task, classes


def _class_order(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then text in alphabetical order."""
    return (0, float(value), value) if _is_number(value) else (1, 0.0, value)


def _note_rare(name: str, counts: Counter[str], notes: list[str]) -> None:
    rare = sum(1 for count in counts.values() if count < RARE_COUNT)
    if rare:
        notes.append(
            f"{name}: {rare} value(s) seen fewer than {RARE_COUNT} times; review them before "
            "sharing the schema (a rare value can identify a patient)"
        )


def _all_boolean(values: list[str]) -> bool:
    spellings = {value.lower() for value in values}
    return spellings <= TRUE_VALUES | FALSE_VALUES and len(spellings) <= 2 and _one_spelling(spellings)


def _one_spelling(spellings: set[str]) -> bool:
    """``yes``/``no`` or ``1``/``0``, not a mix such as ``yes``/``0`` (then it is no flag)."""
    pairs = [{"true", "false"}, {"t", "f"}, {"yes", "no"}, {"y", "n"}, {"1", "0"}]
    return any(spellings <= pair for pair in pairs)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
