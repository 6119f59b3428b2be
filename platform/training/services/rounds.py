"""The round state machine and its periodic sweep (docs/rounds.md).

A round opens, collects answers (or, with secure aggregation, goes through its phases),
then moves to AGGREGATING, or fails; a failed round fails its job. The locks are taken in
one order, the job's row first and then the round's (:func:`job_lock`, :func:`round_lock`),
so two services never wait for each other in opposite orders.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation.errors import ConfigurationError
from federation.metric_reports import combine_metrics
from fedplatform.errors import NotFound
from studies.models import Decision
from training import privacy, queue, secure_rounds
from training.models import (
    ACCEPTING_STATES,
    ACTIVE_STATES,
    Job,
    JobState,
    ModelVersion,
    Refusal,
    Round,
    RoundKind,
    RoundState,
)
from training.selectors import (
    approved_site_id_list,
    counted_update_list,
    job_model_spec_get,
    measured_versions,
)

logger = logging.getLogger(__name__)

#: Errors worth another try: the database was busy, restarting or unreachable.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)


# --- locks -------------------------------------------------------------------------------


def job_lock(*, job_id: int) -> Job:
    """Lock a job's row (only that row: ``of`` keeps the study unlocked); NotFound if none."""
    job = Job.objects.select_for_update(of=("self",)).select_related("study").filter(pk=job_id).first()
    if job is None:
        raise NotFound("no such job")
    return job


def _round_locked(round_id: int, *, skip_locked: bool) -> Round | None:
    """Lock a round after its job. With ``skip_locked`` a round that someone else holds
    gives ``None`` instead of a wait (for the sweep)."""
    job_id = Round.objects.filter(pk=round_id).values_list("job_id", flat=True).first()
    if job_id is None:
        raise NotFound("no such round")
    job = Job.objects.select_for_update(of=("self",), skip_locked=skip_locked).filter(pk=job_id).first()
    if job is None:
        return None
    return (
        Round.objects.select_for_update(of=("self",), skip_locked=skip_locked)
        .select_related("job__study", "base_version")
        .filter(pk=round_id)
        .first()
    )


def round_lock(*, round_id: int) -> Round:
    """Lock a round's job's row, then the round's (waiting for both); NotFound if none."""
    round_ = _round_locked(round_id, skip_locked=False)
    assert round_ is not None, "without skip_locked the lock is waited for"
    return round_


# --- opening, advancing, closing and failing ---------------------------------------------


def _active_site_count(job: Job) -> int:
    approved = job.study.participants.filter(decision=Decision.APPROVED).count()
    return approved - job.refusals.count()


def round_open(*, job: Job) -> Round | None:
    """Open the job's next round, or complete the job; a no-op while a round is active.

    Call inside a transaction that holds the job's row lock.
    """
    if job.state != JobState.RUNNING or job.rounds.filter(state__in=ACTIVE_STATES).exists():
        return None
    last = job.rounds.order_by("-number").first()
    number = (last.number + 1) if last else 1
    if number <= job.last_training_round:
        _training_stop_if_over_budget(job, number)
    if number <= job.last_training_round:
        _training_stop_if_not_improving(job, number)
    if number > job.last_training_round + 1:
        job.state, job.finished_at = JobState.COMPLETED, timezone.now()
        job.save(update_fields=["state", "finished_at"])
        audit_record(actor="system", kind="job.completed", job=job)
        return None
    sites = _active_site_count(job)
    if sites < job.min_updates:
        job_fail(job=job, reason=_too_few_sites(job, sites))
        return None
    base = job.model_versions.order_by("-number").first()
    if base is None:
        return None  # the initial model is still being built; job_begin opens round 1
    kind = RoundKind.TRAIN if number <= job.last_training_round else RoundKind.EVALUATE
    opened = Round.objects.create(
        job=job,
        number=number,
        kind=kind,
        base_version=base,
        expected_updates=sites,
        deadline_at=timezone.now() + timedelta(seconds=job.round_deadline_seconds),
        secure_aggregation=_secure_round_init(job, number, base) if kind == RoundKind.TRAIN else {},
    )
    audit_record(
        actor="system",
        kind="round.opened",
        job=job,
        details={**opened.audit_details(), "base_version": base.number},
    )
    return opened


def _secure_round_init(job: Job, number: int, base: ModelVersion) -> dict[str, object]:
    return secure_rounds.secure_round_init(
        job_id=job.pk,
        number=number,
        base_sha256=base.sha256,
        spec=job_model_spec_get(job=job),
        plan=job.plan,
        sites=_active_site_count(job),
    )


