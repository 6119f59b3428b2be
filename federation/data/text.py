"""Clinical text for federated fine-tuning of language models.

A :class:`TextSchema` declares a study's text data the way a
:class:`~federation.data.schema.DataSchema` declares tabular data: the text column (and
the number of tokens a site's tokenizer keeps of it), the label column with its classes in
a fixed order, and optionally a group column (a ward, a condition, a site). It travels
inside a study configuration as :meth:`TextSchema.to_json` (marked ``"kind": "text"``);
:func:`parse_data_schema` reads either kind of schema.

:func:`load_text` reads a site's CSV or JSON Lines export into a :class:`TextDataset`.
Error messages name the file, the line and the column but never the text: clinical notes
are patient data, and error messages end up in logs.

Nothing here imports torch, a tokenizer or scikit-learn: the control plane imports this
module to validate schemas.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeGuard

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.data.schema import DataSchema, split_row_indices
from federation.errors import DataSchemaError
from federation.types import Task

#: The longest text cell :func:`load_text` accepts, in characters (protects memory).
MAX_TEXT_CHARS = 1_000_000
#: Bounds of :attr:`TextField.max_tokens`.
MIN_MAX_TOKENS = 8
MAX_MAX_TOKENS = 8192

# A JSON Lines record may escape every character of a maximal text as \uXXXX.
_MAX_JSONL_LINE_CHARS = 6 * MAX_TEXT_CHARS + 65_536
# How much of a file is inspected for the signature of a binary format.
_SNIFF_BYTES = 8192
_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (or an .xlsx/.docx file)"),
    (b"PAR1", "a Parquet file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (.xls/.doc)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xfe", "UTF-16 text (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text (save it as UTF-8)"),
)
_SCHEMA_KEYS = frozenset({"kind", "text", "label", "task", "classes", "group_column"})
_TEXT_FIELD_KEYS = frozenset({"name", "max_tokens"})
# An undeclared label is quoted in an error only if it is this short (it might be text).
_MAX_QUOTED_LABEL_CHARS = 40


class TextFormat(enum.StrEnum):
    """The file formats :func:`load_text` reads, chosen by the file's suffix."""

    CSV = "csv"
    JSONL = "jsonl"


@dataclass(frozen=True)
class TextField:
    """The text column, and how many tokens of each text a site's tokenizer keeps."""

    name: str
    max_tokens: int

    def __post_init__(self) -> None:
        _check_column_name(self.name, "the text column")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise DataSchemaError(f"text column {self.name!r}: max_tokens must be an integer")
        if not MIN_MAX_TOKENS <= self.max_tokens <= MAX_MAX_TOKENS:
            raise DataSchemaError(
                f"text column {self.name!r}: max_tokens must lie in "
                f"[{MIN_MAX_TOKENS}, {MAX_MAX_TOKENS}], got {self.max_tokens}"
            )

    def to_json(self) -> dict[str, str | int]:
        return {"name": self.name, "max_tokens": self.max_tokens}

    @classmethod
    def from_json(cls, data: object) -> TextField:
        if not isinstance(data, Mapping):
            raise DataSchemaError(f"'text' must be an object, got {type(data).__name__}")
        _reject_unknown_keys(data, _TEXT_FIELD_KEYS, "text field")
        name, max_tokens = data.get("name"), data.get("max_tokens")
        if not isinstance(name, str):
            raise DataSchemaError("the text field needs a string 'name'")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise DataSchemaError(f"text column {name!r}: 'max_tokens' must be an integer")
        return cls(name, max_tokens)


