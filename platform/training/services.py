"""Jobs and the round state machine (docs/rounds.md).

Each service runs in one transaction, locks the rows it changes and checks their state
first, so running it twice (a Celery retry, a worker killed and the task redelivered)
changes nothing the second time. Tasks are enqueued only after the transaction commits.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from safetensors.numpy import load as safetensors_load

from audit.services import audit_record
from federation.aggregation.strategies import AggregationResult
from federation.aggregation.streaming import StoredUpdate
from federation.aggregation.update_bound import UpdateNormBound
from federation.errors import ConfigurationError, FederationError, UpdateTooLargeError
from federation.metric_reports import check_num_examples, check_reported_metrics, combine_metrics
from federation.models import ModelConfig, build_model
from federation.privacy import dp
from federation.rounds import RoundInputs, RoundPlan
from federation.types import ModelSpec, Weights
from federation.wire import (
    deserialize_weights,
    max_update_bytes,
    read_metadata,
    serialize_weights,
    sha256_hex,
)
from fedplatform.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from institutions.models import AgentCredential
from studies.models import Decision, Study
from training import privacy, queue, secure_rounds
from training.blobs import blob_store
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
    Update,
)

logger = logging.getLogger(__name__)

#: An aggregation that keeps dying (a worker killed each time, an unexpected error) fails
#: its round after this many starts instead of being retried for ever.
MAX_AGGREGATION_ATTEMPTS = 5
#: Errors worth another try: the database was busy, restarting or unreachable.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)


# --- jobs --------------------------------------------------------------------------------


@transaction.atomic
def job_create(
    *,
    study: Study,
    num_rounds: int,
    min_updates: int,
    round_deadline_seconds: int,
    max_deadline_extensions: int,
    actor: str,
) -> Job:
    participants = study.participants.count()
    if not 1 <= min_updates <= participants:
        raise InvalidInput(f"min_updates must lie between 1 and the {participants} participants of the study")
    if num_rounds < 1:
        raise InvalidInput("a job needs at least one round")
    job = Job.objects.create(
        study=study,
        plan=privacy.job_plan_resolve(study=study, num_rounds=num_rounds),
        num_rounds=num_rounds,
        min_updates=min_updates,
        round_deadline_seconds=round_deadline_seconds,
        max_deadline_extensions=max_deadline_extensions,
        created_by=actor,
    )
    audit_record(
        actor=actor, kind="job.created", job=job, details={"study_id": study.pk, "num_rounds": num_rounds}
    )
    return job


def _locked_job(job_id: int) -> Job:
    """Lock a job's row (only that row: ``of`` keeps the study unlocked)."""
    job = Job.objects.select_for_update(of=("self",)).select_related("study").filter(pk=job_id).first()
    if job is None:
        raise NotFound("no such job")
    return job


@transaction.atomic
def job_start(*, job_id: int, actor: str) -> Job:
    """Check every site approved and start the job; a worker then writes its initial model.

    The model is never built here, inside a web request: :func:`job_begin` builds it in a
    Celery worker and opens round 1 (the sweep starts it again if its message is lost).
    """
    job = _locked_job(job_id)
    if job.state != JobState.DRAFT:
        raise Conflict(f"job {job.pk} is {job.state}; only a draft job can start", code="invalid_state")
    participants = job.study.participants.select_for_update(of=("self",))
    list(participants)  # lock every decision: none may change while the job starts
    pending = participants.exclude(decision=Decision.APPROVED).select_related("institution")
    if pending.exists():
        names = ", ".join(f"{p.institution.name} ({p.decision})" for p in pending)
        raise Conflict(f"every site must approve the study first: {names}", code="not_approved")
    job.state, job.started_at = JobState.RUNNING, timezone.now()
    job.save(update_fields=["state", "started_at"])
    audit_record(actor=actor, kind="job.started", job=job)
    transaction.on_commit(lambda: queue.job_begin_enqueue(job_id))
    return job


