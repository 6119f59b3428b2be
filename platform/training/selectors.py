"""Reading jobs, their progress and their model versions, within a person's scope."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Max, QuerySet, Sum
from django.utils import timezone

from accounts.selectors import Scope, scope_queryset
from federation.errors import ConfigurationError
from federation.models import TextModelConfig, model_config_from_json
from federation.policy_limits import PolicyLimits, limits_refusal
from federation.types import ModelSpec
from fedplatform.errors import NotFound
from institutions.models import AgentCredential, Institution
from institutions.selectors import is_online
from queries.models import QuerySpend
from studies.models import Decision, StudyParticipant
from training.models import Job, ModelVersion, PrivacySpend, Refusal, Round, RoundKind, Update

_JOB_SCOPE = "study__participants__institution"


def job_list(*, scope: Scope, study_id: int | None = None, state: str | None = None) -> QuerySet[Job]:
    """Jobs with ``current_round`` (the highest round number, or None) annotated."""
    queryset = (
        Job.objects.select_related("study")
        .annotate(current_round=Max("rounds__number"), most_epsilon_spent=Max("privacy_spends__epsilon"))
        .order_by("-pk")
    )
    if study_id is not None:
        queryset = queryset.filter(study_id=study_id)
    if state is not None:
        queryset = queryset.filter(state=state)
    return scope_queryset(queryset, scope=scope, institution_path=_JOB_SCOPE)


def job_get(*, scope: Scope, job_id: int) -> Job:
    job = job_list(scope=scope).filter(pk=job_id).first()
    if job is None:
        raise NotFound("no such job")
    return job


def update_list(*, scope: Scope, job: Job) -> QuerySet[Update]:
    """Each site's answer to each round of ``job`` (training updates and final evaluations),
    by round then site, with their example counts and metrics; a data owner sees only their
    own site's (call with a job in scope)."""
    queryset = (
        Update.objects.filter(round__job=job)
        .select_related("round", "institution")
        .order_by("round__number", "institution__name")
    )
    return scope_queryset(queryset, scope=scope, institution_path="institution")


def model_version_list(*, job: Job) -> QuerySet[ModelVersion]:
    """The job's global models, oldest first (call with a job in scope)."""
    return ModelVersion.objects.filter(job=job).select_related("parent", "made_by_round").order_by("number")


def provenance_visible(*, scope: Scope, version: ModelVersion) -> dict[str, object]:
    """A version's provenance; a data owner sees only their own site's update in it."""
    provenance = dict(version.provenance)
    updates = provenance.get("updates")
    if scope.is_data_owner and scope.institution_id is not None and isinstance(updates, list):
        own = Institution.objects.filter(pk=scope.institution_id).values_list("name", flat=True).first()
        provenance["updates"] = [u for u in updates if u.get("institution") == own]
        provenance.pop("details", None)  # per-site weights and selections
    return provenance


def model_version_get(*, scope: Scope, version_id: int) -> ModelVersion:
    queryset = scope_queryset(
        ModelVersion.objects.select_related("job"), scope=scope, institution_path=f"job__{_JOB_SCOPE}"
    )
    version = queryset.filter(pk=version_id).first()
    if version is None:
        raise NotFound("no such model version")
    return version


# --- progress ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundProgress:
    number: int
    kind: str
    state: str
    expected_updates: int
    received: int
    opened_at: datetime
    deadline_at: datetime
    last_update_at: datetime | None
    closed_at: datetime | None
    duration_seconds: float
    metrics: dict[str, float]
    failure_reason: str
    #: Bytes the sites sent (their updates) and fetched (the round's global model, once per
    #: answering site; for a text model, its adapters and head).
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(frozen=True)
class SiteProgress:
    institution: Institution
    decision: str
    refused: bool
    refusal_reason: str
    updates_sent: int
    last_update_at: datetime | None
    latest_metrics: dict[str, float]
    agent_online: bool
    agent_last_seen_at: datetime | None


@dataclass(frozen=True)
class JobProgress:
    job: Job
    rounds: list[RoundProgress]
    sites: list[SiteProgress]
    #: A text model's whole size in float32, which full fine-tuning would send; None otherwise.
    full_model_bytes: int | None = None


def job_progress(*, scope: Scope, job: Job) -> JobProgress:
    """Per round and per site; a data owner sees only their own site's row."""
    now = timezone.now()
    participants = StudyParticipant.objects.filter(study_id=job.study_id).select_related("institution")
    participants = scope_queryset(participants, scope=scope, institution_path="institution")
    return JobProgress(
        job=job,
        rounds=_rounds_progress(job, now),
        sites=_sites_progress(job, list(participants), now),
        full_model_bytes=job_full_model_bytes(job=job),
    )


