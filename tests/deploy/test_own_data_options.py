"""``deploy/run_local.py --csv``: options that do not fit, and files that cannot be read,
are refused before any process starts, naming the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local.own_data import OwnData  # noqa: E402
from deploy.run_local import parse_args  # noqa: E402

SCHEMA = {
    "features": [{"name": "age"}, {"name": "smoker", "kind": "boolean"}],
    "label": "outcome",
    "task": "binary",
    "classes": [0, 1],
}


def _files(folder: Path, second_row: str = "71,yes,1") -> list[str]:
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    for name in ("a", "b"):
        (folder / f"{name}.csv").write_text(f"age,smoker,outcome\n63,no,0\n{second_row}\n")
    return [str(folder / "a.csv"), str(folder / "b.csv")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--csv", "a.csv"], "--csv needs --schema"),
        (["--schema", "schema.json"], "go with --csv"),
        (["--no-scaling"], "go with --csv"),
    ],
)
def test_options_that_do_not_fit_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_files_are_checked_before_anything_starts(tmp_path: Path) -> None:
    files = _files(tmp_path)
    own = OwnData.from_args(parse_args(["--csv", *files, "--schema", str(tmp_path / "schema.json")]))
    assert (own.schema.classes, len(own.site_files), own.test_file) == (("0", "1"), 2, None)
    bad = _files(tmp_path, second_row="71,maybe,1")
    with pytest.raises(RuntimeError, match=r"a\.csv, line 3, column 'smoker': not a boolean"):
        OwnData.from_args(parse_args(["--csv", *bad, "--schema", str(tmp_path / "schema.json")]))
    with pytest.raises(RuntimeError, match=r"--schema .*missing\.json"):
        OwnData.from_args(parse_args(["--csv", *bad, "--schema", str(tmp_path / "missing.json")]))
