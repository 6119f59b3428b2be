"""A job's life: created, started (its initial model built in a worker), paused, resumed,
cancelled, refused by a site; and the model versions it writes (docs/rounds.md)."""

from __future__ import annotations

import json
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.selectors import Scope
from audit.services import audit_record
from federation.bundle import BundleContents, write_bundle
from federation.errors import FederationError
from federation.models import TextModelConfig, initial_weights, model_config_from_json
from federation.types import ModelSpec, Weights
from federation.wire import deserialize_weights, max_update_bytes, serialize_weights
from fedplatform.errors import Conflict, InvalidInput, NotFound, TooLarge
from institutions.models import AgentCredential
from studies.agreement import scaling_refusal, summary_request_open_exists
from studies.models import Decision, Study
from training import privacy, queue
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
)
from training.selectors import job_epsilon_spent, model_version_get, provenance_visible
from training.services.rounds import job_fail, job_lock, round_open, rounds_recount

#: The most rounds a job may have, and the longest round deadline: the API and the
#: console's form take their input limits from here.
MAX_ROUNDS = 10_000
MAX_DEADLINE_SECONDS = 7 * 24 * 3600


@transaction.atomic
def job_create(
    *,
    study: Study,
    num_rounds: int,
    min_updates: int,
    round_deadline_seconds: int,
    max_deadline_extensions: int,
    actor: str,
    early_stopping_rounds: int | None = None,
) -> Job:
    refusal = scaling_refusal(study)
    if refusal is not None:
        raise Conflict(refusal, code="scaling_not_agreed")
    if summary_request_open_exists(study=study):
        raise Conflict(
            "the sites are answering a summary request of this study: wait for its result (or its "
            "deadline) before creating a job",
            code="agreement_running",
        )
    participants = study.participants.count()
    if not 1 <= min_updates <= participants:
        raise InvalidInput(f"min_updates must lie between 1 and the {participants} participants of the study")
    if num_rounds < 1:
        raise InvalidInput("a job needs at least one round")
    plan = privacy.job_plan_resolve(study=study, num_rounds=num_rounds)
    fewest = plan.strategy.minimum_updates()
    if min_updates < fewest:
        raise InvalidInput(
            f"min_updates is {min_updates}, but {plan.strategy.name.value} needs at least {fewest} updates "
            "to combine a round: a round closed with fewer would fail"
        )
    job = Job.objects.create(
        study=study,
        plan=plan,
        num_rounds=num_rounds,
        min_updates=min_updates,
        round_deadline_seconds=round_deadline_seconds,
        max_deadline_extensions=max_deadline_extensions,
        early_stopping_rounds=early_stopping_rounds,
        created_by=actor,
    )
    audit_record(
        actor=actor, kind="job.created", job=job, details={"study_id": study.pk, "num_rounds": num_rounds}
    )
    return job


@transaction.atomic
def job_start(*, job_id: int, actor: str) -> Job:
    """Check every site approved and start the job; a worker then writes its initial model.

    The model is never built here, inside a web request: :func:`job_begin` builds it in a
    Celery worker and opens round 1 (the sweep starts it again if its message is lost).
    """
    job = job_lock(job_id=job_id)
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
    config = model_config_from_json(job.study.model_config)
    weights = initial_weights(config, seed=job.study.seed)
    with transaction.atomic():
        job = job_lock(job_id=job_id)
        if not _awaits_initial_model(job):
            return None
        spec = ModelSpec.from_weights(weights)
        job.plan = job.plan.with_model_spec(spec)
        job.save(update_fields=["plan"])
        version = model_version_write(job=job, number=0, weights=weights, spec=spec, parent=None, round_=None)
        round_open(job=job)
    return version


def _base_model_record(job: Job) -> dict[str, object]:
    """For a text model, the pinned base model the version's adapters belong to."""
    config = model_config_from_json(job.study.model_config)
    if not isinstance(config, TextModelConfig):
        return {}
    return {"base_model": {"name": config.base_model.name, "files": dict(config.base_model.files)}}


@transaction.atomic
def job_fail_to_begin(*, job_id: int, reason: str) -> None:
    """A job whose initial model cannot be built fails, with the reason."""
    job = job_lock(job_id=job_id)
    if _awaits_initial_model(job):
        job_fail(job=job, reason=f"the initial model could not be built: {reason}")


def model_version_write(
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
    """Store a model version's blob (content-addressed, its spec in the metadata) and the
    server optimizer's state, and record the version. Call inside the writer's transaction."""
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
        provenance={**(provenance or {}), **_base_model_record(job)},
    )


def _transition(job_id: int, *, allowed: tuple[str, ...], target: str, actor: str) -> Job:
    job = job_lock(job_id=job_id)
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
    job = _transition(job_id, allowed=(JobState.RUNNING,), target=JobState.PAUSED, actor=actor)
    job.paused_at = timezone.now()
    job.save(update_fields=["paused_at"])
    return job


