"""The agent's side of privacy: the site's filters, client-level clipping, DP-SGD rounds
and the site's own ledger, which survives restarts and stops a job at the site's limit."""

from __future__ import annotations

import numpy as np
import pytest
from agent_fakes import MODEL_CONFIG, RunnerHarness, global_model_bytes, make_task, write_site

from federation.models import build_model
from federation.privacy import accounting, dp
from federation.privacy.settings import PrivacySettings
from federation.wire import deserialize_weights
from silo_agent.client import RetryPolicy
from silo_agent.config import UpdateFilters
from silo_agent.errors import StateError
from silo_agent.privacy import LocalLedger, dp_sgd_plan, filter_update
from silo_agent.runner import TaskOutcome

pytestmark = pytest.mark.privacy

MLP = {"kind": "mlp", "task": "binary", "num_features": 30, "num_classes": 2, "hidden_sizes": [8]}
SAMPLE_DP = {
    "differential_privacy": {"level": "sample", "clipping_norm": 1.0, "noise_multiplier": 1.1},
    "epsilon": 8.0,
}
CLIENT_DP = {"differential_privacy": {"level": "client", "clipping_norm": 0.05}, "epsilon": 8.0}


def _weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(4, value, np.float32), "b": np.full(2, value, np.float32)}


def test_excluded_layers_leave_with_the_global_values():
    sent = filter_update(
        _weights(3.0), _weights(1.0), settings=PrivacySettings(), filters=UpdateFilters(exclude_layers=("b",))
    )
    np.testing.assert_array_equal(sent["b"], _weights(1.0)["b"])
    np.testing.assert_array_equal(sent["w"], _weights(3.0)["w"])


def test_an_unknown_excluded_layer_is_an_error_not_a_silent_no_op():
    with pytest.raises(StateError, match="exclude_layers"):
        filter_update(
            _weights(3.0),
            _weights(1.0),
            settings=PrivacySettings(),
            filters=UpdateFilters(exclude_layers=("x",)),
        )


@pytest.mark.parametrize(
    ("site_norm", "expected"), [(None, 0.05), (0.01, 0.01), (10.0, 0.05)], ids=["study", "site", "tighter"]
)
def test_the_update_is_clipped_to_the_tighter_of_the_study_and_the_site(site_norm, expected):
    settings = PrivacySettings.from_json(CLIENT_DP)
    sent = filter_update(
        _weights(3.0), _weights(1.0), settings=settings, filters=UpdateFilters(clip_update_norm=site_norm)
    )
    delta = {name: sent[name] - _weights(1.0)[name] for name in sent}
    assert dp.l2_norm(delta) == pytest.approx(expected, rel=1e-4)  # float32 weights


def test_without_a_noise_multiplier_the_site_picks_one_that_fits_the_whole_job():
    settings = PrivacySettings.from_json(
        {**SAMPLE_DP, "differential_privacy": {"level": "sample", "clipping_norm": 1.0}}
    )
    plan = dp_sgd_plan(settings, num_examples=120, batch_size=16, epochs=2, total_rounds=5)
    assert plan is not None
    assert plan.steps == 2 * 8
    assert plan.sampling_rate == pytest.approx(1 / 8)
    job_epsilon = accounting.sample_level_epsilon(
        noise_multiplier=plan.noise_multiplier,
        sampling_rate=plan.sampling_rate,
        steps=5 * plan.steps,
        delta=1e-5,
    )
    assert job_epsilon <= 8.0
    assert job_epsilon > 8.0 * 0.98


def test_the_ledger_survives_a_restart_and_a_repeated_round_counts_once(tmp_path):
    LocalLedger(tmp_path).record(4, 1, [1.1, 0.125, 8.0])
    LocalLedger(tmp_path).record(4, 1, [1.1, 0.125, 8.0])
    LocalLedger(tmp_path).record(4, 2, [1.1, 0.125, 8.0])
    reopened = LocalLedger(tmp_path)
    expected = accounting.sample_level_epsilon(
        noise_multiplier=1.1, sampling_rate=0.125, steps=16, delta=1e-5
    )
    assert reopened.epsilon(4, delta=1e-5) == pytest.approx(expected, rel=1e-9)
    assert reopened.epsilon(5, delta=1e-5) == 0.0


def test_a_damaged_ledger_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "privacy-ledger.json").write_text("{not json")
    with pytest.raises(StateError, match="privacy ledger"):
        LocalLedger(tmp_path).epsilon(1, delta=1e-5)


def test_a_dp_sgd_round_declares_its_steps_and_records_them_before_the_upload(server, site, make_harness):
    config = type(MODEL_CONFIG).from_json({**MLP, "image_size": None})
    model = global_model_bytes(config)
    task = make_task(model, job_id=4, round_id=21, round_number=1, model=config.to_json(), privacy=SAMPLE_DP)
    server.offer(task, model)
    harness = make_harness()

    assert harness.runner.handle(task) is TaskOutcome.UPLOADED

    dp_steps = server.upload_attempts[0].meta["dp_steps"]
    assert dp_steps["noise_multiplier"] == 1.1
    assert dp_steps["steps"] >= 1
    ledger = LocalLedger(harness.store.directory)
    assert ledger.events(4) == {1: [1.1, dp_steps["sampling_rate"], float(dp_steps["steps"])]}


def test_client_level_dp_sends_a_clipped_update(server, site, make_harness):
    model = global_model_bytes()
    task = make_task(model, job_id=4, round_id=21, privacy=CLIENT_DP)
    server.offer(task, model)
    assert make_harness().runner.handle(task) is TaskOutcome.UPLOADED
    spec = build_model(MODEL_CONFIG).model_spec()
    sent, start = (
        deserialize_weights(server.stored_updates[21], spec=spec),
        deserialize_weights(model, spec=spec),
    )
    assert dp.l2_norm({name: sent[name] - start[name] for name in sent}) <= 0.05 * (1 + 1e-5)
    assert "dp_steps" not in server.upload_attempts[0].meta


def test_a_round_that_would_pass_the_sites_own_limit_refuses_the_job(server, tmp_path):
    site = write_site(tmp_path, policy='approved_studies = ["*"]\n[policy.privacy]\nmax_epsilon = 10.0')
    config = type(MODEL_CONFIG).from_json({**MLP, "image_size": None})
    model = global_model_bytes(config)
    LocalLedger(site.directory / "state").record(4, 1, [0.6, 0.125, 200.0])  # a costly earlier round
    task = make_task(model, job_id=4, round_id=22, round_number=2, model=config.to_json(), privacy=SAMPLE_DP)
    server.offer(task, model)
    harness = RunnerHarness(server, site, RetryPolicy(max_attempts=3))

    assert harness.runner.handle(task) is TaskOutcome.REFUSED
    assert server.upload_attempts == []
    assert [job for job, _ in server.refusals] == [4]
    assert "above its limit" in server.refusals[0][1]
