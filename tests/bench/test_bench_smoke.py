"""The benchmark script keeps working (tiny sizes; the figures themselves come from make bench)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "aggregate_bench.py"


def test_the_aggregation_benchmark_runs_and_agrees_with_the_in_memory_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["aggregate_bench.py", "--params", "20000", "--updates", "4", "--repeats", "1"]
    )
    runpy.run_path(str(BENCH), run_name="__main__")  # asserts the rules agree to 1e-6
    output = capsys.readouterr().out
    for rule in ("fedavg streaming (files)", "fedavg all in memory", "median streaming", "multi-krum"):
        assert rule in output


SECAGG_BENCH = BENCH.parent / "secagg_bench.py"


@pytest.mark.privacy
def test_the_secure_aggregation_benchmark_runs_and_matches_plaintext_fedavg(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["secagg_bench.py", "--sizes", "2000", "--sites", "4"])
    runpy.run_path(str(SECAGG_BENCH), run_name="__main__")  # asserts it matches within the bound
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["secagg"]
    assert [row["params"] for row in figures] == [2000]
    assert figures[0]["bytes_per_site"] > figures[0]["plaintext_bytes_per_site"]


PRIVACY_FIGURES = BENCH.parent / "privacy_figures.py"


@pytest.mark.privacy
def test_the_privacy_figures_script_runs_with_secure_aggregation_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["privacy_figures.py", "--seeds", "1", "--rounds", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(PRIVACY_FIGURES), run_name="__main__")
    output = capsys.readouterr().out
    assert "| secure aggregation (3 sites, threshold 2), no DP |" in output
    figures = json.loads(output.strip().splitlines()[-1])["privacy_accuracy"]
    assert figures["rounds"] == 2
    assert figures["secure_aggregation"]["no_dp"]["accuracy"] == figures["no_dp"]["accuracy"]
    assert figures["secure_aggregation"]["client"]["epsilon_spent"] <= 3.0
    assert (tmp_path / "privacy-accuracy-epsilon.png").stat().st_size > 0


PRIVACY_CHECKS = BENCH.parent / "privacy_checks.py"


@pytest.mark.privacy
def test_the_privacy_checks_print_figures_within_their_bounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["privacy_checks.py", "--dimension", "5000"])
    runpy.run_path(str(PRIVACY_CHECKS), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(row["max_error"] <= row["bound"] for row in figures["secure_vs_plaintext"])
    assert all(row["ours"] == pytest.approx(row["dp_accounting"], rel=0.01) for row in figures["epsilon"])
    assert figures["noise_std"]["measured"] == pytest.approx(figures["noise_std"]["intended"], rel=0.02)
    assert "threshold is 3" in figures["too_few_survivors"]
