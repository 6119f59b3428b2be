"""The benchmark script keeps working (tiny sizes; the figures themselves come from make bench)."""

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