def _training_stop_if_not_improving(job: Job, number: int) -> None:
    """Early stopping: end training before round ``number`` once the sites' validation loss
    has not improved on its best for ``early_stopping_rounds`` evaluated versions."""
    patience = job.early_stopping_rounds
    if not patience:
        return
    measured = measured_versions(job=job)
    losses = [loss for _, loss in measured]
    if len(losses) <= patience:
        return
    best = losses.index(min(losses))
    if len(losses) - 1 - best < patience:
        return
    details: dict[str, object] = {
        "round": number - 1,
        "best_version": measured[best][0].number,
        "best_loss": losses[best],
        "rounds_without_improvement": len(losses) - 1 - best,
    }
    _stop_training(job, number, "job.early_stopped", details)


def _training_stop_if_over_budget(job: Job, number: int) -> None:
    """End training before round ``number`` if it would exceed the privacy budget."""
    reason = privacy.training_round_refusal(job=job, number=number)
    if reason is None:
        return
    _stop_training(job, number, "job.privacy_budget_reached", {"round": number, "reason": reason})


def _stop_training(job: Job, number: int, kind: str, details: dict[str, object]) -> None:
    """Train no more: round ``number`` is not opened and the final evaluation comes next."""
    job.training_stopped_after = number - 1
    job.save(update_fields=["training_stopped_after"])
    audit_record(actor="system", kind=kind, job=job, details=details)


def round_advance(*, round_: Round) -> None:
    """Move a round whose every expected site answered on to its next state (after a new
    answer or a recount; a no-op while answers are missing). Call under the round's lock."""
    if round_.state in ACCEPTING_STATES and secure_rounds.is_secure(round_):
        _secure_round_progress(round_, at_deadline=False)
    elif (
        round_.state in ACCEPTING_STATES
        and counted_update_list(round_=round_).count() >= round_.expected_updates
    ):
        _round_close_collection(round_)


def _secure_round_progress(round_: Round, *, at_deadline: bool) -> str:
    """Move a secure-aggregation round to its next phase once every member answered, or at
    the deadline once enough did; with too few answers at the deadline, extend or fail."""
    members = secure_rounds.phase_members(round_, approved_site_id_list(job=round_.job))
    answered = secure_rounds.phase_responders(round_) & members
    required = secure_rounds.required_answers(round_, min_updates=round_.job.min_updates)
    phase = secure_rounds.phase_of(round_).value
    if len(members) < required:  # too few can still answer: waiting would not help
        reason = f"only {len(members)} sites remain in the {phase} phase; secure aggregation needs {required}"
        round_fail(round_=round_, reason=reason)
        return "failed"
    if members - answered and not at_deadline:
        return "unchanged"
    if len(answered) < required:
        if round_.deadline_extensions < round_.job.max_deadline_extensions:
            return _round_extend(round_, len(answered))
        reason = f"only {len(answered)} sites answered the {phase} phase; secure aggregation needs {required}"
        round_fail(round_=round_, reason=reason)
        return "failed"
    if secure_rounds.phase_of(round_) is secure_rounds.Phase.UNMASK:
        _round_close_collection(round_)
        return "closed"
    next_phase = secure_rounds.phase_advance(round_, answered)
    # Each phase has its own deadline and its own extensions.
    round_.deadline_at = timezone.now() + timedelta(seconds=round_.job.round_deadline_seconds)
    round_.deadline_extensions = 0
    round_.save(update_fields=["secure_aggregation", "deadline_at", "deadline_extensions"])
    audit_record(
        actor="system",
        kind="round.secure_aggregation_phase",
        job=round_.job,
        details={"round": round_.number, "phase": next_phase.value, "sites": sorted(answered)},
    )
    return "advanced"


def _round_close_collection(round_: Round) -> None:
    if round_.kind == RoundKind.EVALUATE:
        _round_close_evaluation(round_)
        return
    round_.state, round_.aggregating_since = RoundState.AGGREGATING, timezone.now()
    round_.save(update_fields=["state", "aggregating_since"])
    audit_record(actor="system", kind="round.aggregating", job=round_.job, details=round_.audit_details())
    round_id = round_.pk
    transaction.on_commit(lambda: queue.round_aggregate_enqueue(round_id))


