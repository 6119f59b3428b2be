"""A language-model federation over real HTTP: MiniLM with LoRA adapters on clinical notes,
three agents, one round of two steps (``deploy/run_local_llm.py``, what ``make demo-llm``
runs longer). Once plain, once under secure aggregation with FFA-LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import REPO, no_process_left

pytestmark = [pytest.mark.e2e, pytest.mark.llm]


def run_text_federation(tmp_path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    command = [
        sys.executable,
        str(REPO / "deploy" / "run_local_llm.py"),
        "--rounds",
        "1",
        "--max-steps",
        "2",
        "--notes",
        "40",
        "--test-notes",
        "10",
        "--max-tokens",
        "64",
        "--data-dir",
        str(tmp_path / "federation"),
        "--timeout",
        "300",
        *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=480, check=False)
    print(f"run_local_llm {' '.join(extra)}: {time.monotonic() - started:.1f} s wall")
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("[#] round   1/1: 3 sites") for line in lines), result.stdout
    print(lines[-1])
    figures: dict = json.loads(lines[-1])  # type: ignore[type-arg]
    return figures


def check_adapters_only(figures: dict) -> None:  # type: ignore[type-arg]
    # MiniLM's adapters (r=8 on query, key and value) and a 4-class head: 111,747 float32
    # numbers in safetensors, against the whole model's 90.9 MB.
    assert 447_000 < figures["update_bytes"] < 460_000
    assert figures["model_bytes"] == 4 * (22_713_216 + 4 * 384 + 4)
    assert figures["bytes_ratio"] > 150
    assert figures["round_bytes_up"] == [3 * figures["update_bytes"]]
    assert figures["test_rows"] == 30
    assert 0.0 <= figures["federated"] <= 1.0


def test_minilm_with_lora_over_http(tmp_path: Path) -> None:
    figures = run_text_federation(tmp_path)
    check_adapters_only(figures)
    assert figures["aggregation"] == "fedit"
    assert 0 < figures["per_round_fedit_error"][0] < 1  # the sites trained A differently
    no_process_left(tmp_path)


def test_ffa_lora_under_secure_aggregation_over_http(tmp_path: Path) -> None:
    figures = run_text_federation(
        tmp_path, "--aggregation", "ffa", "--privacy", '{"secure_aggregation": true}'
    )
    assert figures["secure_aggregation_rounds"] == 1
    assert figures["per_round_fedit_error"] == [None]  # the server saw only the sum
    # Masked updates carry 8 bytes per number (fixed point modulo 2^64): twice the plain size.
    assert figures["update_bytes"] > 2 * 447_000
    no_process_left(tmp_path)
