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
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audit.services import audit_record
from federation.data import DataSchema, Standardizer
from federation.data.agreement import SiteSummary, combine_summaries
from federation.data.text import TextSchema, parse_data_schema
from federation.errors import FederationError
from federation.protocol import SummaryTask
from fedplatform.errors import Conflict, InvalidInput
from institutions.models import AgentCredential, Institution
from studies.models import (
    Decision,
    ScalingMode,
    Study,
    StudyParticipant,
    SummaryAnswer,
    SummaryRequest,
    SummaryRequestState,
)

#: Longest refusal reason kept from an agent.
MAX_REASON_CHARS = 2000


def _tabular_schema(study: Study) -> DataSchema:
    schema = parse_data_schema(dict(study.data_schema))
    if isinstance(schema, TextSchema):
        raise InvalidInput("a text study has no features to scale or categories to agree")
    return schema


@transaction.atomic
def summary_request_open(*, study: Study, actor: str) -> SummaryRequest:
    """Ask every approved site of ``study`` for its summary; an open request is superseded."""
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
    now = timezone.now()
    superseded = SummaryRequest.objects.filter(study=study, state=SummaryRequestState.OPEN)
    superseded.update(
        state=SummaryRequestState.FAILED, finished_at=now, reason=f"superseded by {actor}'s new request"
    )
    request = SummaryRequest.objects.create(
        study=study,
        requested_by=actor,
        deadline_at=now + timedelta(seconds=settings.FEDHEALTH_SUMMARY_DEADLINE_SECONDS),
    )
    audit_record(
        actor=actor,
        kind="study.summaries_requested",
        details={"study_id": study.pk, "request_id": request.pk},
    )
    return request


def _open_requests_for(institution_id: int):  # type: ignore[no-untyped-def]
    approved = StudyParticipant.objects.filter(
        study=OuterRef("study"), institution=institution_id, decision=Decision.APPROVED
    )
    answered = SummaryAnswer.objects.filter(request=OuterRef("pk"), institution=institution_id)
    return (
        SummaryRequest.objects.filter(state=SummaryRequestState.OPEN, deadline_at__gt=timezone.now())
        .filter(Exists(approved))
        .exclude(Exists(answered))
    )


def summary_task_for(*, credential: AgentCredential) -> dict[str, object] | None:
    """The oldest open summary request this institution still has to answer, as a task."""
    request = _open_requests_for(credential.institution_id).select_related("study").order_by("pk").first()
    if request is None:
        return None
    study = request.study
    task = SummaryTask(
        request_id=request.pk,
        deadline_at=request.deadline_at.isoformat(),
        study_id=study.pk,
        study_name=study.name,
        data_schema=study.data_schema,
    )
    return task.to_json()


def _answer_of(body: Mapping[str, object], schema: DataSchema) -> tuple[dict[str, object] | None, str]:
    """The checked summary, or the refusal's reason; :class:`InvalidInput` names what is wrong."""
    refusal = body.get("refused")
    if refusal is not None:
        if not isinstance(refusal, str) or not refusal.strip():
            raise InvalidInput("refused must be the reason, a non-empty string")
        return None, refusal.strip()[:MAX_REASON_CHARS]
    try:
        return SiteSummary.from_json(body.get("summary"), schema).to_json(), ""
    except FederationError as error:
        raise InvalidInput(f"summary: {error}") from None


@transaction.atomic
def summary_answer_record(
    *, credential: AgentCredential, request_id: int, body: Mapping[str, object]
) -> SummaryAnswer:
    """Record one site's answer (``{"summary": ...}`` or ``{"refused": reason}``); the last
    answer finishes the request."""
    request = (
        _open_requests_for(credential.institution_id)
        .select_for_update()
        .filter(pk=request_id)
        .select_related("study")
        .first()
    )
    if request is None:
        raise Conflict(
            "no open summary request of an approved study awaits this site's answer", code="not_open"
        )
    summary, refusal = _answer_of(body, _tabular_schema(request.study))
    try:
        with transaction.atomic():
            answer = SummaryAnswer.objects.create(
                request=request, institution_id=credential.institution_id, summary=summary, refusal=refusal
            )
    except IntegrityError:
        raise Conflict("this site has answered this request already", code="answered") from None
    institution = Institution.objects.get(pk=credential.institution_id)
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="study.summary_refused" if refusal else "study.summary_answered",
        institution=institution,
        details={
            "study_id": request.study_id,
            "request_id": request.pk,
            **({"reason": refusal} if refusal else {}),
        },
    )
    _finish_if_answered(request)
    return answer


def _finish_if_answered(request: SummaryRequest) -> None:
    approved = set(
        StudyParticipant.objects.filter(study=request.study_id, decision=Decision.APPROVED).values_list(
            "institution_id", flat=True
        )
    )
    answers = list(request.answers.select_related("institution"))
    if not approved <= {a.institution_id for a in answers}:
        return
    refusals = [f"{a.institution.name}: {a.refusal}" for a in answers if a.refusal]
    if refusals:
        _fail(request, "refused by " + "; ".join(refusals))
        return
    study = Study.objects.select_for_update().get(pk=request.study_id)
    try:
        agreed = combine_summaries(
            _tabular_schema(study),
            [
                SiteSummary.from_json(a.summary, _tabular_schema(study))
                for a in answers
                if a.institution_id in approved
            ],
        )
        scaler = Standardizer.from_moments(agreed.moments)
    except FederationError as error:
        _fail(request, f"the summaries do not combine: {error}")
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


def summary_request_view(*, study: Study) -> dict[str, object] | None:
    """The latest request as the coordinator sees it: its state, who answered, the result."""
    request = latest_summary_request(study=study)
    if request is None:
        return None
    state = request.state
    if state == SummaryRequestState.OPEN and request.deadline_at <= timezone.now():
        state = "expired"
    answered = {a.institution_id: a for a in request.answers.all()}
    sites = [
        {
            "institution": {"id": p.institution_id, "name": p.institution.name},
            "answer": "refused"
            if p.institution_id in answered and answered[p.institution_id].refusal
            else "answered"
            if p.institution_id in answered
            else "waiting",
            "refusal": answered[p.institution_id].refusal if p.institution_id in answered else "",
        }
        for p in study.participants.select_related("institution")
        if p.decision == Decision.APPROVED
    ]
    return {
        "id": request.pk,
        "state": state,
        "requested_by": request.requested_by,
        "requested_at": request.requested_at,
        "deadline_at": request.deadline_at,
        "finished_at": request.finished_at,
        "reason": request.reason,
        "sites": sites,
    }


def scaling_refusal(study: Study) -> str | None:
    """Why ``study`` may not run a job yet: its scaling is to be agreed and is not."""
    if study.scaling_mode == ScalingMode.AGENTS and study.feature_scaling is None:
        return (
            "the study's feature scaling is to be agreed through the sites' agents and is not yet: "
            f"ask them (POST /api/v1/studies/{study.pk}/summaries/, or 'Agree scaling' on the study's page)"
        )
    return None
