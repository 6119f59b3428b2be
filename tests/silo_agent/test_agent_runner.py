"""Handling train and evaluate tasks against the fake server, including crash and restart."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_fakes import MODEL_CONFIG, global_model_bytes, make_task

from federation.models import ModelConfig, build_model
from federation.wire import deserialize_weights, sha256_hex
from silo_agent.client import RetryPolicy
from silo_agent.config import load_config
from silo_agent.errors import ServerUnreachableError, TaskError
from silo_agent.local_data import DataCache
from silo_agent.logs import ContextFilter
from silo_agent.runner import ProgressStep, TaskOutcome, training_seed
from silo_agent.state import STATE_FILE, Step
from silo_agent.tasks import parse_task


def test_a_train_task_uploads_exactly_one_update_bound_to_its_round(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, job_id=4, round_id=21, round_number=2)
    server.offer(task, model)
    harness = make_harness()

    assert harness.runner.handle(task) is TaskOutcome.UPLOADED

    assert len(server.upload_attempts) == 1
    attempt = server.upload_attempts[0]
    assert attempt.status == 201
    weights = deserialize_weights(server.stored_updates[21], spec=build_model(MODEL_CONFIG).model_spec())
    assert not np.array_equal(
        weights["linear.weight"],
        deserialize_weights(model, spec=build_model(MODEL_CONFIG).model_spec())["linear.weight"],
    )
    assert attempt.meta["job_id"] == 4
    assert attempt.meta["round_number"] == 2
    assert attempt.meta["base_model_sha256"] == sha256_hex(model)
    prepared = DataCache(load_config(site.config_path).data, 7).prepare(parse_task(task).study, MODEL_CONFIG)
    assert attempt.meta["num_examples"] == len(prepared.train) == 120
    metrics = attempt.meta["metrics"]
    assert {"global_accuracy", "global_log_loss", "local_accuracy", "local_log_loss"} <= set(metrics)
    assert metrics["local_accuracy"] > 0.85  # standardized breast cancer is easy
    assert harness.steps == [ProgressStep.DOWNLOADING, ProgressStep.TRAINING, ProgressStep.UPLOADING]


def test_only_aggregates_travel_in_the_update_meta(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model)
    server.offer(task, model)
    make_harness().runner.handle(task)

    meta = server.upload_attempts[0].meta
    assert set(meta) == {"num_examples", "metrics", "base_model_sha256", "job_id", "round_number"}
    assert all(isinstance(value, float) for value in meta["metrics"].values())


def test_state_records_the_finished_round_and_drops_its_files(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=9)
    server.offer(task, model)
    make_harness().runner.handle(task)

    state = json.loads((site.state_dir / STATE_FILE).read_text())
    assert state["format"] == 1
    assert state["current"]["step"] == Step.UPLOADED
    assert state["current"]["round_id"] == 9
    assert state["completed"] == ["train:9"]
    assert list((site.state_dir / "updates").iterdir()) == []
    assert list((site.state_dir / "models").iterdir()) == []


@pytest.mark.parametrize(
    "fault", ["lost", httpx.ConnectError("connection refused")], ids=["response-lost", "never-sent"]
)
def test_a_restart_after_training_sends_the_same_bytes_and_does_not_train_again(
    server, site, make_harness, fault
):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    server.faults["rounds/7/update"] = [fault]
    first = make_harness(RetryPolicy(max_attempts=1))
    with pytest.raises(ServerUnreachableError):
        first.runner.handle(task)
    assert first.steps.count(ProgressStep.TRAINING) == 1

    second = make_harness()  # a new process on the same state folder
    assert second.runner.handle(task) is TaskOutcome.UPLOADED

    assert ProgressStep.TRAINING not in second.steps
    assert ProgressStep.DOWNLOADING not in second.steps
    shas = {attempt.sha256 for attempt in server.upload_attempts}
    assert len(shas) == 1
    assert server.upload_attempts[-1].status == (200 if fault == "lost" else 201)
    assert len(server.stored_updates) == 1


def test_a_lost_answer_is_retried_with_the_same_bytes_within_one_attempt(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    server.faults["rounds/7/update"] = ["lost", 503]

    assert make_harness().runner.handle(task) is TaskOutcome.UPLOADED

    assert [attempt.status for attempt in server.upload_attempts] == [201, 200]
    assert len({attempt.sha256 for attempt in server.upload_attempts}) == 1


def test_a_round_already_done_is_not_redone(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    make_harness().runner.handle(task)

    again = make_harness()
    assert again.runner.handle(task) is TaskOutcome.ALREADY_DONE
    assert len(server.upload_attempts) == 1
    assert again.steps == []


def test_an_update_the_server_already_holds_is_not_replaced(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    server.stored_updates[7] = b"an update sent before the state was lost"

    assert make_harness().runner.handle(task) is TaskOutcome.UPLOADED

    assert server.upload_attempts[0].status == 409
    assert len(server.upload_attempts) == 1
    assert server.stored_updates[7] == b"an update sent before the state was lost"


def test_training_is_deterministic_for_a_site_and_round(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    make_harness().runner.handle(task)
    first = server.stored_updates.pop(7)
    shutil.rmtree(site.state_dir)  # a site that lost everything trains again

    make_harness().runner.handle(task)
    assert server.stored_updates[7] == first


def test_a_model_whose_digest_differs_from_the_task_is_rejected(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, round_id=7)
    server.offer(task, model)
    server.models[12] = global_model_bytes(seed=1)  # same size, other bytes

    with pytest.raises(TaskError, match="sha256"):
        make_harness().runner.handle(task)
    assert server.upload_attempts == []


def test_an_evaluate_task_posts_the_final_models_metrics(server, site, make_harness, caplog):
    model = global_model_bytes()
    task = make_task(model, kind="evaluate", round_id=30, round_number=3)
    server.offer(task, model)
    harness = make_harness()
    caplog.handler.addFilter(ContextFilter())

    with caplog.at_level(logging.INFO, logger="silo_agent"):
        assert harness.runner.handle(task) is TaskOutcome.EVALUATED

    # Its log lines name the final evaluation, not a "round 3" that no site trained.
    contexts = {record.context for record in caplog.records}  # type: ignore[attr-defined]
    assert contexts == {f"[job {task['job_id']} final evaluation] "}

    body = server.evaluations[30]
    assert body["num_examples"] == 40  # a quarter of the site's 160 rows
    assert {"accuracy", "balanced_accuracy", "log_loss", "roc_auc"} <= set(body["metrics"])
    assert server.upload_attempts == []
    assert harness.steps == [ProgressStep.DOWNLOADING, ProgressStep.EVALUATING, ProgressStep.UPLOADING]


def test_an_evaluate_task_may_reuse_the_last_training_rounds_id(server, site, make_harness):
    model = global_model_bytes()
    train = make_task(model, round_id=30)
    evaluate = make_task(model, kind="evaluate", round_id=30)
    server.offer(train, model)
    server.offer(evaluate, model)
    harness = make_harness()

    assert harness.runner.handle(train) is TaskOutcome.UPLOADED
    assert harness.runner.handle(evaluate) is TaskOutcome.EVALUATED
    assert 30 in server.evaluations


def test_local_data_of_another_shape_is_a_task_error(server, site, make_harness):
    narrow = ModelConfig.from_json({**MODEL_CONFIG.to_json(), "num_features": 10})
    model = global_model_bytes(narrow)
    task = make_task(model, model=narrow.to_json())
    server.offer(task, model)

    with pytest.raises(TaskError, match="encoded features"):
        make_harness().runner.handle(task)


def test_the_training_seed_differs_per_site_and_round_and_fits_numpy():
    seeds = {training_seed(2**40, round_number, site) for round_number in range(1, 4) for site in (1, 2)}
    assert len(seeds) == 6
    assert all(0 <= seed < 2**32 for seed in seeds)


def test_local_data_is_loaded_once_per_study_and_reloaded_when_its_settings_change(site):
    cache = DataCache(load_config(site.config_path).data, 7)
    study = parse_task(make_task(global_model_bytes())).study
    first = cache.prepare(study, MODEL_CONFIG)
    assert cache.prepare(study, MODEL_CONFIG) is first

    resplit = parse_task(make_task(global_model_bytes(), validation_fraction=0.5)).study
    assert len(cache.prepare(resplit, MODEL_CONFIG).validation) == 80


def test_the_validation_split_differs_between_sites(site):
    data = load_config(site.config_path).data
    study = parse_task(make_task(global_model_bytes())).study
    here = DataCache(data, 7).prepare(study, MODEL_CONFIG).validation.features
    there = DataCache(data, 8).prepare(study, MODEL_CONFIG).validation.features
    assert here.shape == there.shape
    assert not np.array_equal(here, there)


def test_state_kept_for_another_server_is_moved_aside(tmp_path: Path) -> None:
    from silo_agent.state import AgentState, StateStore

    store = StateStore(tmp_path / "state")
    store.prepare()
    assert store.bind("https://a.example#credential-1") is False
    store.save(AgentState(completed=("train:7",)))
    assert store.bind("https://a.example#credential-1") is False
    assert store.load().completed == ("train:7",)
    assert store.bind("https://b.example#credential-1") is True
    assert store.load().completed == ()
    assert list((tmp_path / "state").glob("*.previous-server"))
