"""Text studies in the control plane: the base model pinned at creation, only adapters stored
and combined, the adapter method's error in every round, the traffic against the full model."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.cache import cache
from platform_world import Site, spec_of, start_job
from rest_framework.test import APIClient

from federation.data.clinical_notes import clinical_notes_schema
from federation.models import TextModelConfig, model_config_from_json
from federation.models.lora import AdapterAggregation, lora_pairs
from federation.models.pins import builtin_pin
from federation.protocol import parse_task
from federation.wire import deserialize_weights, serialize_weights
from training.blobs import blob_store
from training.models import ModelVersion, Round

pytestmark = pytest.mark.django_db

SCHEMA = clinical_notes_schema(max_tokens=64).to_json()
#: What a coordinator sends: the built-in model by name, class names and token limit left to the schema.
MODEL = {
    "kind": "lora_encoder",
    "task": "multiclass",
    "num_classes": 4,
    "base_model": "all-MiniLM-L6-v2",
    "lora": {"rank": 4, "alpha": 8},
}
TRAINING = {"epochs": 1, "batch_size": 16, "learning_rate": 0.002, "max_steps": 5}


@pytest.fixture(autouse=True)
def _isolated_storage(agent_world: None) -> None:
    cache.clear()


@pytest.fixture
def text_payload(study_payload: dict[str, object]) -> dict[str, object]:
    return {**study_payload, "model": dict(MODEL), "data_schema": SCHEMA, "training": TRAINING}


def test_a_text_study_pins_its_base_model_when_created(
    coordinator_client: APIClient, text_payload: dict[str, object]
) -> None:
    response = coordinator_client.post("/api/v1/studies/", text_payload, format="json")
    assert response.status_code == 201, response.content
    stored = response.json()["model"]
    config = model_config_from_json(stored)
    assert isinstance(config, TextModelConfig)
    assert config.base_model == builtin_pin("all-MiniLM-L6-v2")
    assert config.base_model.files["model.safetensors"].startswith("53aa5117")
    assert config.class_names == ("cardiology", "pulmonology", "gastroenterology", "neurology")
    assert config.max_tokens == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_schema": "tabular"}, "data schema needs kind text"),
        ({"model": {**MODEL, "base_model": "gpt-5"}}, "no built-in base model 'gpt-5'"),
        ({"model": {**MODEL, "class_names": ["a", "b", "c", "d"]}}, "schema's classes"),
        ({"model": {**MODEL, "max_tokens": 128}}, "one token limit"),
        ({"model": {**MODEL, "num_classes": 3}}, "class_names must name the 3 classes"),
        (
            {"model": {**MODEL, "lora": {"aggregation": "svd"}}, "privacy": {"secure_aggregation": True}},
            "ffa",
        ),
        ({"feature_scaling": {"mean": [0.0], "std": [1.0]}}, "numeric features"),
        ({"training": {**TRAINING, "proximal_mu": 0.1}}, "proximal"),
        ({"training": {**TRAINING, "max_steps": 0}}, "max_steps"),
        ({"training": {**TRAINING, "epochs": 2}}, "leave epochs at 1"),
    ],
)
def test_text_studies_that_do_not_fit_are_refused_with_the_reason(
    coordinator_client: APIClient,
    text_payload: dict[str, object],
    study_payload: dict[str, object],
    change: dict[str, object],
    message: str,
) -> None:
    if change.get("data_schema") == "tabular":
        change = {"data_schema": study_payload["data_schema"]}
    body = {**text_payload, **change}
    if "privacy" in change:
        body["institutions"] = [*body["institutions"], _third_site().pk]  # type: ignore[list-item]
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 400, response.content
    assert message in response.content.decode()


def test_a_tabular_model_on_a_text_schema_is_refused(
    coordinator_client: APIClient, study_payload: dict[str, object]
) -> None:
    response = coordinator_client.post(
        "/api/v1/studies/", {**study_payload, "data_schema": SCHEMA}, format="json"
    )
    assert response.status_code == 400
    assert "needs a text model" in response.content.decode()


def _third_site():  # type: ignore[no-untyped-def]
    from institutions import services

    return services.institution_create(name="Hospital C", actor="user:test")


def _text_job(sites: list[Site], aggregation: str = "fedit"):  # type: ignore[no-untyped-def]
    model = {**MODEL, "lora": {"rank": 4, "alpha": 8, "aggregation": aggregation}}
    return start_job(
        [site.institution for site in sites],
        name=f"notes-{aggregation}",
        model=model,
        training=TRAINING,
        data_schema=SCHEMA,
        rounds=1,
    )


def _relative_error(sent: list, shares: list[float], pairs: list[tuple[str, str]]) -> float:  # type: ignore[type-arg]
    """The issue's formula in plain numpy: ||mean(B A) - mean(B) mean(A)|| / ||mean(B A)||."""
    difference, reference = 0.0, 0.0
    for a_name, b_name in pairs:
        a = [site[a_name].astype(np.float64) for site in sent]
        b = [site[b_name].astype(np.float64) for site in sent]
        exact = sum(c * (bi @ ai) for c, ai, bi in zip(shares, a, b, strict=True))
        approx = sum(c * bi for c, bi in zip(shares, b, strict=True)) @ sum(
            c * ai for c, ai in zip(shares, a, strict=True)
        )
        difference += float(np.sum((exact - approx) ** 2))
        reference += float(np.sum(exact**2))
    return float(np.sqrt(difference / reference))


