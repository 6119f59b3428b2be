"""``silo-agent schema suggest``: a schema proposed from the site's own file, written for
review, with the notes on stderr; no configuration needed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from federation.data import DataSchema
from silo_agent.cli import EXIT_CONFIG, EXIT_OK, Runtime, main

QUIET = Runtime(setup_logging=False, handle_signals=False)


def _site(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "smoker", "record", "outcome"])
        writer.writerows([[30 + i, "yes" if i % 4 == 0 else "no", f"R{i:05d}", i % 2] for i in range(40)])
    return path


def test_the_command_writes_the_schema_and_lists_the_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, output = _site(tmp_path / "site.csv"), tmp_path / "schema.json"
    code = main(["schema", "suggest", str(path), "--label", "outcome", "--output", str(output)], QUIET)
    assert code == EXIT_OK
    schema = DataSchema.from_json(json.loads(output.read_text()))
    assert (schema.label, schema.classes) == ("outcome", ("0", "1"))
    err = capsys.readouterr().err
    assert "40 rows, 2 features (2 encoded), binary" in err
    assert "review: record: left out" in err


def test_a_missing_label_column_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["schema", "suggest", str(_site(tmp_path / "site.csv")), "--label", "nope"], QUIET)
        == EXIT_CONFIG
    )
    assert "no column 'nope'" in capsys.readouterr().err
    assert capsys.readouterr().out == ""
