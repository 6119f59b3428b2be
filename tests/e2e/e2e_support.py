"""Running whole federations for the end-to-end tests: deploy/run_local.py as a child
process, its figures read from its last line, and no process left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_federation(tmp_path: Path, *extra: str, rounds: int = 3, script: str = "run_local.py") -> dict:  # type: ignore[type-arg]
    """Three sites, ``rounds`` rounds; ``extra`` are more options of ``deploy/<script>``."""
    command = [
        sys.executable,
        str(REPO / "deploy" / script),
        "--sites",
        "3",
        "--rounds",
        str(rounds),
        "--data-dir",
        str(tmp_path / "federation"),
        "--timeout",
        "240",
        *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, check=False)
    print(f"{script} {' '.join(extra)}: {time.monotonic() - started:.1f} s wall")
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    last_round = f"[{'#' * rounds}] round {rounds:>3}/{rounds}"
    assert any(line.startswith(last_round) for line in lines), result.stdout
    print(lines[-1])
    figures: dict = json.loads(lines[-1])  # type: ignore[type-arg]
    return figures


def no_process_left(tmp_path: Path) -> None:
    folder = str(tmp_path / "federation")
    leftover = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True, check=False).stdout
    assert leftover.strip() == "", f"processes still running: {leftover}"