def _awaits_initial_model(job: Job) -> bool:
    return job.state in (JobState.RUNNING, JobState.PAUSED) and not job.model_versions.exists()


def job_begin(*, job_id: int) -> ModelVersion | None:
    """Build and write a started job's initial model, then open round 1 (in a worker).

    The model is built outside any transaction; the job is checked again under its lock
    before the version is written, so a repeat writes nothing.
    """
    job = Job.objects.select_related("study").filter(pk=job_id).first()
    if job is None or not _awaits_initial_model(job):
        return None
    config = ModelConfig.from_json(job.study.model_config)
    weights = build_model(config, seed=job.study.seed).get_weights()
    with transaction.atomic():
        job = _locked_job(job_id)
        if not _awaits_initial_model(job):
            return None
        spec = ModelSpec.from_weights(weights)
        job.plan = job.plan.with_model_spec(spec)
        job.save(update_fields=["plan"])
        version = _model_version_write(
            job=job, number=0, weights=weights, spec=spec, parent=None, round_=None
        )
        round_open(job=job)
    return version


@transaction.atomic
def job_fail_to_begin(*, job_id: int, reason: str) -> None:
    """A job whose initial model cannot be built fails, with the reason."""
    job = _locked_job(job_id)
    if _awaits_initial_model(job):
        _job_fail(job, f"the initial model could not be built: {reason}")


def _model_version_write(
    *,
    job: Job,
    number: int,
    weights: Weights,
    spec: ModelSpec,
    parent: ModelVersion | None,
    round_: Round | None,
    server_state: Weights | None = None,
    provenance: dict[str, object] | None = None,
) -> ModelVersion:
    store = blob_store()
    blob = serialize_weights(weights, spec=spec, metadata={"model_spec": json.dumps(spec.to_json())})
    sha256 = store.put(blob)
    state_sha256 = store.put(serialize_weights(server_state)) if server_state else ""
    return ModelVersion.objects.create(
        job=job,
        number=number,
        sha256=sha256,
        size=len(blob),
        parent=parent,
        made_by_round=round_,
        server_state_sha256=state_sha256,
        provenance=provenance or {},
    )


def _transition(job_id: int, *, allowed: tuple[str, ...], target: str, actor: str) -> Job:
    job = _locked_job(job_id)
    if job.state not in allowed:
        raise Conflict(f"job {job.pk} is {job.state}; cannot become {target}", code="invalid_state")
    job.state = target
    if target in (JobState.CANCELLED, JobState.COMPLETED, JobState.FAILED):
        job.finished_at = timezone.now()
    job.save(update_fields=["state", "finished_at"])
    audit_record(actor=actor, kind=f"job.{target}", job=job)
    return job


@transaction.atomic
def job_pause(*, job_id: int, actor: str) -> Job:
    return _transition(job_id, allowed=(JobState.RUNNING,), target=JobState.PAUSED, actor=actor)


@transaction.atomic
def job_resume(*, job_id: int, actor: str) -> Job:
    """Resume; the current round gets a fresh deadline, since nobody could work while paused."""
    job = _transition(job_id, allowed=(JobState.PAUSED,), target=JobState.RUNNING, actor=actor)
    deadline = timezone.now() + timedelta(seconds=job.round_deadline_seconds)
    job.rounds.filter(state__in=ACCEPTING_STATES).update(deadline_at=deadline)
    round_open(job=job)  # in case the pause fell between two rounds
    return job


@transaction.atomic
def job_cancel(*, job_id: int, actor: str) -> Job:
    job = _transition(
        job_id,
        allowed=(JobState.DRAFT, JobState.RUNNING, JobState.PAUSED),
        target=JobState.CANCELLED,
        actor=actor,
    )
    job.rounds.filter(state__in=ACTIVE_STATES).update(
        state=RoundState.FAILED, failure_reason="job cancelled", closed_at=timezone.now()
    )
    return job


