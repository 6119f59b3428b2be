"""``python -m federation.analytics`` on the built-in lung cancer data: every combined
statistic equals the pooled one, and small histogram cells are hidden at the sites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.analytics.__main__ import main

pytestmark = pytest.mark.analytics


def test_the_lung_data_across_three_institutions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plot", str(tmp_path / "km.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["sites"], result["rows"]) == (3, [36, 23, 20])
    assert max(result["max_abs_difference_from_pooled"].values()) < 1e-9
    assert result["columns"]["meal.cal"]["missing"] == 17
    histogram = result["histogram"]
    assert sum(histogram["suppressed_at_sites"]) > 0  # some sites' small cells were hidden
    for shown, hidden, pooled in zip(
        histogram["combined"], histogram["suppressed"], histogram["pooled"], strict=True
    ):
        assert shown == pooled or (hidden and shown < pooled)
    assert histogram["median_within"] == [60.0, 65.0]
    assert 0 < result["log_rank"]["p_value"] <= 1
    assert (tmp_path / "km.png").stat().st_size > 10_000


def test_the_sites_own_csv_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from federation.analytics.__main__ import lung_sites

    paths = []
    for index, site in enumerate(lung_sites(2)):
        path = tmp_path / f"site{index}.csv"
        site.rename(columns={"time": "days", "event": "died"}).to_csv(path, index=False)
        paths.append(str(path))
    arguments = ["--csv", *paths, "--numeric", "age,wt.loss", "--time", "days", "--event", "died"]
    assert main(arguments) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["sites"], sorted(result["columns"])) == (2, ["age", "wt.loss"])
    assert max(result["max_abs_difference_from_pooled"].values()) < 1e-9


def test_the_german_breast_cancer_study_dealt_to_three_sites(capsys: pytest.CaptureFixture[str]) -> None:
    from lifelines.datasets import load_gbsg2

    assert main(["--data", "gbsg2", "--bins", "20", "85", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(result["rows"]) == len(load_gbsg2()) == 686
    assert max(result["max_abs_difference_from_pooled"].values()) < 1e-9
    assert result["columns"]["pnodes"]["count"] == 686
    # Every site shares the trial's population: the log-rank test finds no difference.
    assert result["log_rank"]["p_value"] > 0.05
