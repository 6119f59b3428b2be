"""Celery tasks: IDs in, one service call, idempotent; transient errors retried.

A task that dies half-way leaves its transaction rolled back, and the service's state
check makes a repeat safe. ``acks_late`` with ``reject_on_worker_lost`` (settings) get a
task redelivered when a pool child dies; when the whole worker is killed, neither broker
gives the message back quickly (docs/rounds.md), and the sweep re-enqueues the stalled
aggregation.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from federation.errors import FederationError
from fedplatform.errors import NotFound, ServiceError
from training import services

logger = logging.getLogger(__name__)

#: Errors worth another try: the database was busy, restarting or unreachable.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
    time_limit=900,
    soft_time_limit=840,
)
def round_aggregate_task(self: object, round_id: int) -> int | None:
    """Aggregate round ``round_id`` (on the ``aggregation`` queue).

    Transient database errors are retried; an error that a retry cannot fix (a corrupt
    blob, a strategy that cannot run) fails the round and its job with the reason.
    """
    try:
        outcome = services.round_aggregate(round_id=round_id)
    except TRANSIENT_ERRORS:
        raise
    except NotFound:
        logger.warning("round %s no longer exists; nothing to aggregate", round_id)
        return None
    except (FederationError, ServiceError) as error:
        logger.error("aggregation of round %s failed: %s", round_id, error)
        services.round_fail_aggregation(round_id=round_id, reason=str(error))
        return None
    logger.info("round %s aggregated into version %s", round_id, outcome.version_number)
    return outcome.version_number


@shared_task(
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_jitter=True,
    max_retries=3,
    time_limit=120,
    soft_time_limit=100,
)
def rounds_sweep_task() -> dict[str, int]:
    """Deadlines and stalled aggregations; run every few seconds by beat."""
    outcome = services.rounds_sweep()
    return {
        "closed": outcome.closed,
        "extended": outcome.extended,
        "failed": outcome.failed,
        "requeued": outcome.requeued,
    }