def _round_close_evaluation(round_: Round) -> None:
    try:
        metrics = round_combined_metrics(round_=round_)
    except ConfigurationError as error:
        round_fail(round_=round_, reason=f"the sites' metrics cannot be combined: {error}")
        return
    round_.state, round_.closed_at, round_.metrics = RoundState.CLOSED, timezone.now(), metrics
    round_.save(update_fields=["state", "closed_at", "metrics"])
    ModelVersion.objects.filter(pk=round_.base_version_id).update(metrics=metrics)
    audit_record(actor="system", kind="round.closed", job=round_.job, details=round_.audit_details())
    round_open(job=job_lock(job_id=round_.job_id))


def round_combined_metrics(*, round_: Round) -> dict[str, float]:
    """The counted sites' metrics combined by their example counts (``{}`` without any);
    ConfigurationError if they cannot be combined."""
    per_site = [(u.metrics, u.num_examples) for u in counted_update_list(round_=round_)]
    return combine_metrics(per_site) if per_site else {}


def _too_few_sites(job: Job, sites: int) -> str:
    """Why a job cannot go on: how many sites are left, and each refusal with its reason."""
    left = "1 site still takes part" if sites == 1 else f"{sites} sites still take part"
    reason = f"only {left}; the job needs {job.min_updates}"
    refusals = Refusal.objects.filter(job=job).select_related("institution").order_by("at")
    named = [f"{refusal.institution.name} refused: {refusal.reason}" for refusal in refusals]
    return f"{reason} ({'; '.join(named)})" if named else reason


def rounds_recount(*, job: Job) -> None:
    """Count a job's accepting rounds' expected sites again (after a refusal): each may
    reach its quorum at once, or fail with too few sites. Call under the job's lock."""
    sites = _active_site_count(job)
    for round_ in job.rounds.select_for_update(of=("self",)).filter(state__in=ACCEPTING_STATES):
        round_.expected_updates = sites
        round_.save(update_fields=["expected_updates"])
        if sites < job.min_updates:
            round_fail(round_=round_, reason=_too_few_sites(job, sites))
        else:
            round_advance(round_=round_)


def round_fail(*, round_: Round, reason: str) -> None:
    """Fail a round, and its job, with the reason. Call under the round's lock."""
    round_.state, round_.failure_reason, round_.closed_at = RoundState.FAILED, reason, timezone.now()
    round_.save(update_fields=["state", "failure_reason", "closed_at"])
    audit_record(
        actor="system",
        kind="round.failed",
        job=round_.job,
        details={**round_.audit_details(), "reason": reason},
    )
    job_fail(job=round_.job, reason=f"{round_.label} failed: {reason}")


def job_fail(*, job: Job, reason: str) -> None:
    """End a job as FAILED with the reason (its failed round's, or why it cannot go on).
    Call under the job's lock."""
    job.state, job.failure_reason, job.finished_at = JobState.FAILED, reason, timezone.now()
    job.save(update_fields=["state", "failure_reason", "finished_at"])
    audit_record(actor="system", kind="job.failed", job=job, details={"reason": reason})


# --- the periodic sweep ------------------------------------------------------------------


@dataclass(frozen=True)
class SweepOutcome:
    closed: int
    extended: int
    failed: int
    requeued: int


def rounds_sweep() -> SweepOutcome:
    """Close, extend or fail rounds past their deadline; re-enqueue stalled aggregations."""
    now = timezone.now()
    due = Round.objects.filter(state__in=ACCEPTING_STATES, deadline_at__lte=now, job__state=JobState.RUNNING)
    outcomes = Counter(_isolated(_round_deadline, round_id) for round_id in due.values_list("pk", flat=True))
    outcomes["closed"] += outcomes.pop("advanced", 0)
    stalled_before = now - timedelta(seconds=settings.FEDHEALTH_STUCK_AGGREGATION_SECONDS)
    stalled = list(
        Round.objects.filter(state=RoundState.AGGREGATING, aggregating_since__lte=stalled_before).values_list(
            "pk", flat=True
        )
    )
    outcomes.update(_isolated(_round_requeue, round_id) for round_id in stalled)
    for job_id in Job.objects.filter(
        state=JobState.RUNNING, started_at__lte=stalled_before, model_versions__isnull=True
    ).values_list("pk", flat=True):
        _requeue_job_begin(job_id, every_seconds=settings.FEDHEALTH_STUCK_AGGREGATION_SECONDS)
    return SweepOutcome(outcomes["closed"], outcomes["extended"], outcomes["failed"], outcomes["requeued"])


