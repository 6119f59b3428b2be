"""A schema proposed from a site's own CSV file: column kinds, categories, task and classes,
checked by loading the file with the proposal, and against a built-in data set's schema."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from federation.data import DataSchema, load_builtin, load_csv
from federation.data.schema import FeatureKind
from federation.data.suggest import suggest_schema
from federation.errors import DataSchemaError
from federation.types import Task

HEADER = ["age", "sex", "smoker", "ward", "record", "outcome"]


def _write(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _site(path: Path, n: int = 40, outcome=lambda i: "readmitted" if i % 3 == 0 else "home") -> Path:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    rows = [
        [
            int(rng.integers(20, 90)),
            "FM"[i % 2],
            "yes" if i % 4 == 0 else "no",
            f"ward {i % 3 + 1}",
            f"R{i:05d}",
            outcome(i),
        ]
        for i in range(n)
    ]
    return _write(path, rows)


def test_each_column_gets_the_kind_its_cells_hold_and_the_proposal_loads_the_file(tmp_path: Path) -> None:
    path = _site(tmp_path / "site.csv")
    suggestion = suggest_schema(path, label="outcome")
    kinds = {feature.name: feature.kind for feature in suggestion.schema.features}
    assert kinds == {
        "age": FeatureKind.NUMERIC,
        "sex": FeatureKind.CATEGORICAL,
        "smoker": FeatureKind.BOOLEAN,
        "ward": FeatureKind.CATEGORICAL,
    }
    assert any("record: left out" in note for note in suggestion.notes)  # an identifier
    assert (suggestion.schema.task, suggestion.schema.classes) == (Task.BINARY, ("home", "readmitted"))
    dataset = load_csv(path, suggestion.schema)  # the loader reads the file with the proposal
    assert dataset.features.shape == (40, 1 + 2 + 1 + 3)
    assert dataset.labels.tolist() == [1 if i % 3 == 0 else 0 for i in range(40)]


def test_a_built_in_data_set_exported_gets_its_own_schema_back(tmp_path: Path) -> None:
    data = load_builtin("breast_cancer")
    rows = [
        [*(f"{v:.6g}" for v in row), ["malignant", "benign"][label]]
        for row, label in zip(data.features, data.labels, strict=True)
    ]
    path = _write(tmp_path / "bc.csv", rows, [*data.feature_names, "diagnosis"])
    schema = suggest_schema(path, label="diagnosis", task=Task.BINARY).schema
    assert [f.name for f in schema.features] == list(data.feature_names)
    assert {f.kind for f in schema.features} == {FeatureKind.NUMERIC}
    assert set(schema.classes or ()) == {"malignant", "benign"}
    np.testing.assert_allclose(load_csv(path, schema).features, data.features, rtol=1e-5)


@pytest.mark.parametrize(
    ("outcome", "task", "classes"),
    [
        (lambda i: str(i % 3), Task.MULTICLASS, ("0", "1", "2")),
        (lambda i: str(i % 12), Task.MULTICLASS, tuple(str(c) for c in range(12))),  # 2 before 10
        (lambda i: f"{i * 1.5:.1f}", Task.REGRESSION, None),
    ],
)
def test_the_label_decides_the_task(tmp_path: Path, outcome, task: Task, classes) -> None:  # type: ignore[no-untyped-def]
    schema = suggest_schema(_site(tmp_path / "site.csv", outcome=outcome), label="outcome").schema
    assert (schema.task, schema.classes) == (task, classes)


def test_empty_cells_and_rare_values_are_noted_for_review(tmp_path: Path) -> None:
    rows = [[50 + i, "F", "no", "ward 1" if i else "isolation", f"R{i}", i % 2] for i in range(12)]
    rows[3][0] = ""
    notes = suggest_schema(_write(tmp_path / "site.csv", rows), label="outcome").notes
    assert any(note.startswith("age: 1 empty cell") for note in notes)
    assert any(note.startswith("ward: 1 value(s) seen fewer than 5 times") for note in notes)


@pytest.mark.parametrize(
    ("rows", "label", "message"),
    [
        ([[1, "F", "no", "w", "R1", 0]], "diagnosis", "no column 'diagnosis'"),
        ([[1, "F", "no", "w", "R1", 1], [2, "M", "no", "w", "R2", 1]], "outcome", "a single value"),
        ([[1, "F", "no", "w", "R1", ""], [2, "M", "no", "w", "R2", 1]], "outcome", "empty cells"),
        ([[1, "F", "no", "w", "R1"]], "outcome", "5 cells, the header has 6"),
    ],
)
def test_files_that_cannot_be_proposed_for_are_explained(
    tmp_path: Path, rows, label: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataSchemaError, match=message):
        suggest_schema(_write(tmp_path / "site.csv", rows), label=label)


def test_integer_class_labels_are_read_as_the_file_writes_them() -> None:
    schema = DataSchema.from_json(
        {"features": [{"name": "age"}], "label": "outcome", "task": "binary", "classes": [0, 1]}
    )
    assert schema.classes == ("0", "1")
    with pytest.raises(DataSchemaError, match="strings or whole numbers"):
        DataSchema.from_json(
            {"features": [{"name": "age"}], "label": "y", "task": "binary", "classes": [0.5, 1]}
        )