def _job_fail(job: Job, reason: str) -> None:
    job.state, job.failure_reason, job.finished_at = JobState.FAILED, reason, timezone.now()
    job.save(update_fields=["state", "failure_reason", "finished_at"])
    audit_record(actor="system", kind="job.failed", job=job, details={"reason": reason})


# --- rounds ------------------------------------------------------------------------------


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
    if number > job.last_training_round + 1:
        job.state, job.finished_at = JobState.COMPLETED, timezone.now()
        job.save(update_fields=["state", "finished_at"])
        audit_record(actor="system", kind="job.completed", job=job)
        return None
    sites = _active_site_count(job)
    if sites < job.min_updates:
        _job_fail(job, f"only {sites} sites still take part; the job needs {job.min_updates}")
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
        details={"round": number, "kind": opened.kind, "base_version": base.number},
    )
    return opened


def _secure_round_init(job: Job, number: int, base: ModelVersion) -> dict[str, object]:
    return secure_rounds.secure_round_init(
        job_id=job.pk,
        number=number,
        base_sha256=base.sha256,
        spec=model_spec(base),
        plan=job.plan,
        sites=_active_site_count(job),
    )


def _training_stop_if_over_budget(job: Job, number: int) -> None:
    """End training before round ``number`` if it would exceed the privacy budget."""
    reason = privacy.training_round_refusal(job=job, number=number)
    if reason is None:
        return
    job.training_stopped_after = number - 1
    job.save(update_fields=["training_stopped_after"])
    audit_record(
        actor="system",
        kind="job.privacy_budget_reached",
        job=job,
        details={"round": number, "reason": reason},
    )


def _locked_round(round_id: int, *, skip_locked: bool = False) -> Round | None:
    """Lock a round after its job: every service takes the job's lock first, so two
    services never wait for each other in opposite orders. With ``skip_locked`` a round
    that someone else holds gives ``None`` instead of a wait (for the sweep)."""
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


def _round(round_id: int) -> Round:
    round_ = _locked_round(round_id)
    assert round_ is not None, "without skip_locked the lock is waited for"
    return round_


def _counted_updates(round_: Round) -> QuerySet[Update]:
    """The round's updates from sites that still take part (a refusal withdraws one)."""
    refused = Refusal.objects.filter(job=round_.job_id).values("institution")
    return round_.updates.exclude(institution__in=refused)


def _round_reached_quorum(round_: Round) -> None:
    """Move a round whose every expected site answered on to its next state."""
    if round_.state in ACCEPTING_STATES and secure_rounds.is_secure(round_):
        _secure_round_progress(round_, at_deadline=False)
    elif round_.state in ACCEPTING_STATES and _counted_updates(round_).count() >= round_.expected_updates:
        _round_close_collection(round_)


def approved_sites(job: Job) -> set[int]:
    approved = job.study.participants.filter(decision=Decision.APPROVED)
    return set(approved.values_list("institution_id", flat=True))


def _secure_round_progress(round_: Round, *, at_deadline: bool) -> str:
    """Move a secure-aggregation round to its next phase once every member answered, or at
    the deadline once enough did; with too few answers at the deadline, extend or fail."""
    members = secure_rounds.phase_members(round_, approved_sites(round_.job))
    answered = secure_rounds.phase_responders(round_) & members
    required = secure_rounds.required_answers(round_, min_updates=round_.job.min_updates)
    phase = secure_rounds.phase_of(round_).value
    if len(members) < required:  # too few can still answer: waiting would not help
        _round_fail(
            round_,
            f"only {len(members)} sites remain in the {phase} phase; secure aggregation needs {required}",
        )
        return "failed"
    if members - answered and not at_deadline:
        return "unchanged"
    if len(answered) < required:
        if round_.deadline_extensions < round_.job.max_deadline_extensions:
            return _round_extend(round_, len(answered))
        _round_fail(
            round_,
            f"only {len(answered)} sites answered the {phase} phase; secure aggregation needs {required}",
        )
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
    audit_record(actor="system", kind="round.aggregating", job=round_.job, details={"round": round_.number})
    round_id = round_.pk
    transaction.on_commit(lambda: queue.round_aggregate_enqueue(round_id))


