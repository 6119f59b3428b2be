"""The data agreement: a study's feature scaling and categories, agreed through the agents.

Once every site has approved, the coordinator opens a :class:`SummaryRequest`
(:func:`summary_request_open`). Each approved site's agent finds it in its work
(:func:`summary_task_for`), checks it against its own policy and answers with the
aggregates of its file, or refuses with its reason (:func:`summary_answer_record`). When
every approved site has answered, :func:`federation.data.agreement.combine_summaries` gives
the union of the categories and the pooled moments, and the study stores the widened schema,
the model's new width and the scaling. A refusal fails the request, naming the site and
its reason; a request nobody finishes expires at its deadline and may be asked again.

The features are fixed once the study has a job: a new agreement could change the encoded
columns under the versions trained so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.selectors import Scope
from audit.services import audit_record
from federation.data import DataSchema, Standardizer
from federation.data.agreement import SiteSummary, combine_summaries, summary_length, summary_of_vector
from federation.data.text import TextSchema, parse_data_schema
from federation.errors import FederationError
from federation.models import model_config_from_json
from federation.privacy.secure_sum import FRACTION_BITS, from_text, masked_length, unmasked_sum
from federation.protocol import SummaryTask
from fedplatform.errors import Conflict, InvalidInput
from fedplatform.secure_sum_steps import SecurePhase, masked_of, public_key_of, refusal_of
from institutions.models import AgentCredential, Institution
from studies.model_limits import check_model_size
from studies.models import (
    Decision,
    ScalingMode,
    Study,
    StudyParticipant,
    SummaryAnswer,
    SummaryRequest,
    SummaryRequestState,
)


def secure_promised(study: Study) -> bool:
    """Whether the study's privacy settings promise secure aggregation: its summaries too."""
    return bool((study.privacy or {}).get("secure_aggregation", False))


def _tabular_schema(study: Study) -> DataSchema:
    schema = parse_data_schema(dict(study.data_schema))
    if isinstance(schema, TextSchema):
        raise InvalidInput("a text study has no features to scale or categories to agree")
    return schema