@dataclass(frozen=True)
class TextSchema:
    """The columns of a study's text data and how its labels map to class indices.

    ``classes[i]`` becomes label index ``i`` at every site. A binary study declares
    exactly two classes (the second is the "positive" one), a multiclass study at least
    two. Regression on text is not supported. ``group_column``, if given, names a column
    whose value (a site, a ward, a condition) is kept per row in
    :attr:`TextDataset.groups`; it is not shown to the model.
    """

    text: TextField
    label: str
    task: Task
    classes: tuple[str, ...]
    group_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, TextField):
            raise DataSchemaError("the schema's text must be a TextField")
        _check_column_name(self.label, "the label column")
        task = _classification_task(self.task)
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "classes", _checked_classes(self.classes, task))
        if self.group_column is not None:
            _check_column_name(self.group_column, "the group column")
        columns = self.required_columns()
        if len(set(columns)) != len(columns):
            raise DataSchemaError("the text, label and group columns must be different columns")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def required_columns(self) -> tuple[str, ...]:
        """Every column the schema reads: text, label and (if declared) group."""
        columns = (self.text.name, self.label)
        return columns if self.group_column is None else (*columns, self.group_column)

    def to_json(self) -> dict[str, object]:
        """A plain dict (JSON-compatible) that :meth:`from_json` turns back into this schema."""
        data: dict[str, object] = {
            "kind": "text",
            "text": self.text.to_json(),
            "label": self.label,
            "task": self.task.value,
            "classes": list(self.classes),
        }
        if self.group_column is not None:
            data["group_column"] = self.group_column
        return data

    @classmethod
    def from_json(cls, data: object) -> TextSchema:
        """Validate and parse a dict produced by :meth:`to_json` (or written by hand)."""
        if not isinstance(data, Mapping):
            raise DataSchemaError(f"a text schema must be an object, got {type(data).__name__}")
        _reject_unknown_keys(data, _SCHEMA_KEYS, "text schema")
        for key in ("kind", "text", "label", "task", "classes"):
            if key not in data:
                raise DataSchemaError(f"the text schema is missing {key!r}")
        if data["kind"] != "text":
            raise DataSchemaError(f"a text schema has 'kind' \"text\", got {data['kind']!r}")
        label, task, classes = data["label"], data["task"], data["classes"]
        if not isinstance(label, str):
            raise DataSchemaError("'label' must be a string (the label column name)")
        if not isinstance(task, str):
            raise DataSchemaError("'task' must be a string: binary or multiclass")
        if not _is_list(classes) or not all(isinstance(c, str) for c in classes):
            raise DataSchemaError("'classes' must be a list of strings")
        group_column = data.get("group_column")
        if group_column is not None and not isinstance(group_column, str):
            raise DataSchemaError("'group_column' must be a string (a column name) or absent")
        names = tuple(str(c) for c in classes)
        return cls(TextField.from_json(data["text"]), label, _classification_task(task), names, group_column)


def parse_data_schema(data: object) -> DataSchema | TextSchema:
    """Parse a study's data schema of either kind.

    A dict with ``"kind": "text"`` is a :class:`TextSchema`; one with ``"kind": "tabular"``
    or no ``"kind"`` (every tabular schema written before text existed) is a
    :class:`~federation.data.schema.DataSchema`.
    """
    if not isinstance(data, Mapping):
        raise DataSchemaError(f"a data schema must be an object, got {type(data).__name__}")
    kind = data.get("kind", "tabular")
    if kind == "text":
        return TextSchema.from_json(data)
    if kind == "tabular":
        return DataSchema.from_json(data)
    raise DataSchemaError(f'unknown data schema kind {kind!r}; expected "tabular" or "text"')


