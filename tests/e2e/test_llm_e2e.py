"""A language-model federation over real HTTP: MiniLM with LoRA adapters on clinical notes,
three agents, one round of two steps (``deploy/run_local_llm.py``, what ``make demo-llm``
runs longer). Once plain, once under secure aggregation with FFA-LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import no_process_left, run_federation

from federation.data.clinical_notes import clinical_notes_federation, clinical_notes_schema
from federation.data.text import write_text

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


def test_the_consortiums_own_text_files_through_run_local(tmp_path: Path) -> None:
    """``deploy/run_local.py --csv ... --schema ...`` with a text schema: each site's own notes
    (CSV or JSON Lines) train MiniLM's adapters, rated on a file no site holds."""
    schema = clinical_notes_schema(max_tokens=64)
    silos, test = clinical_notes_federation(num_sites=3, notes_per_site=30, test_notes_per_site=10, seed=1)
    files = [
        write_text(tmp_path / name, notes, schema)
        for name, notes in zip(("a.csv", "b.jsonl", "c.csv"), silos, strict=True)
    ]
    test_file = write_text(tmp_path / "test.csv", test, schema)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema.to_json()))
    own = ["--csv", *map(str, files), "--schema", str(schema_file), "--test", str(test_file)]
    figures = run_federation(tmp_path, *own, rounds=1)
    assert (figures["sites"], figures["rounds"], figures["test_rows"]) == (3, 1, 30)
    assert figures["model"].startswith("all-MiniLM-L6-v2 + LoRA")
    assert 0.0 <= figures["federated"] <= 1.0
    assert figures["bytes_ratio"] > 150  # adapters and head only on the wire
    no_process_left(tmp_path)