def job_full_model_bytes(*, job: Job) -> int | None:
    """What the whole model of a text study weighs in float32 (its adapters are what travels)."""
    try:
        config = model_config_from_json(job.study.model_config)
    except ConfigurationError:
        return None
    return config.full_model_bytes if isinstance(config, TextModelConfig) else None


def _rounds_progress(job: Job, now: datetime) -> list[RoundProgress]:
    rounds = (
        Round.objects.filter(job=job)
        .select_related("base_version")
        .annotate(received=Count("updates"), bytes_up=Sum("updates__size"))
        .order_by("number")
    )
    return [
        RoundProgress(
            number=round_.number,
            kind=round_.kind,
            state=round_.state,
            expected_updates=round_.expected_updates,
            received=round_.received,
            opened_at=round_.opened_at,
            deadline_at=round_.deadline_at,
            last_update_at=round_.last_update_at,
            closed_at=round_.closed_at,
            duration_seconds=round_.duration_seconds(now, job.paused_at),
            metrics=round_.metrics,
            failure_reason=round_.failure_reason,
            bytes_up=int(round_.bytes_up or 0),
            bytes_down=round_.base_version.size * round_.received,
        )
        for round_ in rounds
    ]


@dataclass
class _SiteActivity:
    updates_sent: int = 0
    last_update_at: datetime | None = None
    latest_metrics: dict[str, float] = field(default_factory=dict)


def _site_activity(job: Job) -> dict[int, _SiteActivity]:
    """Training updates sent per site, and the time and metrics of each site's latest answer."""
    activity: dict[int, _SiteActivity] = defaultdict(_SiteActivity)
    answers = Update.objects.filter(round__job=job).order_by("received_at", "pk")
    for institution_id, kind, received_at, metrics in answers.values_list(
        "institution_id", "round__kind", "received_at", "metrics"
    ):
        site = activity[institution_id]
        site.updates_sent += kind == RoundKind.TRAIN
        site.last_update_at, site.latest_metrics = received_at, metrics
    return activity


def _agents_last_seen(institution_ids: list[int]) -> dict[int, datetime | None]:
    active = AgentCredential.objects.filter(institution_id__in=institution_ids, revoked_at__isnull=True)
    rows = active.values("institution_id").annotate(last_seen=Max("last_seen_at"))
    return {row["institution_id"]: row["last_seen"] for row in rows}


def _sites_progress(job: Job, participants: list[StudyParticipant], now: datetime) -> list[SiteProgress]:
    refusals = dict(Refusal.objects.filter(job=job).values_list("institution_id", "reason"))
    activity = _site_activity(job)
    last_seen = _agents_last_seen([participant.institution_id for participant in participants])
    sites = []
    for participant in participants:
        site = activity.get(participant.institution_id, _SiteActivity())
        seen = last_seen.get(participant.institution_id)
        sites.append(
            SiteProgress(
                institution=participant.institution,
                decision=participant.decision,
                refused=participant.institution_id in refusals,
                refusal_reason=refusals.get(participant.institution_id, ""),
                updates_sent=site.updates_sent,
                last_update_at=site.last_update_at,
                latest_metrics=site.latest_metrics,
                agent_online=is_online(seen, now=now),
                agent_last_seen_at=seen,
            )
        )
    return sites


@dataclass(frozen=True)
class PrivacyLedger:
    """What one institution has spent of its privacy, job by job, and in total.

    The total is the sum of the jobs' epsilons and deltas (basic composition): an upper
    bound that holds whatever the mechanisms, since different studies may use the same rows.
    """

    institution: Institution
    entries: list[PrivacySpend]
    total_epsilon: float
    total_delta: float
    #: Noised federated queries the institution answered (pure epsilon-DP, delta 0).
    query_entries: list[QuerySpend]


def privacy_ledger(*, institution: Institution) -> PrivacyLedger:
    """The institution's privacy ledger (call with an institution in scope)."""
    entries = list(
        PrivacySpend.objects.filter(institution=institution).select_related("job__study").order_by("job_id")
    )
    queries = list(
        QuerySpend.objects.filter(institution=institution).select_related("query__study").order_by("query_id")
    )
    return PrivacyLedger(
        institution=institution,
        entries=entries,
        total_epsilon=sum(entry.epsilon for entry in entries) + sum(q.epsilon for q in queries),
        total_delta=min(1.0, sum(entry.delta for entry in entries)),
        query_entries=queries,
    )


