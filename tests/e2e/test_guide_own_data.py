"""docs/guide-own-data.md, run exactly as written: its shell and Python blocks in order, from
the repository's folder, over HTTP against a real control plane and three real agents. It
ends with the bundle's predictions on rows no hospital held."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import REPO

pytestmark = pytest.mark.e2e

GUIDE = REPO / "docs" / "guide-own-data.md"
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```$", re.S | re.M)
WORK = REPO / "var" / "guide"


def guide_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def stop_leftovers() -> None:
    """Whatever the guide started and did not stop (when a step failed)."""
    for pid_file in WORK.glob("**/*.pid"):
        subprocess.run(["kill", pid_file.read_text().strip()], check=False, capture_output=True)


def accuracy(predictions: Path, truth: Path) -> tuple[int, float]:
    with predictions.open() as handle:
        predicted = [row["predicted_diagnosis"] for row in csv.DictReader(handle)]
    with truth.open() as handle:
        labels = [row["diagnosis"] for row in csv.DictReader(handle)]
    assert len(predicted) == len(labels)
    return len(labels), sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)


def test_the_guide_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = guide_blocks()
    assert [language for language, _ in blocks].count("sh") >= 5
    monkeypatch.chdir(REPO)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    namespace: dict[str, object] = {"__name__": "guide"}
    started = time.monotonic()
    try:
        for language, code in blocks:
            if language == "sh":
                subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", code], cwd=REPO, env=env, check=True, timeout=600
                )
            else:
                exec(compile(code, str(GUIDE), "exec"), namespace)  # the guide's own code
    finally:
        stop_leftovers()
    seconds = time.monotonic() - started
    rows, correct = accuracy(WORK / "predictions.csv", WORK / "test.csv")
    assert rows == 142
    assert correct >= 0.9
    assert "hospice" in namespace["units"]  # type: ignore[operator]  # Hospital C's value, agreed
    shell_commands = sum(
        1
        for language, code in blocks
        if language == "sh"
        for line in code.splitlines()
        if line.strip()
        and not line.strip().startswith(("for ", "do", "done", "until", "#"))
        and not line.rstrip().endswith("\\")
    )
    api_calls = sum(len(re.findall(r"\b(?:api|owner|httpx)\.(?:get|post)\(", code)) for _, code in blocks)
    figure = {"shell_commands": shell_commands, "api_calls_written": api_calls, "seconds": round(seconds, 1)}
    print(json.dumps({"guide": figure, "test_accuracy": round(correct, 4)}))
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline and subprocess.run(["pgrep", "-f", str(WORK)], capture_output=True).stdout
    ):
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "var/guide"], capture_output=True, text=True).stdout == ""