def _round_close_evaluation(round_: Round) -> None:
    try:
        metrics = _combined_metrics(round_)
    except ConfigurationError as error:
        _round_fail(round_, f"the sites' metrics cannot be combined: {error}")
        return
    round_.state, round_.closed_at, round_.metrics = RoundState.CLOSED, timezone.now(), metrics
    round_.save(update_fields=["state", "closed_at", "metrics"])
    ModelVersion.objects.filter(pk=round_.base_version_id).update(metrics=metrics)
    audit_record(actor="system", kind="round.closed", job=round_.job, details={"round": round_.number})
    round_open(job=_locked_job(round_.job_id))


def _combined_metrics(round_: Round) -> dict[str, float]:
    per_site = [(u.metrics, u.num_examples) for u in _counted_updates(round_)]
    return combine_metrics(per_site) if per_site else {}


@dataclass(frozen=True)
class AggregationOutcome:
    round_id: int
    version_number: int | None


@dataclass(frozen=True)
class _AggregationWork:
    round_id: int
    number: int
    job: Job
    base: ModelVersion
    updates: list[Update]
    secure: bool = False


def round_aggregate(*, round_id: int) -> AggregationOutcome:
    """Aggregate a round's stored updates into the next model version; open the next round.

    The maths runs outside any transaction, so no lock is held while it runs; the round's
    state is checked again before the result is written, so a second run that overlaps
    the first writes nothing. Both would compute the same bytes anyway.
    """
    work = _aggregation_claim(round_id)
    if work is None:
        return AggregationOutcome(round_id, None)  # done already, never ready, or given up
    _drill_pause_point()
    spec = model_spec(work.base)
    plan = work.job.plan
    result = _aggregate(work, plan, spec)
    provenance: dict[str, object] = {
        "strategy": plan.strategy.name.value,
        "params": plan.strategy.params(),
        "privacy": plan.privacy.to_json(),
        "base": {"number": work.base.number, "sha256": work.base.sha256},
        "updates": [
            {"institution": u.institution.name, "sha256": u.sha256, "num_examples": u.num_examples}
            for u in work.updates
        ],
        "details": result.details,
    }
    return _aggregation_commit(work, spec, result.weights, result.state, provenance)


def _drill_pause_point() -> None:
    """The crash drills' pause point, between the claim (committed) and the commit: with
    ``FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS`` set (only tests/faults sets it), a kill
    timed from the claim lands in the window by construction rather than by luck."""
    if settings.FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS:
        time.sleep(settings.FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS)


def _aggregate(work: _AggregationWork, plan: RoundPlan, spec: ModelSpec) -> AggregationResult:
    """The job's round plan on the round's inputs: the stored updates (read chunk by chunk
    where the plan allows), or the unmasked sum of a secure round."""
    store = blob_store()
    global_weights = deserialize_weights(store.read(work.base.sha256), spec=spec)
    inputs: RoundInputs
    if work.secure:
        round_ = Round.objects.get(pk=work.round_id)
        inputs = secure_rounds.round_unmasked_sum(round_, work.updates, store.read)
    else:
        inputs = [StoredUpdate(store.path(u.sha256), u.num_examples, u.sha256) for u in work.updates]
    return plan.aggregate(global_weights, inputs, _server_state(work.base), dp.secure_generator())