#: The sites' validation loss of a model version, by task: the first one its metrics hold.
VALIDATION_LOSSES = ("log_loss", "mse")


def version_validation_loss(version: ModelVersion) -> float | None:
    """The loss the sites measured on their validation rows for ``version`` (the next
    round's ``global_`` metrics), or None before they have."""
    for name in VALIDATION_LOSSES:
        value = version.metrics.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


def measured_versions(*, job: Job) -> list[tuple[ModelVersion, float]]:
    """The job's model versions the sites have evaluated, in order, with their loss."""
    versions = job.model_versions.order_by("number")
    return [(v, loss) for v in versions if (loss := version_validation_loss(v)) is not None]


def best_model_version(*, job: Job) -> ModelVersion | None:
    """The version with the lowest validation loss (the earliest of equals)."""
    measured = measured_versions(job=job)
    return min(measured, key=lambda pair: pair[1])[0] if measured else None


def job_epsilon_spent(*, job: Job) -> float | None:
    """The most any site has spent in ``job`` (None: the job uses no DP). Jobs from
    :func:`job_list` carry it annotated; others cost one query."""
    if not job.plan.privacy.uses_dp:
        return None
    if hasattr(job, "most_epsilon_spent"):
        return float(job.most_epsilon_spent or 0.0)
    spent = PrivacySpend.objects.filter(job=job).aggregate(most=Max("epsilon"))["most"]
    return float(spent or 0.0)


# --- what the round services read ---------------------------------------------------------


@dataclass(frozen=True)
class LaunchWarning:
    """A site that will refuse a job, and why (from the limits its agent last reported)."""

    institution: str
    reason: str


def job_launch_warnings(*, job: Job) -> list[LaunchWarning]:
    """Before a job starts: each participating site whose reported policy refuses it, with
    the rule, or whose agent has reported nothing yet. Which studies a site approves stays
    at the site; the study's approvals on the server cover that."""
    study = job.study
    shape = {
        "rounds": job.num_rounds,
        "epochs": int(study.training.get("epochs", 1)),
        "model_kind": str(study.model_config.get("kind", "")),
        "strategy": study.strategy,
        "privacy": job.plan.privacy,
    }
    warnings = []
    for participant in study.participants.select_related("institution").order_by("institution__name"):
        name = participant.institution.name
        reported = _reported_limits(participant.institution)
        if reported is None:
            warnings.append(LaunchWarning(name, "no agent of this site has reported its policy yet"))
            continue
        reason = limits_refusal(reported, **shape)
        if reason is not None:
            warnings.append(LaunchWarning(name, reason))
    return warnings


def _reported_limits(institution: Institution) -> PolicyLimits | None:
    """The limits the institution's most recently seen active agent reported."""
    credentials = AgentCredential.objects.filter(institution=institution, revoked_at__isnull=True)
    latest = credentials.exclude(policy={}).order_by("-last_seen_at").first()
    return None if latest is None else PolicyLimits.from_json(latest.policy)


def approved_site_id_list(*, job: Job) -> set[int]:
    """The institutions that approved the job's study (refusals of the job not removed)."""
    approved = job.study.participants.filter(decision=Decision.APPROVED)
    return set(approved.values_list("institution_id", flat=True))


def job_model_spec_get(*, job: Job) -> ModelSpec:
    """The spec of the job's model, fixed in its round plan when the initial model is built."""
    spec = job.plan.model_spec
    if spec is None:
        raise RuntimeError(f"job {job.pk} has no model yet, so no model spec")
    return spec


def round_get_for_site(*, round_id: int, credential: AgentCredential) -> Round:
    """The round, unlocked, if the credential's institution takes part; else NotFound."""
    round_ = Round.objects.select_related("job__study", "base_version").filter(pk=round_id).first()
    if round_ is None or not _site_takes_part(round_, credential):
        raise NotFound("no such round")  # another institution's round: no existence leak
    return round_


def _site_takes_part(round_: Round, credential: AgentCredential) -> bool:
    return round_.job.study.participants.filter(
        institution=credential.institution_id, decision=Decision.APPROVED
    ).exists()


def counted_update_list(*, round_: Round) -> QuerySet[Update]:
    """The round's updates from sites that still take part (a refusal withdraws one)."""
    refused = Refusal.objects.filter(job=round_.job_id).values("institution")
    return round_.updates.exclude(institution__in=refused)
