"""The task message is one contract: what the control plane sends, the agent's parser reads.

The tasks come from the real server (``GET work`` through the API) for a plain training
round, a secure-aggregation round and the final evaluation; each must parse with the agent's
parser, carry the database's values, and survive a round trip through the contract unchanged.
"""

from __future__ import annotations

import pytest
from platform_world import Site, make_job, start_job, trained

from federation.protocol import PROTOCOL_VERSION, TaskKind, parse_task
from silo_agent.errors import TaskError
from silo_agent.tasks import parse_task as agent_parse_task
from training.models import Round

pytestmark = pytest.mark.django_db


@pytest.fixture
def sites(agent_world: None) -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]


def test_a_training_task_from_the_server_parses_with_the_agents_parser(sites: list[Site]) -> None:
    job = make_job(sites[:2], rounds=2)
    raw = sites[0].work()
    assert raw is not None
    task = agent_parse_task(raw)
    round_ = Round.objects.get(pk=task.round_id)
    assert (task.kind, task.job_id, task.round_number, task.total_rounds) == (TaskKind.TRAIN, job.pk, 1, 2)
    assert task.model_version.sha256 == round_.base_version.sha256
    assert task.study.model == job.study.model_config
    assert task.study.strategy_name == job.plan.strategy.name.value == job.study.strategy
    assert task.study.strategy_params == job.plan.strategy.params()
    assert task.study.privacy == job.plan.privacy
    assert task.study.training.epochs == job.study.training["epochs"]
    assert task.secure_aggregation is None
    assert raw["protocol_version"] == PROTOCOL_VERSION
    assert task.to_json() == raw


def test_a_secure_round_task_and_the_final_evaluation_parse_too(sites: list[Site]) -> None:
    start_job(
        [site.institution for site in sites],
        name="secure",
        rounds=1,
        privacy={"secure_aggregation": True},
    )
    raw = sites[0].work()
    assert raw is not None
    task = parse_task(raw)
    assert task.secure_aggregation is not None
    assert task.secure_aggregation["phase"] == "advertise"
    assert task.to_json() == raw


def test_the_evaluation_task_parses(sites: list[Site], django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    make_job(sites[:2], rounds=1)
    for site in sites[:2]:
        raw = site.work()
        with django_capture_on_commit_callbacks(execute=True):
            assert site.upload(raw, trained(site.model(raw), 0.1)).status_code == 201
    raw = sites[0].work()
    assert raw is not None
    assert parse_task(raw).kind is TaskKind.EVALUATE


def test_a_study_without_training_settings_sends_the_defaults(sites: list[Site]) -> None:
    """The study API takes ``training: {}``; the task then carries the defaults, not {}."""
    start_job([sites[0].institution], name="defaults", training={})
    task = agent_parse_task(sites[0].work() or {})
    assert (task.study.training.epochs, task.study.training.proximal_mu) == (1, 0.0)


def test_class_weighting_travels_only_when_the_study_chose_it(sites: list[Site]) -> None:
    start_job([sites[0].institution], name="weighted", training={"epochs": 1, "class_weighting": True})
    start_job([sites[1].institution], name="plain", training={"epochs": 1})
    weighted, plain = sites[0].work() or {}, sites[1].work() or {}
    assert agent_parse_task(weighted).study.training.class_weighting is True
    assert agent_parse_task(plain).study.training.class_weighting is False
    assert "class_weighting" not in plain["study"]["training"]
    weighted["study"]["training"]["class_weighting"] = "yes"
    with pytest.raises(TaskError, match="class_weighting must be true or false"):
        agent_parse_task(weighted)


def test_a_message_of_another_protocol_version_is_refused(sites: list[Site]) -> None:
    make_job(sites[:2])
    raw = sites[0].work()
    assert raw is not None
    with pytest.raises(TaskError, match="protocol version 2"):
        agent_parse_task({**raw, "protocol_version": 2})
    assert parse_task({key: value for key, value in raw.items() if key != "protocol_version"}).job_id