@transaction.atomic
def _aggregation_claim(round_id: int) -> _AggregationWork | None:
    round_ = _round(round_id)
    if round_.state != RoundState.AGGREGATING:
        return None
    if round_.aggregation_attempts >= MAX_AGGREGATION_ATTEMPTS:
        _round_fail(round_, f"aggregation did not finish in {MAX_AGGREGATION_ATTEMPTS} attempts")
        return None
    round_.aggregation_attempts += 1
    round_.aggregating_since = timezone.now()
    round_.save(update_fields=["aggregation_attempts", "aggregating_since"])
    secure = secure_rounds.is_secure(round_)
    if secure:
        # The survivors' masked inputs are all in the sum, whatever happened since.
        updates = secure_rounds.survivors_updates(round_)
    else:
        updates = list(_counted_updates(round_).select_related("institution").order_by("institution_id"))
    return _AggregationWork(round_.pk, round_.number, round_.job, round_.base_version, updates, secure)


@transaction.atomic
def _aggregation_commit(
    work: _AggregationWork,
    spec: ModelSpec,
    weights: Weights,
    server_state: Weights,
    provenance: dict[str, object],
) -> AggregationOutcome:
    round_ = _round(work.round_id)
    if round_.state != RoundState.AGGREGATING:
        return AggregationOutcome(work.round_id, None)  # cancelled, failed or done meanwhile
    version = _model_version_write(
        job=round_.job,
        number=round_.number,
        weights=weights,
        spec=spec,
        parent=work.base,
        round_=round_,
        server_state=server_state,
        provenance=provenance,
    )
    metrics = _combined_metrics(round_)
    round_.state, round_.closed_at, round_.metrics = RoundState.CLOSED, timezone.now(), metrics
    round_.save(update_fields=["state", "closed_at", "metrics"])
    privacy.privacy_spend_client_round(round_=round_)
    ModelVersion.objects.filter(pk=work.base.pk).update(metrics=_global_metrics(metrics))
    audit_record(
        actor="system",
        kind="round.closed",
        job=round_.job,
        details={"round": round_.number, "version": version.number, "sha256": version.sha256},
    )
    round_open(job=_locked_job(round_.job_id))
    return AggregationOutcome(work.round_id, version.number)


@transaction.atomic
def round_fail_aggregation(*, round_id: int, reason: str) -> None:
    """An aggregation that cannot succeed fails its round and job, with the reason."""
    round_ = _round(round_id)
    if round_.state == RoundState.AGGREGATING:
        _round_fail(round_, f"aggregation failed: {reason}")


def _global_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The sites' evaluation of the round's base model (``global_*``), without the prefix."""
    return {
        name.removeprefix("global_"): value for name, value in metrics.items() if name.startswith("global_")
    }


def model_spec(version: ModelVersion) -> ModelSpec:
    """The spec of a job's model, kept in every version blob's metadata."""
    return _model_spec_of_blob(version.sha256)


@functools.lru_cache(maxsize=256)
def _model_spec_of_blob(sha256: str) -> ModelSpec:
    # Blobs are immutable (named by their digest), so the spec of one never changes.
    data = blob_store().read(sha256)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    spec = ModelSpec.from_json(json.loads(header["__metadata__"]["model_spec"]))
    read_metadata(data, spec=spec)  # the stored blob passes the full header check
    return spec


def _server_state(version: ModelVersion) -> Weights | None:
    if not version.server_state_sha256:
        return None
    # Our own blob, checked against its digest on read: not bytes from a site.
    return dict(safetensors_load(blob_store().read(version.server_state_sha256)))


# --- updates from sites ------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateMeta:
    num_examples: int
    metrics: dict[str, float]
    base_model_sha256: str
    job_id: int
    round_number: int
    dp_steps: dict[str, float] | None = None


@dataclass(frozen=True)
class SubmitResult:
    update: Update
    duplicate: bool


def _site_takes_part(round_: Round, credential: AgentCredential) -> bool:
    return round_.job.study.participants.filter(
        institution=credential.institution_id, decision=Decision.APPROVED
    ).exists()


def _round_for_site(round_id: int, credential: AgentCredential) -> Round:
    """The round, unlocked, if the credential's institution takes part; else NotFound."""
    round_ = Round.objects.select_related("job__study", "base_version").filter(pk=round_id).first()
    if round_ is None or not _site_takes_part(round_, credential):
        raise NotFound("no such round")  # another institution's round: no existence leak
    return round_