@pytest.mark.parametrize("aggregation", ["fedit", "svd", "ffa"])
def test_a_round_combines_adapters_only_and_reports_the_method_error(
    aggregation: str, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    sites = [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]
    job = _text_job(sites, aggregation)
    assert job.plan.adapters is AdapterAggregation(aggregation)
    config = model_config_from_json(job.study.model_config)
    assert isinstance(config, TextModelConfig)
    base_blob = sites[0].model(sites[0].work())
    spec = spec_of(base_blob)
    assert spec == config.model_spec() == job.plan.model_spec  # adapters and head: no base weights
    assert len(base_blob) < config.full_model_bytes / 150
    base = deserialize_weights(base_blob, spec=spec)
    rng = np.random.default_rng(0)
    sent = []
    for index, site in enumerate(sites):
        task = site.work()
        assert parse_task(task).study.training.max_steps == 5
        weights = {
            name: (array + rng.normal(0, 0.05, array.shape)).astype(np.float32)
            for name, array in base.items()
        }
        sent.append(weights)
        with django_capture_on_commit_callbacks(execute=True):
            response = site.upload(task, serialize_weights(weights, spec=spec), num_examples=10 * (index + 1))
        assert response.status_code == 201, response.content
    round_ = Round.objects.get(job=job, number=1)
    shares = [10 / 60, 20 / 60, 30 / 60]
    pairs = lora_pairs(spec)
    if aggregation == "ffa":  # A frozen: the sites' A are ignored, so the means of B and A are exact
        assert round_.metrics["lora_fedit_error"] < 1e-6
    else:
        assert round_.metrics["lora_fedit_error"] == pytest.approx(
            _relative_error(sent, shares, pairs), rel=1e-5
        )
    if aggregation == "svd":
        assert 0 < round_.metrics["lora_svd_residual"] < 1
    version = ModelVersion.objects.get(job=job, number=1)
    pinned = {"name": "all-MiniLM-L6-v2", "files": dict(builtin_pin("all-MiniLM-L6-v2").files)}
    assert version.provenance["base_model"] == pinned  # the base model these adapters belong to
    assert ModelVersion.objects.get(job=job, number=0).provenance["base_model"] == pinned
    result = deserialize_weights(blob_store().read(version.sha256), spec=spec)
    for a_name, _ in pairs:
        if aggregation == "ffa":
            np.testing.assert_array_equal(result[a_name], base[a_name])
        else:
            assert not np.array_equal(result[a_name], base[a_name])


def test_progress_counts_the_bytes_each_way_against_the_full_model(
    coordinator_client: APIClient, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    sites = [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]
    job = _text_job(sites)
    sizes = []
    for site in sites:
        task = site.work()
        blob = site.model(task)
        sizes.append(len(blob))
        with django_capture_on_commit_callbacks(execute=True):
            assert site.upload(task, blob).status_code == 201
    progress = coordinator_client.get(f"/api/v1/jobs/{job.pk}/progress/").json()
    first = progress["rounds"][0]
    assert first["bytes_up"] == sum(sizes)
    assert first["bytes_down"] == 3 * sizes[0]
    config = model_config_from_json(job.study.model_config)
    assert isinstance(config, TextModelConfig)
    assert progress["full_model_bytes"] == config.full_model_bytes > 150 * sizes[0]


def test_max_steps_is_refused_for_a_tabular_model(
    coordinator_client: APIClient, study_payload: dict[str, object]
) -> None:
    body = {**study_payload, "training": {**study_payload["training"], "max_steps": 5}}  # type: ignore[dict-item]
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 400
    assert "tabular model trains by epochs" in response.content.decode()
