"""The hospital's policy: what it refuses, and that a refusal sends a reason and trains nothing."""

from __future__ import annotations

import math

import pytest
from agent_fakes import FakeServer, RunnerHarness, global_model_bytes, make_task, write_site

from silo_agent.client import RetryPolicy
from silo_agent.config import Policy, PrivacyPolicy
from silo_agent.policy import check_task
from silo_agent.policy import privacy_reason as privacy_reason_of_settings
from silo_agent.runner import TaskOutcome
from silo_agent.tasks import parse_privacy, parse_task

MODEL = global_model_bytes()
STRICT_POLICY = """approved_studies = ["breast-cancer-pilot"]
max_rounds = 5
max_epochs = 2
allowed_model_kinds = ["logistic", "mlp"]
allowed_strategies = ["fedavg", "fedprox"]
[policy.privacy]
require_secure_aggregation = false
max_epsilon = inf
"""

REFUSALS = {
    "unapproved study": ({"name": "other-study", "id": 2}, {}, "approved_studies"),
    "too many rounds": ({}, {"total_rounds": 6}, "max_rounds"),
    "too many epochs": (
        {"training": {"epochs": 3, "batch_size": 16, "learning_rate": 0.1}},
        {},
        "max_epochs",
    ),
    "model kind": (
        {
            "model": {
                "kind": "cnn",
                "task": "multiclass",
                "num_features": 64,
                "num_classes": 10,
                "image_size": 8,
            }
        },
        {},
        "allowed_model_kinds",
    ),
    "strategy": ({"strategy": {"name": "krum", "params": {}}}, {}, "allowed_strategies"),
    "plain update under secure aggregation": (
        {"privacy": {"secure_aggregation": True}},
        {},
        "asks for a plain update",
    ),
    "unknown privacy": ({"privacy": {"homomorphic": True}}, {}, "not understood"),
}


@pytest.mark.parametrize(
    ("study_overrides", "task_overrides", "reason_fragment"), list(REFUSALS.values()), ids=list(REFUSALS)
)
def test_each_refusal_posts_a_reason_and_touches_no_data(
    tmp_path, study_overrides, task_overrides, reason_fragment
):
    server = FakeServer()
    site = write_site(tmp_path, policy=STRICT_POLICY)
    task = make_task(MODEL, job_id=5, **task_overrides, **study_overrides)
    server.offer(task, MODEL)
    harness = RunnerHarness(server, site, RetryPolicy(max_attempts=1))

    assert harness.runner.handle(task) is TaskOutcome.REFUSED

    assert len(server.refusals) == 1
    job_id, reason = server.refusals[0]
    assert job_id == 5
    assert reason_fragment in reason
    assert server.count("GET", "models/") == 0
    assert server.upload_attempts == []
    assert harness.steps == []
    assert harness.store.load().refused_jobs == {5: reason}


def test_the_strict_policy_accepts_a_conforming_job(tmp_path):
    server = FakeServer()
    site = write_site(tmp_path, policy=STRICT_POLICY)
    task = make_task(MODEL, total_rounds=5)
    server.offer(task, MODEL)

    assert RunnerHarness(server, site, RetryPolicy()).runner.handle(task) is TaskOutcome.UPLOADED
    assert server.refusals == []


def test_a_refused_job_is_not_reconsidered(tmp_path):
    server = FakeServer()
    site = write_site(tmp_path, policy=STRICT_POLICY)
    refused = make_task(MODEL, job_id=5, total_rounds=50)
    harness = RunnerHarness(server, site, RetryPolicy())
    harness.runner.handle(refused)

    # Even a task of the job that would now pass is answered with the stored refusal.
    later = make_task(MODEL, job_id=5, round_id=8, total_rounds=2)
    assert harness.runner.handle(later) is TaskOutcome.REFUSED
    assert [job for job, _ in server.refusals] == [5, 5]
    assert server.refusals[0][1] == server.refusals[1][1]
    assert server.count("GET", "models/") == 0


@pytest.mark.parametrize(
    ("approval", "outcome"),
    [("approved", TaskOutcome.UPLOADED), ("pending", TaskOutcome.REFUSED), ("declined", TaskOutcome.REFUSED)],
)
def test_the_wildcard_trusts_only_approvals_the_server_records(tmp_path, approval, outcome):
    server = FakeServer(studies=[{"id": 1, "name": "breast-cancer-pilot", "approval": approval}])
    site = write_site(tmp_path, policy='approved_studies = ["*"]')
    task = make_task(MODEL)
    server.offer(task, MODEL)

    assert RunnerHarness(server, site, RetryPolicy()).runner.handle(task) is outcome
    assert server.count("GET", "me") == 1


def _task(**study_overrides: object):
    return parse_task(make_task(MODEL, **study_overrides))


@pytest.mark.parametrize("entry", ["breast-cancer-pilot", "1"])
def test_a_study_listed_by_name_or_id_needs_no_server_approval(entry):
    assert check_task(Policy(approved_studies=(entry,)), _task(), server_approved_study_ids=()) is None


def test_an_unlisted_study_is_refused_even_if_the_server_approved_it():
    reason = check_task(Policy(approved_studies=("another",)), _task(), server_approved_study_ids={1})
    assert reason is not None
    assert "breast-cancer-pilot" in reason


def privacy_reason(policy: PrivacyPolicy, privacy: dict[str, object]) -> str | None:
    """The policy's reason for the study's raw settings, parsed as a task parses them."""
    return privacy_reason_of_settings(policy, *parse_privacy(privacy))


def test_no_privacy_settings_meet_the_default_demands():
    assert privacy_reason(PrivacyPolicy(), {}) is None


def test_a_hospital_that_requires_secure_aggregation_refuses_a_study_without_it():
    reason = privacy_reason(PrivacyPolicy(require_secure_aggregation=True), {})
    assert reason is not None
    assert "requires secure aggregation" in reason


def test_a_privacy_budget_above_the_hospitals_limit_is_refused():
    study = {"differential_privacy": {"level": "client", "clipping_norm": 1.0}, "epsilon": 8.0}
    reason = privacy_reason(PrivacyPolicy(max_epsilon=1.0), study)
    assert reason is not None
    assert "max_epsilon" in reason


@pytest.mark.privacy
def test_differential_privacy_within_the_limit_is_accepted():
    study = {"differential_privacy": {"level": "sample", "clipping_norm": 1.0}, "epsilon": 1.0}
    assert privacy_reason(PrivacyPolicy(max_epsilon=3.0, require_differential_privacy=True), study) is None


@pytest.mark.privacy
def test_a_hospital_that_requires_differential_privacy_refuses_a_study_without_it():
    reason = privacy_reason(PrivacyPolicy(require_differential_privacy=True), {"secure_aggregation": False})
    assert reason is not None
    assert "requires differential privacy" in reason


@pytest.mark.privacy
def test_a_study_without_dp_counts_as_an_infinite_epsilon():
    reason = privacy_reason(PrivacyPolicy(max_epsilon=100.0), {})
    assert reason is not None
    assert "epsilon inf" in reason


@pytest.mark.privacy
def test_an_epsilon_without_a_mechanism_is_not_understood():
    reason = privacy_reason(PrivacyPolicy(max_epsilon=math.inf), {"epsilon": 1.0})
    assert reason is not None
    assert "not understood" in reason