def update_size_limit(*, round_id: int, credential: AgentCredential) -> int:
    """The largest update the round can take: checked before an upload is read."""
    return max_update_bytes(model_spec(_round_for_site(round_id, credential).base_version))


def _check_site_may_answer(round_: Round, credential: AgentCredential) -> None:
    job = round_.job
    if job.state != JobState.RUNNING:
        raise Conflict(f"job {job.pk} is {job.state}; it takes no updates now", code="job_not_running")
    if job.refusals.filter(institution=credential.institution_id).exists():
        raise Forbidden("this site refused the job", code="refused")


def _check_binding(round_: Round, meta: UpdateMeta) -> None:
    if meta.job_id != round_.job_id or meta.round_number != round_.number:
        raise Conflict("the update is bound to another job or round", code="wrong_round")
    if meta.base_model_sha256 != round_.base_version.sha256:
        raise Conflict("the update was trained from another model version", code="stale_update")
    _check_report(meta.num_examples, meta.metrics)
    privacy.check_dp_steps(job=round_.job, dp_steps=meta.dp_steps)


def _check_report(num_examples: int, metrics: dict[str, float]) -> None:
    """A site's example count and metrics: strict types, known names, each in its range."""
    try:
        check_num_examples(num_examples)
        check_reported_metrics(metrics)
    except ConfigurationError as error:
        raise InvalidInput(str(error), code="invalid_report") from None


def _existing(round_: Round, credential: AgentCredential, sha256: str) -> SubmitResult | None:
    existing = round_.updates.filter(institution=credential.institution_id).first()
    if existing is None:
        return None
    if existing.sha256 != sha256:
        raise Conflict("this site already sent a different update for this round", code="update_exists")
    return SubmitResult(existing, duplicate=True)


def _check_tensors(round_: Round, data: bytes) -> Weights:
    try:
        return deserialize_weights(data, spec=model_spec(round_.base_version))
    except UpdateTooLargeError as error:
        raise TooLarge(str(error)) from error
    except FederationError as error:
        raise InvalidInput(str(error), code="invalid_update") from error


def update_submit(
    *, round_id: int, credential: AgentCredential, meta: UpdateMeta, data: bytes
) -> SubmitResult:
    """Validate and store one site's update; a retry with the same bytes is counted once.

    The tensors are checked and the blob stored (content-addressed, so a repeat is a
    no-op) before the round's lock is taken; under the lock only the record is written.
    An update the round would refuse anyway is refused before its blob is stored.
    """
    round_ = _round_for_site(round_id, credential)
    _check_not_secure(round_)
    data = _within_norm_bound(round_, credential, _check_tensors(round_, data), data)
    sha256 = sha256_hex(data)
    if _existing(round_, credential, sha256) is None:  # a retry gets its first answer below
        _check_update_acceptable(round_, credential, meta)
    blob_store().put(data)
    return _update_accept(round_id, credential, meta, sha256, len(data))


def _within_norm_bound(round_: Round, credential: AgentCredential, weights: Weights, data: bytes) -> bytes:
    """The update's bytes within the study's norm bound: as sent, clipped, or refused (audited).

    Clipping is deterministic, so a retry of the same bytes is stored as the same blob and
    counted once.
    """
    bound = UpdateNormBound.from_json(round_.job.study.update_norm_bound)
    if bound is None:
        return data
    spec = model_spec(round_.base_version)
    check = bound.apply(
        weights, deserialize_weights(blob_store().read(round_.base_version.sha256), spec=spec)
    )
    if check.within:
        return data
    details: dict[str, object] = {
        "round": round_.number,
        "change_norm": check.change_norm,
        "limit": check.limit,
    }
    kind = "update.clipped" if check.clipped else "update.refused_norm"
    audit_record(
        actor=f"agent:{credential.pk}",
        kind=kind,
        institution=credential.institution,
        job=round_.job,
        details=details,
    )
    if not check.clipped:
        raise InvalidInput(
            f"the update changes the model by {check.change_norm:.4g}; this study allows at most "
            f"{check.limit:.4g} (update_norm_bound)",
            code="update_norm_exceeded",
        )
    return serialize_weights(check.weights, spec=spec)


