"""Text studies in the console: the form offers the text models and the LoRA settings, and a
text job's page shows each round's traffic against the whole model."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from test_console_studies import _field_error, _study_form
from world import job_make, job_run, study_approve_all, study_make

from federation.data.clinical_notes import clinical_notes_schema
from federation.models import TextModelConfig, model_config_from_json
from federation.models.pins import builtin_pin
from institutions.models import Institution
from studies.models import Study

pytestmark = pytest.mark.django_db

SCHEMA = clinical_notes_schema(max_tokens=96).to_json()


def _text_form(participants: list[Institution], **changes: object) -> dict[str, object]:
    body = _study_form(
        participants,
        data_schema=json.dumps(SCHEMA),
        model_kind="lora_encoder",
        hidden_sizes="",
        strategy="fedavg",
        param_fedavg_server_learning_rate="",
        base_model="all-MiniLM-L6-v2",
        lora_rank="4",
        lora_alpha="8",
        lora_dropout="0.05",
        lora_target_modules="query, value",
        lora_aggregation="ffa",
        epochs="1",
        learning_rate="0.002",
        max_steps="15",
    )
    body.update(changes)
    return body


def test_the_form_offers_text_models_and_lora_settings(coordinator: Client, hospital_a: Institution) -> None:
    html = coordinator.get("/studies/new/").content.decode()
    assert 'value="lora_encoder"' in html
    assert 'value="lora_causal_lm"' in html
    assert "all-MiniLM-L6-v2 (encoder, 22.7M parameters)" in html
    assert "SmolLM2-135M-Instruct (causal_lm, 134.5M parameters)" in html
    for name in (
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_aggregation",
        "max_steps",
    ):
        assert f'name="{name}"' in html
    assert "FFA-LoRA: A frozen, only B trained" in html


def test_coordinator_creates_a_text_study(
    coordinator: Client, hospital_a: Institution, hospital_b: Institution
) -> None:
    response = coordinator.post("/studies/new/", _text_form([hospital_a, hospital_b]), follow=True)
    study = Study.objects.get(name="Readmission risk")
    assert response.redirect_chain[-1][0] == f"/studies/{study.pk}/"
    config = model_config_from_json(study.model_config)
    assert isinstance(config, TextModelConfig)
    assert config.base_model == builtin_pin("all-MiniLM-L6-v2")
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (4, 8.0, 0.05)
    assert config.lora.target_modules == ("query", "value")
    assert config.lora.aggregation.value == "ffa"
    assert config.class_names == ("cardiology", "pulmonology", "gastroenterology", "neurology")
    assert config.max_tokens == 96
    assert study.training["max_steps"] == 15
    assert "class_weighting" not in study.training


def test_a_study_can_weigh_classes(coordinator: Client, hospital_a: Institution) -> None:
    html = coordinator.get("/studies/new/").content.decode()
    assert 'type="checkbox" name="class_weighting"' in html
    coordinator.post("/studies/new/", _text_form([hospital_a], class_weighting="on"))
    assert Study.objects.get(name="Readmission risk").training["class_weighting"] is True


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"data_schema": None}, "model_kind", "needs a text data schema"),
        ({"model_kind": "mlp", "hidden_sizes": "8"}, "model_kind", "needs a text model"),
        ({"lora_target_modules": "q_proj"}, "lora_target_modules", "match no linear layer"),
        ({"epochs": "2"}, "max_steps", "leave epochs at 1"),
    ],
)
def test_text_settings_that_do_not_fit_are_shown_next_to_their_field(
    coordinator: Client, hospital_a: Institution, changes: dict[str, object], field: str, message: str
) -> None:
    body = _text_form([hospital_a], **changes)
    if changes.get("data_schema", "") is None:
        body["data_schema"] = _study_form([hospital_a])["data_schema"]
    html = coordinator.post("/studies/new/", body).content.decode()
    assert message in _field_error(html, field)
    assert not Study.objects.exists()


def test_a_text_job_page_shows_the_traffic_against_the_whole_model(
    coordinator: Client, hospital_a: Institution, hospital_b: Institution, isolated_model_storage: object
) -> None:
    model = {
        "kind": "lora_encoder",
        "task": "multiclass",
        "num_classes": 4,
        "base_model": "all-MiniLM-L6-v2",
        "lora": {"rank": 4},
    }
    study = study_make("notes", [hospital_a, hospital_b], model=model, data_schema=SCHEMA)
    study_approve_all(study)
    job = job_run(job_make(study, num_rounds=1))
    html = coordinator.get(f"/jobs/{job.pk}/").content.decode()
    assert "Traffic up / down" in html
    full = re.search(r'data-testid="full-model-bytes">([^<]+)<', html)
    assert full is not None
    # MiniLM's 22,713,216 weights and a 4 x 384 head in float32: 90,859,024 bytes, 86.65 MiB.
    assert full.group(1).replace("\xa0", " ") == "86.6 MB"
    live = coordinator.get(f"/jobs/{job.pk}/live.json").json()
    assert live["full_model_bytes"] == 4 * (22_713_216 + 4 * 384 + 4)
    assert live["rounds"][0]["bytes_up"] == live["rounds"][0]["bytes_down"] == 0  # nobody answered yet
