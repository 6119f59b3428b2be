"""A language-model federation over real HTTP: MiniLM with LoRA adapters on clinical notes,
three agents, one round of two steps (``deploy/run_local_llm.py``, what ``make demo-llm``
runs longer). Once plain, once under secure aggregation with FFA-LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import no_process_left, run_federation

pytestmark = [pytest.mark.e2e, pytest.mark.llm]


def run_text_federation(tmp_path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    """One round of two steps on 40 notes a site (``deploy/run_local_llm.py``)."""
    small = [
        "--max-steps",
        "2",
        "--notes",
        "40",
        "--test-notes",
        "10",
        "--max-tokens",
        "64",
        "--timeout",
        "300",
    ]
    return run_federation(tmp_path, *small, *extra, rounds=1, script="run_local_llm.py")


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