@dataclass(frozen=True)
class TextDataset:
    """A site's texts with their class indices, ready for a text model.

    ``labels`` holds int64 class indices in ``[0, num_classes)``; ``groups``, if present,
    holds one value per row (e.g. the site or condition). :attr:`features` gives the texts
    as a 1-D object array, so code written for tabular data
    (``model.fit(data.features, data.labels)``) works unchanged with text models.
    """

    texts: tuple[str, ...]
    labels: NDArray[np.int64]
    task: Task
    num_classes: int
    groups: NDArray[np.generic] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.texts, str):
            raise DataSchemaError("texts must be a sequence of strings, not one string")
        texts = tuple(self.texts)
        if not all(isinstance(text, str) for text in texts):
            raise DataSchemaError("every text must be a string")
        object.__setattr__(self, "texts", texts)
        task = _classification_task(self.task)
        object.__setattr__(self, "task", task)
        _check_num_classes(self.num_classes, task)
        object.__setattr__(self, "labels", _class_indices(self.labels, len(texts), self.num_classes))
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if groups.shape != (len(texts),):
                raise DataSchemaError(f"groups must have shape ({len(texts)},), got {groups.shape}")
            object.__setattr__(self, "groups", groups)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def features(self) -> NDArray[np.object_]:
        """The texts as a 1-D object array (what text models take as ``features``)."""
        array = np.empty(len(self.texts), dtype=object)
        array[:] = self.texts  # np.asarray would not keep a 1-D shape for zero texts
        return array

    def subset(self, indices: ArrayLike) -> TextDataset:
        """The rows at ``indices`` (an integer index array), in that order."""
        index = np.asarray(indices, dtype=np.intp)
        if index.ndim != 1:
            raise DataSchemaError("subset indices must be a 1-D integer array")
        return TextDataset(
            texts=tuple(self.texts[i] for i in index),
            labels=self.labels[index],
            task=self.task,
            num_classes=self.num_classes,
            groups=None if self.groups is None else self.groups[index],
        )

    @classmethod
    def concatenate(cls, datasets: Sequence[TextDataset]) -> TextDataset:
        """The rows of several data sets of one schema, stacked in order."""
        if not datasets:
            raise DataSchemaError("cannot concatenate zero data sets")
        first = datasets[0]
        if any(d.task is not first.task or d.num_classes != first.num_classes for d in datasets):
            raise DataSchemaError("only data sets with the same task and classes can be concatenated")
        groups = [d.groups for d in datasets]
        return cls(
            texts=tuple(text for d in datasets for text in d.texts),
            labels=np.concatenate([d.labels for d in datasets]),
            task=first.task,
            num_classes=first.num_classes,
            groups=None if any(g is None for g in groups) else np.concatenate(groups),  # type: ignore[arg-type]
        )

    def train_test_split(
        self, test_fraction: float, rng: np.random.Generator, stratify: bool = True
    ) -> tuple[TextDataset, TextDataset]:
        """Split into ``(train, test)`` with about ``test_fraction`` of the rows in ``test``.

        With ``stratify`` each class is split in the same proportion, so both parts keep
        the class balance. Both parts are non-empty, which needs at least two rows.
        """
        train_rows, test_rows = self.split_indices(test_fraction, rng, stratify)
        return self.subset(train_rows), self.subset(test_rows)

    def split_indices(
        self, test_fraction: float, rng: np.random.Generator, stratify: bool = True
    ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The row indices of :meth:`train_test_split`: ``(train, test)``, each sorted."""
        return split_row_indices(len(self), test_fraction, rng, stratify_by=self.labels if stratify else None)


def load_text(path: str | os.PathLike[str], schema: TextSchema) -> TextDataset:
    """Read a ``.csv`` or ``.jsonl`` file (UTF-8, optional BOM) into a :class:`TextDataset`.

    A CSV file starts with a header row naming every declared column (extra columns are
    ignored); a JSON Lines file holds one JSON object per line with (at least) the
    declared keys, and string values. Texts are kept exactly as written; labels and
    groups are stripped of surrounding whitespace. Blank lines are skipped.

    Raises :class:`~federation.errors.DataSchemaError`, naming the file and the line
    (never the text), for a missing or unreadable file, an unsupported suffix, a binary
    or non-UTF-8 file, a missing column, an empty or over-long text, an undeclared label
    and a file without rows.
    """
    file = Path(path)
    text_format = _text_format(file)
    _reject_binary(file, text_format)
    # A decoding error is located below, outside the handler, so that nothing chained to
    # the DataSchemaError carries the undecodable bytes.
    with contextlib.suppress(UnicodeDecodeError):
        return _load(file, schema, text_format)
    line, offset = _first_invalid_utf8(file)
    raise DataSchemaError(f"{file}, line {line}: not valid UTF-8 (first bad byte at offset {offset})")


def write_text(path: str | os.PathLike[str], data: TextDataset, schema: TextSchema) -> Path:
    """Write ``data`` as a ``.csv`` or ``.jsonl`` file (by suffix) that :func:`load_text` reads back.

    Labels are written as their class names; groups are written when the schema declares
    a group column (``data`` must then have groups).
    """
    file = Path(path)
    text_format = _text_format(file)
    if data.num_classes != schema.num_classes:
        raise DataSchemaError(f"the data has {data.num_classes} classes, the schema {schema.num_classes}")
    if schema.group_column is not None and data.groups is None:
        raise DataSchemaError(
            f"the schema declares group column {schema.group_column!r} but the data has none"
        )
    with file.open("w", encoding="utf-8", newline="") as handle:
        if text_format is TextFormat.CSV:
            writer = csv.writer(handle)
            writer.writerow(schema.required_columns())
            writer.writerows(_rows_to_write(data, schema))
        else:
            for row in _rows_to_write(data, schema):
                record = dict(zip(schema.required_columns(), row, strict=True))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return file


def _rows_to_write(data: TextDataset, schema: TextSchema) -> Iterator[tuple[str, ...]]:
    labels = [schema.classes[label] for label in data.labels.tolist()]
    if schema.group_column is None or data.groups is None:
        yield from zip(data.texts, labels, strict=True)
    else:
        groups = [str(group) for group in data.groups.tolist()]
        yield from zip(data.texts, labels, groups, strict=True)


# --- schema validation helpers -----------------------------------------------------------


def _check_column_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DataSchemaError(f"{what} needs a non-empty name")
    if name != name.strip():
        raise DataSchemaError(f"{what} {name!r}: name has leading or trailing whitespace")


def _classification_task(task: object) -> Task:
    if not isinstance(task, str) or task not in {t.value for t in Task}:
        raise DataSchemaError(f"task {task!r} is not one of binary, multiclass")
    parsed = Task(task)
    if parsed is Task.REGRESSION:
        raise DataSchemaError(
            "text data supports binary and multiclass classification only, not regression: "
            "declare the task as binary or multiclass with its classes"
        )
    return parsed


def _checked_classes(classes: object, task: Task) -> tuple[str, ...]:
    # The same rules as DataSchema: binary exactly 2 classes, multiclass at least 2.
    if not _is_list(classes):
        raise DataSchemaError("classes must be a list of class names")
    names = tuple(c for c in classes if isinstance(c, str) and c.strip() and c == c.strip())
    if len(names) != len(classes):
        raise DataSchemaError("classes must be non-empty strings without leading or trailing whitespace")
    if len(set(names)) != len(names):
        raise DataSchemaError("a class is declared more than once")
    if task is Task.BINARY and len(names) != 2:
        raise DataSchemaError(f"a binary schema declares exactly 2 classes, got {len(names)}")
    if task is Task.MULTICLASS and len(names) < 2:
        raise DataSchemaError(f"a multiclass schema declares at least 2 classes, got {len(names)}")
    return names


def _check_num_classes(num_classes: object, task: Task) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise DataSchemaError("num_classes must be an integer")
    if (task is Task.BINARY and num_classes != 2) or num_classes < 2:
        expected = "exactly 2" if task is Task.BINARY else "at least 2"
        raise DataSchemaError(f"a {task.value} dataset has {expected} classes, got {num_classes}")


def _class_indices(labels: ArrayLike, num_rows: int, num_classes: int) -> NDArray[np.int64]:
    raw = np.asarray(labels)
    if raw.shape != (num_rows,):
        raise DataSchemaError(f"labels must have shape ({num_rows},), got {raw.shape}")
    if raw.dtype.kind not in "biuf":
        raise DataSchemaError("class labels must be integer class indices")
    if raw.dtype.kind == "f" and not bool(np.all(np.equal(np.mod(raw, 1), 0))):
        raise DataSchemaError("class labels must be integer class indices")
    indices = raw.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        raise DataSchemaError(f"class labels must lie in [0, {num_classes})")
    return indices


def _is_list(value: object) -> TypeGuard[Sequence[object]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _reject_unknown_keys(data: Mapping[Any, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise DataSchemaError(
            f"unknown {what} key(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


# --- file reading --------------------------------------------------------------------------

# Marks a line json.loads could not parse.
_NOT_JSON = object()


@dataclass(frozen=True)
class _Row:
    """One record's raw values, before validation; ``line`` is where the record starts."""

    line: int
    text: object
    label: object
    group: object


class _CellError(Exception):
    """A value is unusable; ``reason`` says why without quoting the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text_format(file: Path) -> TextFormat:
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return TextFormat.CSV
    if suffix == ".jsonl":
        return TextFormat.JSONL
    raise DataSchemaError(
        f"{file}: unsupported file type {file.suffix or '(no suffix)'!r}; expected .csv or .jsonl"
    )


def _reject_binary(file: Path, text_format: TextFormat) -> None:
    # A zip or Parquet export renamed .csv would otherwise fail with a confusing
    # decoding or parsing error somewhere in the middle.
    try:
        with file.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise DataSchemaError(f"{file}: cannot open ({error.strerror or type(error).__name__})") from None
    for signature, what in _BINARY_SIGNATURES:
        if head.startswith(signature):
            raise DataSchemaError(
                f"{file}, line 1: the file starts like {what} (byte offset 0), "
                f"not a {text_format.value.upper()} text file"
            )
    if b"\x00" in head:
        offset = head.index(b"\x00")
        line = head.count(b"\n", 0, offset) + 1
        raise DataSchemaError(
            f"{file}, line {line}: a NUL byte at offset {offset}; this is a binary file, "
            f"not a {text_format.value.upper()} text file"
        )


def _first_invalid_utf8(file: Path) -> tuple[int, int]:
    """The line number and byte offset of the first byte that is not UTF-8."""
    offset = 0
    with file.open("rb") as handle:
        # A newline byte never occurs inside a multi-byte UTF-8 sequence, so decoding
        # line by line finds exactly the first bad byte.
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return line_number, offset + error.start
            offset += len(raw)
    return 0, offset


def _load(file: Path, schema: TextSchema, text_format: TextFormat) -> TextDataset:
    try:
        handle = file.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise DataSchemaError(f"{file}: cannot open ({error.strerror or type(error).__name__})") from None
    with handle:
        if text_format is TextFormat.CSV:
            rows = _csv_rows(handle, file, schema)
        else:
            rows = _jsonl_rows(handle, file, schema)
        return _collect(rows, file, schema)


def _collect(rows: Iterator[_Row], file: Path, schema: TextSchema) -> TextDataset:
    label_index = {name: i for i, name in enumerate(schema.classes)}
    parse_label = _label_parser(schema)
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for row in rows:
        where = f"{file}, line {row.line}"
        texts.append(_checked(_parse_text, row.text, where, schema.text.name))
        labels.append(label_index[_checked(parse_label, row.label, where, schema.label)])
        if schema.group_column is not None:
            groups.append(_checked(_parse_group, row.group, where, schema.group_column))
    if not texts:
        raise DataSchemaError(f"{file}: no data rows")
    return TextDataset(
        texts=tuple(texts),
        labels=np.asarray(labels, dtype=np.int64),
        task=schema.task,
        num_classes=schema.num_classes,
        groups=None if schema.group_column is None else np.asarray(groups, dtype=np.str_),
    )


def _checked(parse: Callable[[object], str], value: object, where: str, column: str) -> str:
    try:
        return parse(value)
    except _CellError as error:
        reason = error.reason
    # Raised outside the handler: only the reason travels, never the value.
    raise DataSchemaError(f"{where}, column {column!r}: {reason}")


def _parse_text(value: object) -> str:
    if not isinstance(value, str):
        raise _CellError(f"not a string (a JSON {_json_type(value)})")
    if len(value) > MAX_TEXT_CHARS:
        raise _CellError(f"text of {len(value):,} characters is longer than the limit of {MAX_TEXT_CHARS:,}")
    if not value.strip():
        raise _CellError("empty text (every row needs a non-blank text)")
    return value


def _label_parser(schema: TextSchema) -> Callable[[object], str]:
    declared = ", ".join(schema.classes)

    def parse_label(value: object) -> str:
        if not isinstance(value, str):
            raise _CellError(f"not a string (a JSON {_json_type(value)}); labels are class names")
        label = value.strip()
        if not label:
            raise _CellError("empty value (every row needs a class label)")
        if label not in schema.classes:
            raise _CellError(
                f"label {_describe_label(label)} is not one of the declared classes ({declared})"
            )
        return label

    return parse_label


def _describe_label(label: str) -> str:
    # A short label is quoted so the user sees the typo; a long one might be text (say,
    # shifted columns), so only its length is given.
    if len(label) <= _MAX_QUOTED_LABEL_CHARS and label.isprintable():
        return repr(label)
    return f"(a value of {len(label)} characters)"


def _parse_group(value: object) -> str:
    if not isinstance(value, str):
        raise _CellError(f"not a string (a JSON {_json_type(value)})")
    group = value.strip()
    if not group:
        raise _CellError("empty value (every row needs a group)")
    return group


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _csv_rows(handle: TextIO, file: Path, schema: TextSchema) -> Iterator[_Row]:
    _allow_long_csv_fields()
    reader = csv.reader(handle)
    header = _next_csv_row(reader, file)
    if header is None:
        raise DataSchemaError(f"{file}: the file is empty (expected a header row)")
    text_at, label_at, group_at = _csv_positions([name.strip() for name in header], file, schema)
    while True:
        line = reader.line_num + 1
        row = _next_csv_row(reader, file)
        if row is None:
            return
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise DataSchemaError(f"{file}, line {line}: {len(row)} cell(s) but the header has {len(header)}")
        yield _Row(line, row[text_at], row[label_at], None if group_at is None else row[group_at])


def _allow_long_csv_fields() -> None:
    # csv refuses cells over 131,072 characters by default; a long note may exceed that.
    # The limit is process-wide, so it is only ever raised, never lowered.
    if csv.field_size_limit() < MAX_TEXT_CHARS + 1:
        csv.field_size_limit(MAX_TEXT_CHARS + 1)


def _next_csv_row(reader: Any, file: Path) -> list[str] | None:
    try:
        row: list[str] | None = next(reader, None)
        return row
    except csv.Error as error:
        reason = str(error)  # csv's messages describe the syntax, never the cell
    if "field larger than field limit" in reason:
        reason = f"a cell is longer than the limit of {MAX_TEXT_CHARS:,} characters"
    raise DataSchemaError(f"{file}, line {reader.line_num}: malformed CSV ({reason})")


def _csv_positions(header: list[str], file: Path, schema: TextSchema) -> tuple[int, int, int | None]:
    required = schema.required_columns()
    missing = [name for name in required if name not in header]
    if missing:
        raise DataSchemaError(f"{file}, line 1: header is missing declared column(s): {', '.join(missing)}")
    repeated = [name for name in required if header.count(name) > 1]
    if repeated:
        raise DataSchemaError(f"{file}, line 1: header names column(s) more than once: {', '.join(repeated)}")
    group_at = None if schema.group_column is None else header.index(schema.group_column)
    return header.index(schema.text.name), header.index(schema.label), group_at


def _jsonl_rows(handle: TextIO, file: Path, schema: TextSchema) -> Iterator[_Row]:
    line = 0
    while True:
        raw = handle.readline(_MAX_JSONL_LINE_CHARS + 1)  # bounded: a line may be huge
        if not raw:
            return
        line += 1
        if len(raw) > _MAX_JSONL_LINE_CHARS:
            raise DataSchemaError(f"{file}, line {line}: longer than {_MAX_JSONL_LINE_CHARS:,} characters")
        if not raw.strip():
            continue  # blank line
        record = _json_object(raw, file, line)
        missing = [name for name in schema.required_columns() if name not in record]
        if missing:
            raise DataSchemaError(f"{file}, line {line}: missing column(s): {', '.join(missing)}")
        group = None if schema.group_column is None else record[schema.group_column]
        yield _Row(line, record[schema.text.name], record[schema.label], group)


def _json_object(raw: str, file: Path, line: int) -> Mapping[str, object]:
    stripped = raw.strip()
    try:
        value: object = json.loads(stripped)
    except (ValueError, RecursionError):
        value = _NOT_JSON  # not chained: the decoder's exception holds the whole line
    if isinstance(value, list) or (value is _NOT_JSON and stripped.startswith("[")):
        raise DataSchemaError(
            f"{file}, line {line}: a JSON array; JSON Lines needs one JSON object per line "
            "(is this a .json file?)"
        )
    if value is _NOT_JSON:
        raise DataSchemaError(f"{file}, line {line}: not valid JSON (each line must be one JSON object)")
    if not isinstance(value, dict):
        raise DataSchemaError(f"{file}, line {line}: a JSON {_json_type(value)}, not a JSON object")
    return value
