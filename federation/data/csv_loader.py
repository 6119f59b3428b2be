"""Load a site's CSV export against the study's :class:`~federation.data.schema.DataSchema`.

Only the standard :mod:`csv` module is used. The first row is the header; it must name
every declared column (features, label and, if declared, the site column). Extra columns
are ignored. Every cell is parsed by its declared kind:

* numeric: a finite decimal number (``nan``/``inf`` are rejected);
* categorical: exactly one of the declared categories, one-hot encoded in declared order;
* boolean: ``true/false``, ``yes/no``, ``t/f``, ``y/n`` or ``1/0`` (case-insensitive);
* label: one of the declared classes (classification) or a finite number (regression).

Surrounding whitespace is stripped. Empty cells are an error by default: missing values
must be imputed before loading, or ``allow_missing_numeric=True`` may be passed to read
empty *numeric* feature cells as NaN (to be imputed afterwards).

Error messages name the file, the line and the column, and say what is wrong ("not a
number", "not one of the declared categories"), but never repeat the offending value:
it may be patient data and error messages end up in logs.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

import numpy as np

from federation.data.schema import DataSchema, Dataset, FeatureKind, FeatureSpec
from federation.errors import DataSchemaError
from federation.types import Task

#: Spellings accepted for boolean cells (compared case-insensitively).
TRUE_VALUES = frozenset({"true", "t", "yes", "y", "1"})
FALSE_VALUES = frozenset({"false", "f", "no", "n", "0"})

_T = TypeVar("_T")


def load_csv(
    path: str | os.PathLike[str],
    schema: DataSchema,
    *,
    allow_missing_numeric: bool = False,
    with_labels: bool = True,
) -> Dataset:
    """Read ``path`` (UTF-8, optional BOM) into a :class:`Dataset` shaped by ``schema``.

    ``with_labels=False`` reads rows to predict: only the feature columns are required, and
    the labels are zeros.

    Raises :class:`~federation.errors.DataSchemaError` if the header lacks a declared
    column, a row has the wrong number of cells, a cell cannot be parsed as its declared
    kind, or the file holds no data rows.
    """
    return _with_file(
        path, lambda handle, file: _read(handle, file, schema, allow_missing_numeric, with_labels)
    )


def categories_in(path: str | os.PathLike[str], schema: DataSchema) -> dict[str, set[str]]:
    """The values each categorical feature takes in ``path``, declared or not (for the data
    agreement, :mod:`federation.data.agreement`); empty cells are left out."""
    return _with_file(path, lambda handle, file: _read_categories(handle, file, schema))


def _with_file(path: str | os.PathLike[str], read: Callable[[TextIO, Path], _T]) -> _T:
    file = Path(path)
    try:
        handle = file.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise DataSchemaError(f"{file}: cannot open ({error.strerror or error})") from error
    with handle:
        try:
            return read(handle, file)
        except UnicodeDecodeError as error:
            raise DataSchemaError(f"{file}: not valid UTF-8 text") from error
        except csv.Error as error:
            raise DataSchemaError(f"{file}: malformed CSV ({error})") from error


def _read_categories(handle: TextIO, file: Path, schema: DataSchema) -> dict[str, set[str]]:
    reader = csv.reader(handle)
    header = [name.strip() for name in next(reader, [])]
    wanted = [f.name for f in schema.features if f.kind is FeatureKind.CATEGORICAL]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataSchemaError(f"{file}: header is missing declared column(s): {', '.join(missing)}")
    positions = {name: header.index(name) for name in wanted}
    seen: dict[str, set[str]] = {name: set() for name in wanted}
    for row in reader:
        if len(row) != len(header):
            continue  # blank or malformed lines: the full read reports them with their line
        for name, position in positions.items():
            if value := row[position].strip():
                seen[name].add(value)
    return seen


def _read(
    handle: TextIO, file: Path, schema: DataSchema, allow_missing_numeric: bool, with_labels: bool
) -> Dataset:
    reader = csv.reader(handle)
    header_row = next(reader, None)
    if header_row is None:
        raise DataSchemaError(f"{file}: the file is empty (expected a header row)")
    header = [name.strip() for name in header_row]
    positions: dict[str, int] = {}
    repeated: set[str] = set()
    for position, name in enumerate(header):
        if name in positions:
            repeated.add(name)
        positions.setdefault(name, position)
    required = schema.required_columns() if with_labels else tuple(f.name for f in schema.features)
    missing = [name for name in required if name not in positions]
    if missing:
        raise DataSchemaError(f"{file}: header is missing declared column(s): {', '.join(missing)}")
    ambiguous = [name for name in required if name in repeated]
    if ambiguous:
        raise DataSchemaError(f"{file}: header names column(s) more than once: {', '.join(ambiguous)}")

    parsers = [
        (positions[feature.name], feature.name, _feature_parser(feature, allow_missing_numeric))
        for feature in schema.features
    ]
    label_position = positions[schema.label] if with_labels else None
    label_parser = _label_parser(schema)
    site_position = None if schema.site_column is None or not with_labels else positions[schema.site_column]

    rows: list[list[float]] = []
    labels: list[float | int] = []
    sites: list[str] = []
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise DataSchemaError(f"{file}, line {line}: {len(row)} cell(s) but the header has {len(header)}")
        encoded: list[float] = []
        for position, column, parse in parsers:
            encoded.extend(_parse_cell(parse, row[position], file, line, column))
        rows.append(encoded)
        if label_position is not None:
            labels.append(_parse_cell(label_parser, row[label_position], file, line, schema.label))
        else:
            labels.append(0)
        if site_position is not None:
            site = row[site_position].strip()
            if not site:
                raise DataSchemaError(
                    f"{file}, line {line}, column {schema.site_column!r}: empty value "
                    "(every row needs a site)"
                )
            sites.append(site)

    if not rows:
        raise DataSchemaError(f"{file}: no data rows after the header")
    names = schema.encoded_feature_names()
    return Dataset(
        features=np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names)),
        labels=np.asarray(labels, dtype=np.float32 if schema.task is Task.REGRESSION else np.int64),
        task=schema.task,
        feature_names=names,
        num_classes=schema.num_classes,
        sites=np.asarray(sites, dtype=np.str_) if site_position is not None else None,
    )


class _CellError(Exception):
    """A cell could not be parsed; ``reason`` describes why without quoting the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_cell(parse: Callable[[str], _T], raw: str, file: Path, line: int, column: str) -> _T:
    try:
        return parse(raw.strip())
    except _CellError as error:
        reason = error.reason
    # Raised outside the ``except`` block so that no exception is chained to it: only
    # the reason travels, never an exception whose text might quote the cell.
    raise DataSchemaError(f"{file}, line {line}, column {column!r}: {reason}")