@transaction.atomic
def summary_request_open(
    *, study: Study, actor: str, secure_aggregation: bool | None = None
) -> SummaryRequest:
    """Ask every approved site of ``study`` for its summary; an open request is superseded.
    ``secure_aggregation`` (default: as the study's privacy settings say) sums the summaries
    so that the server sees only the total."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    _tabular_schema(study)
    pending = [
        p.institution.name
        for p in study.participants.select_related("institution")
        if p.decision != Decision.APPROVED
    ]
    if pending:
        raise Conflict(
            f"every site must approve the study first; not yet approved: {', '.join(pending)}",
            code="not_approved",
        )
    if study.jobs.exists():
        raise Conflict(
            "the study has jobs: its features are fixed (a new agreement could change the columns "
            "its versions were trained on); set up a new study to agree them again",
            code="study_has_jobs",
        )
    promised = secure_promised(study)
    if secure_aggregation is None:
        secure_aggregation = promised
    if promised and not secure_aggregation:
        raise InvalidInput(
            "the study promises secure aggregation: its summaries too are summed securely",
            code="secure_promised",
        )
    if secure_aggregation and study.participants.count() < 2:
        raise InvalidInput("a secure sum needs at least two sites")
    now = timezone.now()
    for superseded in SummaryRequest.objects.filter(study=study, state=SummaryRequestState.OPEN):
        _fail(superseded, f"superseded by {actor}'s new request")
    request = SummaryRequest.objects.create(
        study=study,
        requested_by=actor,
        deadline_at=now + timedelta(seconds=settings.FEDHEALTH_SUMMARY_DEADLINE_SECONDS),
        secure_aggregation=secure_aggregation,
        phase=SecurePhase.KEYS if secure_aggregation else "",
    )
    audit_record(
        actor=actor,
        kind="study.summaries_requested",
        details={"study_id": study.pk, "request_id": request.pk, "secure_aggregation": secure_aggregation},
    )
    return request


def _open_requests_for(institution_id: int):  # type: ignore[no-untyped-def]
    approved = StudyParticipant.objects.filter(
        study=OuterRef("study"), institution=institution_id, decision=Decision.APPROVED
    )
    return SummaryRequest.objects.filter(
        state=SummaryRequestState.OPEN, deadline_at__gt=timezone.now()
    ).filter(Exists(approved))


def _awaits(request: SummaryRequest, answer: SummaryAnswer | None) -> bool:
    """Whether the site of ``answer`` (None: it has not answered) still owes the request a step."""
    if answer is None:
        return True
    if answer.refusal or answer.summary is not None:
        return False
    return request.secure_aggregation and request.phase == SecurePhase.MASK and not answer.masked


def _roster(request: SummaryRequest) -> dict[str, str]:
    return {str(a.institution_id): a.public_key for a in request.answers.all() if a.public_key}


def summary_task_for(*, credential: AgentCredential) -> dict[str, object] | None:
    """The oldest open summary request (or step of one) this institution owes, as a task."""
    institution_id = credential.institution_id
    for request in _open_requests_for(institution_id).select_related("study").order_by("pk"):
        if not _awaits(request, request.answers.filter(institution_id=institution_id).first()):
            continue
        secure = None
        if request.secure_aggregation:
            secure = {"phase": request.phase, "fraction_bits": FRACTION_BITS}
            if request.phase == SecurePhase.MASK:
                secure["roster"] = _roster(request)
        task = SummaryTask(
            request_id=request.pk,
            deadline_at=request.deadline_at.isoformat(),
            study_id=request.study.pk,
            study_name=request.study.name,
            data_schema=request.study.data_schema,
            secure_aggregation=secure,
        )
        return task.to_json()
    return None


def _plain_summary(body: Mapping[str, object], schema: DataSchema) -> dict[str, object]:
    if "summary" not in body:
        raise Conflict("this request asks for a summary: send summary (or refused)", code="wrong_phase")
    try:
        return SiteSummary.from_json(body["summary"], schema).to_json()
    except FederationError as error:
        raise InvalidInput(f"summary: {error}") from None


def _locked_request(credential: AgentCredential, request_id: int) -> SummaryRequest:
    """The open request, its study locked first (the order every writer takes: study, request)."""
    study_id = SummaryRequest.objects.filter(pk=request_id).values_list("study_id", flat=True).first()
    if study_id is not None:
        Study.objects.select_for_update().filter(pk=study_id).first()
    request = (
        _open_requests_for(credential.institution_id)
        .select_for_update(of=("self",))
        .filter(pk=request_id)
        .select_related("study")
        .first()
    )
    if request is None:
        raise Conflict(
            "no open summary request of an approved study awaits this site's answer", code="not_open"
        )
    return request


@transaction.atomic
def summary_answer_record(
    *, credential: AgentCredential, request_id: int, body: Mapping[str, object]
) -> SummaryAnswer:
    """Record one site's answer: ``{"summary": ...}``, or under secure aggregation its
    ``{"public_key": ...}`` then its ``{"masked": ...}``, or ``{"refused": reason}`` at any
    step. The last answer finishes the request."""
    request = _locked_request(credential, request_id)
    answer = request.answers.filter(institution_id=credential.institution_id).first()
    if not _awaits(request, answer) or (answer is not None and request.phase == SecurePhase.KEYS):
        raise Conflict("this site has answered this step already", code="answered")
    if request.phase == SecurePhase.MASK and (answer is None or not answer.public_key):
        raise Conflict("this site sent no key for this request: it is not in the sum", code="not_in_roster")
    answer = answer or SummaryAnswer(request=request, institution_id=credential.institution_id)
    schema = _tabular_schema(request.study)
    refusal = refusal_of(body)
    if refusal is not None:
        answer.refusal = refusal
    elif not request.secure_aggregation:
        answer.summary = _plain_summary(body, schema)
    elif request.phase == SecurePhase.KEYS:
        answer.public_key = public_key_of(body)
    else:
        answer.masked = masked_of(body, summary_length(schema))
    answer.save()
    _audit_answer(credential, request, refusal)
    _advance(request)
    return answer


def _audit_answer(credential: AgentCredential, request: SummaryRequest, refusal: str | None) -> None:
    step = "" if not request.secure_aggregation else f" ({request.phase})"
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="study.summary_refused" if refusal else "study.summary_answered",
        institution=Institution.objects.get(pk=credential.institution_id),
        details={
            "study_id": request.study_id,
            "request_id": request.pk,
            "step": f"summary{step}",
            **({"reason": refusal} if refusal else {}),
        },
    )


def _advance(request: SummaryRequest) -> None:
    """Fail on a refusal; once every site has taken the step: the next step, or the result.
    Only the sites that approve the study count (a decision that changes fails the request:
    :func:`summary_requests_fail_on_decision`)."""
    approved = set(
        StudyParticipant.objects.filter(study=request.study_id, decision=Decision.APPROVED).values_list(
            "institution_id", flat=True
        )
    )
    answers = [a for a in request.answers.select_related("institution") if a.institution_id in approved]
    refusals = [f"{a.institution.name}: {a.refusal}" for a in answers if a.refusal]
    if refusals:
        _fail(request, "refused by " + "; ".join(refusals))
        return
    if any(_awaits(request, a) for a in answers) or not approved <= {a.institution_id for a in answers}:
        return
    if request.secure_aggregation and request.phase == SecurePhase.KEYS:
        request.phase = SecurePhase.MASK
        request.save(update_fields=["phase"])
        return
    _finish(request, answers)


def _total_summary(
    request: SummaryRequest, answers: list[SummaryAnswer], schema: DataSchema
) -> list[SiteSummary]:
    """The sites' summaries, or under secure aggregation the one summary of their sum."""
    if not request.secure_aggregation:
        return [SiteSummary.from_json(a.summary, schema) for a in answers]
    length = masked_length(summary_length(schema))
    total = unmasked_sum([from_text(a.masked, length) for a in answers])
    # The total is checked as a site's summary is: it must be a summary of real rows.
    return [SiteSummary.from_json(summary_of_vector(total, schema).to_json(), schema)]