def _end_pause(job: Job) -> None:
    """Stop the pause's clock: the rounds it held open do not count it as their time."""
    if job.paused_at is None:
        return
    paused = (timezone.now() - job.paused_at).total_seconds()
    job.rounds.filter(state__in=ACCEPTING_STATES).update(paused_seconds=F("paused_seconds") + paused)
    job.paused_at = None
    job.save(update_fields=["paused_at"])


@transaction.atomic
def job_resume(*, job_id: int, actor: str) -> Job:
    """Resume; the current round gets a fresh deadline, since nobody could work while paused."""
    job = _transition(job_id, allowed=(JobState.PAUSED,), target=JobState.RUNNING, actor=actor)
    _end_pause(job)
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
    _end_pause(job)
    job.rounds.filter(state__in=ACTIVE_STATES).update(
        state=RoundState.CANCELLED, failure_reason=f"job cancelled by {actor}", closed_at=timezone.now()
    )
    return job


@transaction.atomic
def job_refuse(*, job_id: int, credential: AgentCredential, reason: str) -> Refusal:
    """A site's agent refuses a job under its local policy; the rounds adapt."""
    job = job_lock(job_id=job_id)
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
        rounds_recount(job=job)
    return refusal


def model_version_download(
    *, scope: Scope, version_id: int, actor: str, form: str = "weights"
) -> tuple[ModelVersion, bytes]:
    """A global model's bytes, checked against its digest (BlobCorrupt if they differ), and
    the download recorded in the audit trail: who took which model out, in which form."""
    version = model_version_get(scope=scope, version_id=version_id)
    data = blob_store().read(version.sha256)
    audit_record(
        actor=actor,
        kind="model.downloaded",
        job=version.job,
        details={"version": version.number, "sha256": version.sha256, "form": form},
    )
    return version, data


def model_bundle_download(*, scope: Scope, version_id: int, actor: str) -> tuple[ModelVersion, bytes]:
    """A model version as one zip (:mod:`federation.bundle`): the weights, what applying them
    needs (schema, scaling, class map), its provenance as the person may see it, the sites'
    metrics and a generated model card."""
    version, weights = model_version_download(scope=scope, version_id=version_id, actor=actor, form="bundle")
    job, study = version.job, version.job.study
    rounds = job.rounds.filter(kind=RoundKind.TRAIN, state=RoundState.CLOSED).order_by("number")
    contents = BundleContents(
        weights=weights,
        study={
            "name": study.name,
            "description": study.description,
            "model": study.model_config,
            "data_schema": study.data_schema,
            "feature_scaling": study.feature_scaling,
            "strategy": study.strategy,
            "privacy": {**study.privacy, "epsilon_spent": job_epsilon_spent(job=job)},
            "training": study.training,
        },
        job={
            "id": job.pk,
            "num_rounds": job.num_rounds,
            "rounds_done": rounds.count(),
            "sites": study.participants.count(),
            "state": job.state,
        },
        version={
            "number": version.number,
            "sha256": version.sha256,
            "made_by_round": version.made_by_round.number if version.made_by_round else None,
        },
        provenance=provenance_visible(scope=scope, version=version),
        metrics=version.metrics,
        rounds=[{"number": r.number, "received": r.updates.count(), "metrics": r.metrics} for r in rounds],
    )
    return version, write_bundle(contents)


#: Jobs a model may be uploaded to: none of their rounds can take it as a base any more.
UPLOAD_STATES = (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)


def model_upload_limit(*, job: Job) -> int:
    """The largest blob a model of ``job``'s spec can be."""
    if job.plan.model_spec is None:
        raise Conflict("the job has built no model yet: its model's format is not known", code="no_model")
    return max_update_bytes(job.plan.model_spec)


@transaction.atomic
def model_version_upload(*, job_id: int, data: bytes, name: str, actor: str) -> ModelVersion:
    """A model trained elsewhere in the study's format (the job's tensor names, shapes and
    dtypes), recorded as the job's next version so that the sites can evaluate it beside the
    job's own (docs/analytics.md). Only a finished job takes one: no round starts from it."""
    job = job_lock(job_id=job_id)
    if job.state not in UPLOAD_STATES:
        raise Conflict(
            f"job {job.pk} is {job.state}; a model is uploaded to a finished job", code="invalid_state"
        )
    limit = model_upload_limit(job=job)
    if len(data) > limit:
        raise TooLarge(f"the model is {len(data)} bytes; this job's format takes at most {limit}")
    spec = job.plan.model_spec
    assert spec is not None  # model_upload_limit checked it
    try:
        weights = deserialize_weights(data, spec=spec)
    except FederationError as error:
        # The format's checks include finite values throughout.
        raise InvalidInput(f"the model is not in this job's format: {error}", code="invalid_model") from None
    last = job.model_versions.order_by("-number").first()
    version = model_version_write(
        job=job,
        number=(last.number + 1) if last else 0,
        weights=weights,
        spec=spec,
        parent=None,
        round_=None,
        provenance={"uploaded": {"by": actor, "name": name}},
    )
    audit_record(
        actor=actor,
        kind="model.uploaded",
        job=job,
        details={"version_id": version.pk, "number": version.number, "sha256": version.sha256, "name": name},
    )
    return version