_EMPTY = "empty value (missing values are not allowed; impute them before loading)"


def _parse_number(text: str) -> float:
    if not text:
        raise _CellError(_EMPTY)
    try:
        value = float(text)
    except ValueError:
        value = None  # float()'s message quotes the text; do not chain it
    if value is None:
        raise _CellError("not a number")
    if not math.isfinite(value):
        raise _CellError("not a finite number")
    return value


def _feature_parser(feature: FeatureSpec, allow_missing_numeric: bool) -> Callable[[str], list[float]]:
    if feature.kind is FeatureKind.NUMERIC:

        def parse_numeric(text: str) -> list[float]:
            if not text and allow_missing_numeric:
                return [math.nan]
            return [_parse_number(text)]

        return parse_numeric

    if feature.kind is FeatureKind.BOOLEAN:

        def parse_boolean(text: str) -> list[float]:
            if not text:
                raise _CellError(_EMPTY)
            lowered = text.lower()
            if lowered in TRUE_VALUES:
                return [1.0]
            if lowered in FALSE_VALUES:
                return [0.0]
            raise _CellError("not a boolean (expected true/false, yes/no, t/f, y/n or 1/0)")

        return parse_boolean

    index = {category: i for i, category in enumerate(feature.categories)}
    declared = ", ".join(feature.categories)

    def parse_categorical(text: str) -> list[float]:
        if not text:
            raise _CellError(_EMPTY)
        if text not in index:
            raise _CellError(f"not one of the declared categories ({declared})")
        one_hot = [0.0] * len(index)
        one_hot[index[text]] = 1.0
        return one_hot

    return parse_categorical


def _label_parser(schema: DataSchema) -> Callable[[str], float | int]:
    if schema.classes is None:
        return _parse_number
    index = {label: i for i, label in enumerate(schema.classes)}
    declared = ", ".join(schema.classes)

    def parse_class(text: str) -> int:
        if not text:
            raise _CellError("empty value (every row needs a class label)")
        if text not in index:
            raise _CellError(f"not one of the declared classes ({declared})")
        return index[text]

    return parse_class


def load_columns(
    path: str | os.PathLike[str], schema: DataSchema
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The schema's columns as they are, for statistics: numeric and boolean ones as float64
    with NaN for an empty cell, categorical ones and a classification label as their text
    ("" for an empty cell). Values outside the declared categories are kept (a statistic
    counts only declared ones). Raises :class:`DataSchemaError` naming the line and column."""
    return _with_file(path, lambda handle, file: _read_columns(handle, file, schema))


def _column_parser(feature: FeatureSpec) -> Callable[[str], float]:
    if feature.kind is FeatureKind.NUMERIC:
        return lambda text: math.nan if not text else _parse_number(text)

    def parse_boolean(text: str) -> float:
        return math.nan if not text else _feature_parser(feature, False)(text)[0]

    return parse_boolean


def _read_columns(
    handle: TextIO, file: Path, schema: DataSchema
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    reader = csv.reader(handle)
    header = [name.strip() for name in next(reader, None) or []]
    positions = {name: i for i, name in reversed(list(enumerate(header)))}
    missing = [name for name in schema.required_columns() if name not in positions]
    if missing:
        raise DataSchemaError(f"{file}: header is missing declared column(s): {', '.join(missing)}")
    numeric = {f.name: _column_parser(f) for f in schema.features if f.kind is not FeatureKind.CATEGORICAL}
    if schema.task is Task.REGRESSION:
        numeric[schema.label] = lambda text: math.nan if not text else _parse_number(text)
    texts = [name for name in schema.required_columns() if name not in numeric]
    numbers: dict[str, list[float]] = {name: [] for name in numeric}
    words: dict[str, list[str]] = {name: [] for name in texts}
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise DataSchemaError(
                f"{file}, line {reader.line_num}: {len(row)} cell(s) but the header has {len(header)}"
            )
        for name, parse in numeric.items():
            numbers[name].append(_parse_cell(parse, row[positions[name]], file, reader.line_num, name))
        for name in texts:
            words[name].append(row[positions[name]].strip())
    return {name: np.asarray(values, dtype=np.float64) for name, values in numbers.items()}, words
