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
from celery.exceptions import SoftTimeLimitExceeded

from federation.errors import FederationError
from fedplatform.errors import NotFound, ServiceError
from training import services

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = services.TRANSIENT_DATABASE_ERRORS


#: Model work (aggregating, building an initial model): transient database errors retried
#: with backoff and jitter, and time limits well above a large model's aggregation.
MODEL_WORK_OPTIONS: dict[str, object] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
    "time_limit": 900,
    "soft_time_limit": 840,
}


@shared_task(**MODEL_WORK_OPTIONS)
def round_aggregate_task(round_id: int) -> int | None:
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
    except SoftTimeLimitExceeded:
        raise  # too slow this time: the sweep starts it again, up to MAX_AGGREGATION_ATTEMPTS
    except Exception as error:  # a bug or a hostile input nobody foresaw: fail this round only
        if services.is_passing_fault(error):
            raise  # a disk or I/O fault: the sweep starts it again, up to MAX_AGGREGATION_ATTEMPTS
        logger.exception("aggregation of round %s raised an unexpected error", round_id)
        services.round_fail_unexpected(round_id=round_id, error=error)
        return None
    logger.info("round %s aggregated into version %s", round_id, outcome.version_number)
    return outcome.version_number


@shared_task(**MODEL_WORK_OPTIONS)
def job_begin_task(job_id: int) -> int | None:
    """Build a started job's initial model and open round 1 (on the ``aggregation`` queue).

    A model that cannot be built fails the job with the reason.
    """
    try:
        version = services.job_begin(job_id=job_id)
    except TRANSIENT_ERRORS:
        raise
    except SoftTimeLimitExceeded:
        raise
    except Exception as error:  # a config nobody foresaw, or memory: fail this job only
        logger.exception("the initial model of job %s could not be built", job_id)
        services.job_fail_to_begin(job_id=job_id, reason=f"{type(error).__name__}: {str(error)[:300]}")
        return None
    return None if version is None else version.pk


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
