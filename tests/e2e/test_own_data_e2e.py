"""The consortium's own CSV files, as a new user would run them: a schema proposed by
``silo-agent schema suggest`` from one site's file, then ``deploy/run_local.py --csv ...
--schema ... --test ...``: the feature scaling and categories agreed through the agents, 3 rounds over
HTTP, the final model scored on a file no site holds, against pooled training. One site
holds a category the others do not: the agreement adds it for every site."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_support import REPO, no_process_left, run_federation

from federation.data import load_builtin

pytestmark = pytest.mark.e2e


def write_hospital_files(folder: Path) -> list[Path]:
    """Breast-cancer patients in four files (three sites and a test file), as an export
    might look: an identifier, a yes/no column, a categorical unit and a named diagnosis."""
    data = load_builtin("breast_cancer")
    parts = np.array_split(np.random.default_rng(0).permutation(len(data)), 4)
    paths = []
    for name, rows in zip(("site-a", "site-b", "site-c", "test"), parts, strict=True):
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["patient", *data.feature_names, "smoker", "unit", "diagnosis"])
            for row in rows:
                cells = [f"{value:.6g}" for value in data.features[row]]
                unit = ["ward 1", "ward 2", "day clinic"][row % 3]
                if name == "site-c" and row % 7 == 0:
                    unit = "hospice"  # only site C has it: the schema from site A does not list it
                extra = ["yes" if row % 3 == 0 else "no", unit]
                writer.writerow([f"P{row:05d}", *cells, *extra, ["malignant", "benign"][data.labels[row]]])
        paths.append(path)
    return paths


def test_a_federation_on_the_consortiums_own_files(tmp_path: Path) -> None:
    *sites, test = write_hospital_files(tmp_path)
    schema = tmp_path / "schema.json"
    agent = [str(Path(sys.executable).parent / "silo-agent"), "schema", "suggest", str(sites[0])]
    command = [*agent, "--label", "diagnosis", "--output", str(schema)]
    suggested = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert suggested.returncode == 0, suggested.stderr
    assert "patient: left out" in suggested.stderr  # the identifier never becomes a feature
    files = ["--csv", *map(str, sites), "--schema", str(schema), "--test", str(test)]
    figures = run_federation(tmp_path, *files, rounds=3)
    assert (figures["sites"], figures["rounds"], figures["test_rows"]) == (3, 3, 142)
    assert figures["feature_scaling"] is True
    # 30 measurements, smoker, and the unit's four values: the agreement added site C's hospice.
    assert figures["features"] == 35
    assert figures["federated_accuracy"] >= 0.9
    assert figures["federated_accuracy"] >= figures["centralized_accuracy"] - 0.05
    assert figures["sites_final_evaluation"]["accuracy"] >= 0.9
    no_process_left(tmp_path)