def _check_not_secure(round_: Round) -> None:
    if secure_rounds.is_secure(round_):
        raise Conflict(
            f"round {round_.number} uses secure aggregation: send the masked update to secagg/masked",
            code="secure_round",
        )


def _check_update_acceptable(round_: Round, credential: AgentCredential, meta: UpdateMeta) -> None:
    _check_not_secure(round_)
    _check_site_may_answer(round_, credential)
    if round_.kind != RoundKind.TRAIN or round_.state not in ACCEPTING_STATES:
        raise Conflict(f"round {round_.number} is {round_.state}; it takes no updates", code="round_closed")
    _check_binding(round_, meta)


@transaction.atomic
def _update_accept(
    round_id: int, credential: AgentCredential, meta: UpdateMeta, sha256: str, size: int
) -> SubmitResult:
    round_ = _round(round_id)
    # A retry of an update already accepted gets its first answer, whatever happened since.
    if (duplicate := _existing(round_, credential, sha256)) is not None:
        return duplicate
    _check_update_acceptable(round_, credential, meta)
    update = _update_record(round_, credential, meta.num_examples, meta.metrics, sha256, size, meta.dp_steps)
    privacy.privacy_spend_sample_update(update=update)
    return SubmitResult(update, duplicate=False)


def _update_record(
    round_: Round,
    credential: AgentCredential,
    num_examples: int,
    metrics: dict[str, float],
    sha256: str,
    size: int,
    dp_steps: dict[str, float] | None = None,
) -> Update:
    try:
        with transaction.atomic():
            update = Update.objects.create(
                round=round_,
                institution_id=credential.institution_id,
                credential=credential,
                num_examples=num_examples,
                metrics=metrics,
                sha256=sha256,
                size=size,
                dp_steps=dp_steps or {},
            )
    except IntegrityError:
        raise Conflict("this site already answered this round", code="update_exists") from None
    round_.last_update_at = timezone.now()
    if round_.state == RoundState.OPEN:
        round_.state = RoundState.COLLECTING
    round_.save(update_fields=["last_update_at", "state"])
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="update.received",
        institution=credential.institution,
        job=round_.job,
        details={"round": round_.number, "sha256": sha256, "num_examples": num_examples},
    )
    _round_reached_quorum(round_)
    return update


@transaction.atomic
def evaluation_submit(
    *, round_id: int, credential: AgentCredential, num_examples: int, metrics: dict[str, float]
) -> SubmitResult:
    _round_for_site(round_id, credential)
    round_ = _round(round_id)
    existing = round_.updates.filter(institution=credential.institution_id).first()
    if existing is not None:
        return SubmitResult(existing, duplicate=True)
    _check_site_may_answer(round_, credential)
    if round_.kind != RoundKind.EVALUATE or round_.state not in ACCEPTING_STATES:
        raise Conflict(f"round {round_.number} takes no evaluation now", code="round_closed")
    _check_report(num_examples, metrics)
    return SubmitResult(_update_record(round_, credential, num_examples, metrics, "", 0), duplicate=False)


@transaction.atomic
def job_refuse(*, job_id: int, credential: AgentCredential, reason: str) -> Refusal:
    """A site's agent refuses a job under its local policy; the rounds adapt."""
    job = _locked_job(job_id)
    if not job.study.participants.filter(institution=credential.institution_id).exists():
        raise NotFound("no such job")
    refusal, created = Refusal.objects.get_or_create(
        job=job, institution_id=credential.institution_id, defaults={"reason": reason[:2000]}
    )
    if created:
        audit_record(
            actor=f"agent:{credential.pk}",
            kind="job.refused",
            institution=credential.institution,
            job=job,
            details={"reason": reason[:2000]},
        )
        _rounds_recount(job)
    return refusal