def _isolated(step: Callable[[int], str], round_id: int) -> str:
    """Run one round's step of the sweep so that its failure never stops the others.

    A transient database error leaves the round to the next sweep; any other error fails
    the round (and its job) with the reason, since running the same step again would fail
    the same way every two seconds.
    """
    try:
        return step(round_id)
    except TRANSIENT_DATABASE_ERRORS as error:
        logger.warning("the sweep left round id %s to its next run: %s", round_id, error)
        return "unchanged"
    except SoftTimeLimitExceeded:
        raise  # the whole sweep ran out of time; the next one goes on
    except Exception as error:
        if is_passing_fault(error):
            logger.warning("the sweep left round id %s to its next run: %s", round_id, error)
            return "unchanged"
        logger.exception("the sweep could not handle round id %s; failing it", round_id)
        return round_fail_unexpected(round_id=round_id, error=error)


def _requeue_job_begin(job_id: int, *, every_seconds: int) -> None:
    """Enqueue a job's start again (its message was lost), at most once per ``every_seconds``:
    a queue that is merely slow must not receive a duplicate every sweep."""
    if cache.add(f"job-begin-requeued:{job_id}", True, timeout=every_seconds):
        logger.warning("enqueued the start of job %s again: it has no initial model yet", job_id)
        queue.job_begin_enqueue(job_id)


def is_passing_fault(error: BaseException) -> bool:
    """An error of the machine rather than of the round (a full disk, an I/O error, a network
    file system away for a moment), worth another try; a file that is gone is not."""
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError)


def round_fail_unexpected(*, round_id: int, error: Exception) -> str:
    """Fail a round whose processing raised an unexpected error, naming the error.

    Returns ``"failed"``, or ``"unchanged"`` when the round had ended meanwhile or could
    not be failed now (the error is logged; a later sweep tries again).
    """
    reason = f"internal error ({type(error).__name__}): {str(error)[:300]}"
    try:
        with transaction.atomic():
            round_ = _round_locked(round_id, skip_locked=False)
            if round_ is None or round_.state not in (*ACCEPTING_STATES, RoundState.AGGREGATING):
                return "unchanged"
            round_fail(round_=round_, reason=reason)
    except Exception:
        logger.exception("round id %s could not be failed either", round_id)
        return "unchanged"
    return "failed"


@transaction.atomic
def _round_deadline(round_id: int) -> str:
    round_ = _round_locked(round_id, skip_locked=True)
    if round_ is None:
        return "unchanged"  # someone holds it; the next sweep looks again
    due = round_.state in ACCEPTING_STATES and round_.deadline_at <= timezone.now()
    if not due or round_.job.state != JobState.RUNNING:
        return "unchanged"  # an update, a pause or another sweep got there first
    if secure_rounds.is_secure(round_):
        return _secure_round_progress(round_, at_deadline=True)
    received = counted_update_list(round_=round_).count()
    # The final evaluation only gathers metrics: its deadline ends it, answered or not.
    if received >= round_.job.min_updates or round_.kind == RoundKind.EVALUATE:
        _round_close_collection(round_)
        return "closed"
    if round_.deadline_extensions < round_.job.max_deadline_extensions:
        return _round_extend(round_, received)
    round_fail(
        round_=round_, reason=f"deadline passed with {received} of at least {round_.job.min_updates} updates"
    )
    return "failed"


def _round_extend(round_: Round, received: int) -> str:
    round_.deadline_extensions += 1
    round_.deadline_at = timezone.now() + timedelta(seconds=round_.job.round_deadline_seconds)
    round_.save(update_fields=["deadline_extensions", "deadline_at"])
    audit_record(
        actor="system",
        kind="round.extended",
        job=round_.job,
        details={**round_.audit_details(), "received": received},
    )
    return "extended"


@transaction.atomic
def _round_requeue(round_id: int) -> str:
    round_ = _round_locked(round_id, skip_locked=True)
    if round_ is None or round_.state != RoundState.AGGREGATING:
        return "unchanged"
    round_.aggregating_since = timezone.now()
    round_.save(update_fields=["aggregating_since"])
    transaction.on_commit(lambda: queue.round_aggregate_enqueue(round_id))
    logger.warning("re-enqueued stalled aggregation of round %s of job %s", round_.number, round_.job_id)
    return "requeued"
