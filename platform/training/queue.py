"""Sending work to the Celery workers, by task name (docs/rounds.md).

Services enqueue through this module, never by importing :mod:`training.tasks` (which
imports the services): the tasks are looked up by name in the Celery app's registry, where
:class:`training.apps.TrainingConfig` registers them when Django starts.

Call these after the commit that made the work due (``transaction.on_commit``). A broker
that cannot take the message (Redis down or restarting) must not fail the request that
committed: the error is logged, and the state, kept in the database, is enqueued again by
the periodic sweep (``FEDHEALTH_STUCK_AGGREGATION_SECONDS``).
"""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as BrokerUnavailable

from fedplatform.celery import app as celery_app

logger = logging.getLogger(__name__)

ROUND_AGGREGATE_TASK = "training.tasks.round_aggregate_task"
JOB_BEGIN_TASK = "training.tasks.job_begin_task"


def round_aggregate_enqueue(round_id: int) -> None:
    """Send a round's aggregation to the broker (queue ``aggregation``, by the task routes)."""
    try:
        celery_app.tasks[ROUND_AGGREGATE_TASK].delay(round_id)
    except BrokerUnavailable as error:
        logger.warning(
            "the broker did not take the aggregation of round id %s (%s); the sweep will enqueue it again",
            round_id,
            error,
        )


def job_begin_enqueue(job_id: int) -> None:
    """Send the building of a started job's initial model to the broker."""
    try:
        celery_app.tasks[JOB_BEGIN_TASK].delay(job_id)
    except BrokerUnavailable as error:
        logger.warning(
            "the broker did not take the start of job %s (%s); the sweep will retry", job_id, error
        )