def _rounds_recount(job: Job) -> None:
    sites = _active_site_count(job)
    for round_ in job.rounds.select_for_update(of=("self",)).filter(state__in=ACCEPTING_STATES):
        round_.expected_updates = sites
        round_.save(update_fields=["expected_updates"])
        if sites < job.min_updates:
            _round_fail(round_, f"only {sites} sites still take part")
        else:
            _round_reached_quorum(round_)


def _round_fail(round_: Round, reason: str) -> None:
    round_.state, round_.failure_reason, round_.closed_at = RoundState.FAILED, reason, timezone.now()
    round_.save(update_fields=["state", "failure_reason", "closed_at"])
    audit_record(
        actor="system",
        kind="round.failed",
        job=round_.job,
        details={"round": round_.number, "reason": reason},
    )
    _job_fail(round_.job, f"round {round_.number} failed: {reason}")


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
        queue.job_begin_enqueue(job_id)  # its message was lost: a repeat is harmless
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
        logger.exception("the sweep could not handle round id %s; failing it", round_id)
        return round_fail_unexpected(round_id=round_id, error=error)


def round_fail_unexpected(*, round_id: int, error: Exception) -> str:
    """Fail a round whose processing raised an unexpected error, naming the error.

    Returns ``"failed"``, or ``"unchanged"`` when the round had ended meanwhile or could
    not be failed now (the error is logged; a later sweep tries again).
    """
    reason = f"internal error ({type(error).__name__}): {str(error)[:300]}"
    try:
        with transaction.atomic():
            round_ = _locked_round(round_id)
            if round_ is None or round_.state not in (*ACCEPTING_STATES, RoundState.AGGREGATING):
                return "unchanged"
            _round_fail(round_, reason)
    except Exception:
        logger.exception("round id %s could not be failed either", round_id)
        return "unchanged"
    return "failed"


@transaction.atomic
def _round_deadline(round_id: int) -> str:
    round_ = _locked_round(round_id, skip_locked=True)
    if round_ is None:
        return "unchanged"  # someone holds it; the next sweep looks again
    due = round_.state in ACCEPTING_STATES and round_.deadline_at <= timezone.now()
    if not due or round_.job.state != JobState.RUNNING:
        return "unchanged"  # an update, a pause or another sweep got there first
    if secure_rounds.is_secure(round_):
        return _secure_round_progress(round_, at_deadline=True)
    received = _counted_updates(round_).count()
    # The final evaluation only gathers metrics: its deadline ends it, answered or not.
    if received >= round_.job.min_updates or round_.kind == RoundKind.EVALUATE:
        _round_close_collection(round_)
        return "closed"
    if round_.deadline_extensions < round_.job.max_deadline_extensions:
        return _round_extend(round_, received)
    _round_fail(round_, f"deadline passed with {received} of at least {round_.job.min_updates} updates")
    return "failed"


def _round_extend(round_: Round, received: int) -> str:
    round_.deadline_extensions += 1
    round_.deadline_at = timezone.now() + timedelta(seconds=round_.job.round_deadline_seconds)
    round_.save(update_fields=["deadline_extensions", "deadline_at"])
    audit_record(
        actor="system",
        kind="round.extended",
        job=round_.job,
        details={"round": round_.number, "received": received},
    )
    return "extended"


@transaction.atomic
def _round_requeue(round_id: int) -> str:
    round_ = _locked_round(round_id, skip_locked=True)
    if round_ is None or round_.state != RoundState.AGGREGATING:
        return "unchanged"
    round_.aggregating_since = timezone.now()
    round_.save(update_fields=["aggregating_since"])
    transaction.on_commit(lambda: queue.round_aggregate_enqueue(round_id))
    logger.warning("re-enqueued stalled aggregation of round %s of job %s", round_.number, round_.job_id)
    return "requeued"
