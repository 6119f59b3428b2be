"""The agent with a text study: notes from a CSV file, the pinned MiniLM found and checked,
adapters only in the upload, a refusal when the site's copy of the model differs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from agent_fakes import FakeServer, RunnerHarness, Site, make_task

from federation.data.clinical_notes import clinical_notes_schema, generate_site_notes
from federation.data.text import write_text
from federation.models import TextModelConfig, model_config_from_json
from federation.models.lora import LoraSettings
from federation.models.pins import builtin_pin, locate_builtin
from federation.wire import deserialize_weights, serialize_weights
from silo_agent.client import RetryPolicy
from silo_agent.runner import ProgressStep, TaskOutcome

pytestmark = pytest.mark.llm

SCHEMA = clinical_notes_schema(max_tokens=32)
CONFIG = TextModelConfig(
    kind="lora_encoder",
    task="multiclass",
    num_classes=4,
    class_names=SCHEMA.classes,
    base_model=builtin_pin("all-MiniLM-L6-v2"),
    lora=LoraSettings(rank=4, alpha=8),
    max_tokens=32,
)
TRAINING = {
    "epochs": 1,
    "batch_size": 8,
    "learning_rate": 0.002,
    "proximal_mu": 0.0,
    "max_steps": 2,
    "class_weighting": True,
}


def _text_site(directory: Path, models: str = "") -> Site:
    write_text(directory / "notes.csv", generate_site_notes(0, 40, seed=3), SCHEMA)
    config = f"""
server_url = "https://fl.example.org"
credential_file = "credential.json"
state_dir = "state"

[data]
path = "notes.csv"

[models]
device = "cpu"
{models}

[policy]
approved_studies = ["*"]
allowed_model_kinds = ["lora_encoder"]
"""
    (directory / "agent.toml").write_text(config)
    credential = directory / "credential.json"
    credential.write_text(
        '{"server_url": "https://fl.example.org", "credential_id": 3, '
        '"institution": {"id": 7, "name": "St. Example"}, "key": "fha_3_s3cr3t-key-value"}'
    )
    credential.chmod(0o600)
    return Site(directory, directory / "agent.toml", credential, directory / "state", [])


def _text_task(model: bytes, **changes: object) -> dict[str, object]:
    return make_task(
        model,
        model=CONFIG.to_json(),
        data_schema=SCHEMA.to_json(),
        feature_scaling=None,
        training=TRAINING,
        **changes,
    )


def _global_model() -> bytes:
    return serialize_weights(CONFIG.initial_weights(seed=0), spec=CONFIG.model_spec())


def test_a_text_round_trains_the_adapters_and_sends_only_them(tmp_path: Path) -> None:
    server = FakeServer()
    model = _global_model()
    server.offer(_text_task(model), model)
    harness = RunnerHarness(server, _text_site(tmp_path), RetryPolicy(max_attempts=2))
    assert harness.runner.handle(server.tasks[0]) is TaskOutcome.UPLOADED
    assert ProgressStep.TRAINING in harness.steps
    sent = deserialize_weights(server.stored_updates[7], spec=CONFIG.model_spec())
    assert set(sent) == set(CONFIG.model_spec().names)  # adapters and head: no base weights
    start = CONFIG.initial_weights(seed=0)
    assert any(not np.array_equal(sent[name], start[name]) for name in sent)
    meta = server.upload_attempts[0].meta
    assert meta["num_examples"] == 30  # 40 notes less the quarter the study keeps for validation
    assert {"global_accuracy", "local_accuracy", "local_macro_f1"} <= set(meta["metrics"])  # type: ignore[arg-type]


def test_the_base_model_is_loaded_once_per_process(tmp_path: Path) -> None:
    from federation.models import text_models

    server = FakeServer()
    model = _global_model()
    server.offer(_text_task(model, id=1), model)
    server.offer({**_text_task(model), "round_id": 8, "round_number": 2}, model)
    harness = RunnerHarness(server, _text_site(tmp_path), RetryPolicy(max_attempts=2))
    harness.runner.handle(server.tasks[0])
    loaded = next(iter(text_models._LOADED.values()))
    harness.runner.handle(server.tasks[1])
    assert next(iter(text_models._LOADED.values())) is loaded
    assert sorted(server.stored_updates) == [7, 8]


def test_a_site_whose_model_file_differs_refuses_naming_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "minilm"
    shutil.copytree(locate_builtin("all-MiniLM-L6-v2"), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    site = _text_site(site_dir, models='[models.folders]\n"all-MiniLM-L6-v2" = "../minilm"')
    server = FakeServer()
    model = _global_model()
    server.offer(_text_task(model), model)
    harness = RunnerHarness(server, site, RetryPolicy(max_attempts=2))
    assert harness.runner.handle(server.tasks[0]) is TaskOutcome.REFUSED
    [(job, reason)] = server.refusals
    assert job == 1
    assert "model.safetensors differs" in reason
    assert not server.stored_updates


def test_the_study_config_round_trips_through_the_task() -> None:
    model = _global_model()
    task = _text_task(model)
    assert model_config_from_json(task["study"]["model"]) == CONFIG  # type: ignore[index]
