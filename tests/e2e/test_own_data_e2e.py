"""The consortium's own CSV files, as a new user would run them: a schema proposed by
``silo-agent schema suggest`` from one site's file, then ``deploy/run_local.py --csv ...
--schema ... --test ...``: the feature scaling and categories agreed through the agents, 3 rounds over
HTTP, the final model scored on a file no site holds, against pooled training. One site
holds a category the others do not: the agreement adds it for every site."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REPO, no_process_left, run_federation

from deploy.local.example_files import write_example_files

pytestmark = pytest.mark.e2e


def test_a_federation_on_the_consortiums_own_files(tmp_path: Path) -> None:
    *sites, test = write_example_files(tmp_path)
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
