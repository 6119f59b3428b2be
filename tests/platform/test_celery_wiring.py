"""Celery wiring: what beat schedules can be sent, tasks route to their queues, JSON only."""

from __future__ import annotations

import importlib

import pytest
from django.conf import settings

from fedplatform.celery import app


@pytest.mark.parametrize("entry", sorted(settings.CELERY_BEAT_SCHEDULE))
def test_every_beat_entry_names_a_task_whose_limits_celery_accepts(entry: str) -> None:
    name = settings.CELERY_BEAT_SCHEDULE[entry]["task"]
    importlib.import_module(name.rsplit(".", 1)[0])  # registers the task with the app
    task = app.tasks[name]
    soft = task.soft_time_limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
    hard = task.time_limit or settings.CELERY_TASK_TIME_LIMIT
    assert soft <= hard  # otherwise Celery refuses to send it and beat logs an error forever


def test_aggregation_runs_on_its_own_queue_and_only_json_travels() -> None:
    route = app.amqp.router.route({}, "training.tasks.round_aggregate_task")
    assert route["queue"].name == "aggregation"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
