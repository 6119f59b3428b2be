"""A site's answer to a round: a training update or an evaluation (docs/rounds.md).

The checks and the record shared by plain and masked updates are public here
(:func:`check_site_may_answer`, :func:`check_update_binding`, :func:`update_existing`,
:func:`update_record`); :mod:`training.secure_services` takes the masked ones with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation.aggregation.update_bound import UpdateNormBound
from federation.errors import ConfigurationError, FederationError, UpdateTooLargeError
from federation.metric_reports import check_num_examples, check_reported_metrics
from federation.types import Weights
from federation.wire import deserialize_weights, max_update_bytes, serialize_weights, sha256_hex
from fedplatform.errors import Conflict, Forbidden, InvalidInput, TooLarge
from institutions.models import AgentCredential
from training import privacy, secure_rounds
from training.blobs import blob_store
from training.models import ACCEPTING_STATES, JobState, Round, RoundKind, RoundState, Update
from training.selectors import job_model_spec_get, round_get_for_site
from training.services.rounds import round_advance, round_lock


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


def update_size_limit(*, round_id: int, credential: AgentCredential) -> int:
    """The largest update the round can take: checked before an upload is read."""
    round_ = round_get_for_site(round_id=round_id, credential=credential)
    return max_update_bytes(job_model_spec_get(job=round_.job))


def check_site_may_answer(*, round_: Round, credential: AgentCredential) -> None:
    """Conflict unless the job runs; Forbidden if the site refused it."""
    job = round_.job
    if job.state != JobState.RUNNING:
        raise Conflict(f"job {job.pk} is {job.state}; it takes no updates now", code="job_not_running")
    if job.refusals.filter(institution=credential.institution_id).exists():
        raise Forbidden("this site refused the job", code="refused")


def check_update_binding(*, round_: Round, meta: UpdateMeta) -> None:
    """The update names this job, round and base model, and its report is well-formed."""
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


def update_existing(*, round_: Round, credential: AgentCredential, sha256: str) -> SubmitResult | None:
    """The site's update already recorded for the round, as a duplicate answer (``None``
    if it has none); Conflict if that update has other bytes than ``sha256``."""
    existing = round_.updates.filter(institution=credential.institution_id).first()
    if existing is None:
        return None
    if existing.sha256 != sha256:
        raise Conflict("this site already sent a different update for this round", code="update_exists")
    return SubmitResult(existing, duplicate=True)


def _check_tensors(round_: Round, data: bytes) -> Weights:
    try:
        return deserialize_weights(data, spec=job_model_spec_get(job=round_.job))
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
    round_ = round_get_for_site(round_id=round_id, credential=credential)
    _check_not_secure(round_)
    weights = _check_tensors(round_, data)
    first_answer = not round_.updates.filter(institution=credential.institution_id).exists()
    if first_answer:  # a retry gets its first answer below, whatever happened since
        _check_update_acceptable(round_, credential, meta)  # before the norm bound's work
    data = _within_norm_bound(round_, credential, weights, data)
    sha256 = sha256_hex(data)
    update_existing(round_=round_, credential=credential, sha256=sha256)  # a different one: 409
    blob_store().put(data)
    return update_accept(
        round_id=round_id,
        credential=credential,
        meta=meta,
        sha256=sha256,
        size=len(data),
        num_examples=meta.num_examples,
        check_acceptable=_check_update_acceptable,
    )


def _within_norm_bound(round_: Round, credential: AgentCredential, weights: Weights, data: bytes) -> bytes:
    """The update's bytes within the study's norm bound: as sent, clipped, or refused (audited).

    Clipping is deterministic, so a retry of the same bytes is stored as the same blob and
    counted once.
    """
    bound = UpdateNormBound.from_json(round_.job.study.update_norm_bound)
    if bound is None:
        return data
    spec = job_model_spec_get(job=round_.job)
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
    check_site_may_answer(round_=round_, credential=credential)
    if round_.kind != RoundKind.TRAIN or round_.state not in ACCEPTING_STATES:
        raise Conflict(f"round {round_.number} is {round_.state}; it takes no updates", code="round_closed")
    check_update_binding(round_=round_, meta=meta)


@transaction.atomic
def update_accept(
    *,
    round_id: int,
    credential: AgentCredential,
    meta: UpdateMeta,
    sha256: str,
    size: int,
    num_examples: int,
    check_acceptable: Callable[[Round, AgentCredential, UpdateMeta], None],
) -> SubmitResult:
    """Record a stored update (plain or masked) under the round's lock, once per site.

    ``check_acceptable`` is the round's own rule (a training round's, or a secure round's
    mask phase); a retry of an update already accepted gets its first answer instead.
    """
    round_ = round_lock(round_id=round_id)
    if (duplicate := update_existing(round_=round_, credential=credential, sha256=sha256)) is not None:
        return duplicate
    check_acceptable(round_, credential, meta)
    update = update_record(
        round_=round_,
        credential=credential,
        num_examples=num_examples,
        metrics=meta.metrics,
        sha256=sha256,
        size=size,
        dp_steps=meta.dp_steps,
    )
    privacy.privacy_spend_sample_update(update=update)
    return SubmitResult(update, duplicate=False)


def update_record(
    *,
    round_: Round,
    credential: AgentCredential,
    num_examples: int,
    metrics: dict[str, float],
    sha256: str,
    size: int,
    dp_steps: dict[str, float] | None = None,
) -> Update:
    """Record a checked answer (unique per round and site; Conflict for a second one), audit
    it, and let the round move on. Call under the round's lock."""
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
    evaluation = round_.kind == RoundKind.EVALUATE
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="evaluation.received" if evaluation else "update.received",
        institution=credential.institution,
        job=round_.job,
        # An evaluation sends metrics, not tensors: it has no digest.
        details={
            **round_.audit_details(),
            "num_examples": num_examples,
            **({} if evaluation else {"sha256": sha256}),
        },
    )
    round_advance(round_=round_)
    return update


@transaction.atomic
def evaluation_submit(
    *, round_id: int, credential: AgentCredential, num_examples: int, metrics: dict[str, float]
) -> SubmitResult:
    round_get_for_site(round_id=round_id, credential=credential)
    round_ = round_lock(round_id=round_id)
    existing = round_.updates.filter(institution=credential.institution_id).first()
    if existing is not None:
        return SubmitResult(existing, duplicate=True)
    check_site_may_answer(round_=round_, credential=credential)
    if round_.kind != RoundKind.EVALUATE or round_.state not in ACCEPTING_STATES:
        raise Conflict(f"round {round_.number} takes no evaluation now", code="round_closed")
    _check_report(num_examples, metrics)
    update = update_record(
        round_=round_, credential=credential, num_examples=num_examples, metrics=metrics, sha256="", size=0
    )
    return SubmitResult(update, duplicate=False)