def _finish(request: SummaryRequest, answers: list[SummaryAnswer]) -> None:
    study = Study.objects.select_for_update().get(pk=request.study_id)
    if study.jobs.exists():  # a job was created meanwhile: its versions fix the columns
        _fail(request, "the study has a job now: its features are fixed")
        return
    schema = _tabular_schema(study)
    try:
        agreed = combine_summaries(schema, _total_summary(request, answers, schema))
        scaler = Standardizer.from_moments(agreed.moments)
        check_model_size(model_config_from_json({**study.model_config, "num_features": scaler.num_features}))
    except (FederationError, ArithmeticError, ValueError) as error:
        _fail(request, f"the summaries do not combine: {error}")
        return
    except InvalidInput as error:
        _fail(request, f"the agreed categories make the model too large: {error.message}")
        return
    _store_agreement(study, agreed.schema, scaler)
    request.state = SummaryRequestState.COMPLETE
    request.finished_at = timezone.now()
    request.save(update_fields=["state", "finished_at"])
    audit_record(
        actor="system",
        kind="study.scaling_agreed",
        details={
            "study_id": study.pk,
            "request_id": request.pk,
            "sites": len(answers),
            "rows": agreed.moments.count,
            "secure_aggregation": request.secure_aggregation,
        },
    )


def _store_agreement(study: Study, schema: DataSchema, scaler: Standardizer) -> None:
    """The widened schema, the model's width to match it, and the scaling."""
    study.data_schema = schema.to_json()
    study.model_config = {**study.model_config, "num_features": scaler.num_features}
    study.feature_scaling = scaler.to_json()
    study.scaling_mode = ScalingMode.AGENTS
    study.save(update_fields=["data_schema", "model_config", "feature_scaling", "scaling_mode"])


def _fail(request: SummaryRequest, reason: str) -> None:
    request.state = SummaryRequestState.FAILED
    request.finished_at = timezone.now()
    request.reason = reason
    request.save(update_fields=["state", "finished_at", "reason"])
    audit_record(
        actor="system",
        kind="study.summaries_failed",
        details={"study_id": request.study_id, "request_id": request.pk, "reason": reason},
    )


def latest_summary_request(*, study: Study) -> SummaryRequest | None:
    return study.summary_requests.prefetch_related("answers__institution").first()


def summary_request_view(*, study: Study, scope: Scope) -> dict[str, object] | None:
    """The latest request: its state, who answered, the result. A data owner reads the
    refusal of their own site only (another site's reasons speak of its data)."""
    request = latest_summary_request(study=study)
    if request is None:
        return None
    state = request.state
    if state == SummaryRequestState.OPEN and request.deadline_at <= timezone.now():
        state = "expired"
    answers = {a.institution_id: a for a in request.answers.all()}
    sites = [
        {
            "institution": {"id": p.institution_id, "name": p.institution.name},
            "answer": _answer_state(request, answers.get(p.institution_id)),
            "refusal": answers[p.institution_id].refusal
            if p.institution_id in answers and _may_read(scope, p.institution_id)
            else "",
        }
        for p in study.participants.select_related("institution")
        if p.decision == Decision.APPROVED
    ]
    return {
        "id": request.pk,
        "state": state,
        "secure_aggregation": request.secure_aggregation,
        "phase": request.phase,
        "requested_by": request.requested_by,
        "requested_at": request.requested_at,
        "deadline_at": request.deadline_at,
        "finished_at": request.finished_at,
        "reason": request.reason if scope.sees_every_institution else _own_reason(request, scope),
        "sites": sites,
    }


def _may_read(scope: Scope, institution_id: int) -> bool:
    return scope.sees_every_institution or scope.institution_id == institution_id


def _own_reason(request: SummaryRequest, scope: Scope) -> str:
    if not request.reason:
        return ""
    return "the request failed; your site's answer is listed below" if request.state == "failed" else ""


def _answer_state(request: SummaryRequest, answer: SummaryAnswer | None) -> str:
    if answer is not None and answer.refusal:
        return "refused"
    return "waiting" if _awaits(request, answer) else "answered"


def scaling_refusal(study: Study) -> str | None:
    """Why ``study`` may not run a job yet: its scaling is to be agreed and is not."""
    if study.scaling_mode == ScalingMode.AGENTS and study.feature_scaling is None:
        return (
            "the study's feature scaling is to be agreed through the sites' agents and is not yet: "
            f"ask them (POST /api/v1/studies/{study.pk}/summaries/, or 'Agree scaling' on the study's page)"
        )
    return None


def summary_requests_fail_on_decision(*, study: Study, institution_name: str) -> None:
    """A site's decision changed: the study's open request no longer asks the right sites."""
    for request in SummaryRequest.objects.filter(study=study, state=SummaryRequestState.OPEN):
        _fail(request, f"{institution_name} changed its decision while the sites answered; ask again")


def summary_request_open_exists(*, study: Study) -> bool:
    """Whether the study has a summary request still running (a job would race it)."""
    return SummaryRequest.objects.filter(
        study=study, state=SummaryRequestState.OPEN, deadline_at__gt=timezone.now()
    ).exists()
