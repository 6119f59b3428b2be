"""What an agent may see: work for its institution, and the models of its jobs."""

from __future__ import annotations

from django.db.models import Exists, OuterRef

from federation.models import TrainConfig
from federation.protocol import (
    ModelVersionRef,
    QueryTask,
    StudySettings,
    TaskKind,
    TrainingSettings,
    WorkTask,
)
from institutions.models import AgentCredential
from queries import services as query_services
from studies.agreement import summary_task_for
from studies.models import Decision, StudyParticipant
from training import secure_rounds
from training.models import ACCEPTING_STATES, Job, JobState, ModelVersion, Refusal, Round, Update
from training.selectors import approved_site_id_list


def _open_rounds_for(institution_id: int):  # type: ignore[no-untyped-def]
    approved = StudyParticipant.objects.filter(
        study=OuterRef("job__study"), institution=institution_id, decision=Decision.APPROVED
    )
    answered = Update.objects.filter(round=OuterRef("pk"), institution=institution_id)
    refused = Refusal.objects.filter(job=OuterRef("job"), institution=institution_id)
    return (
        Round.objects.filter(state__in=ACCEPTING_STATES, job__state=JobState.RUNNING)
        .filter(Exists(approved))
        .exclude(Exists(answered), secure_aggregation={})
        .exclude(Exists(refused))
    )


def work_for(*, credential: AgentCredential) -> dict[str, object] | None:
    """The oldest open round this institution still has to answer, as a task, or None.

    A secure-aggregation round asks once per phase, of the phase's members only. A study's
    open summary request (the data agreement) comes before any round.
    """
    summary = summary_task_for(credential=credential)
    if summary is not None:
        return summary
    rounds = (
        _open_rounds_for(credential.institution_id)
        .select_related("job__study", "base_version")
        .order_by("opened_at", "pk")
    )
    for round_ in rounds:
        if not secure_rounds.is_secure(round_):
            return task_for(round_, credential.institution_id)
        approved = approved_site_id_list(job=round_.job)
        if secure_rounds.site_pending(round_, credential.institution_id, approved):
            return task_for(round_, credential.institution_id)
    # Queries come after the rounds: one a site cannot answer never holds its training up.
    return query_task_for(credential=credential)


def study_settings(job: Job) -> StudySettings:
    """What a site needs of a job's study to load its data and build its model."""
    study = job.study
    return StudySettings(
        id=study.pk,
        name=study.name,
        model=study.model_config,
        data_schema=study.data_schema,
        feature_scaling=study.feature_scaling,
        # The job's round plan is the one source of how the job aggregates.
        strategy_name=job.plan.strategy.name.value,
        strategy_params=job.plan.strategy.params(),
        privacy=job.plan.privacy,
        training=_training_settings(study.training),
        validation_fraction=study.validation_fraction,
        seed=study.seed,
    )


def query_task_for(*, credential: AgentCredential) -> dict[str, object] | None:
    """The oldest open query (or step) this institution's data owner approved and its agent
    has not yet answered, as a task; an evaluation carries the study's settings and versions."""
    query = query_services.query_awaiting(credential=credential)
    if query is None:
        return None
    evaluation = None
    if query.spec.get("kind") == "evaluation":
        evaluation = _evaluation_of(query.spec["versions"])
        if evaluation is None:
            query_services.query_fail(query=query, reason="a model version it names no longer exists")
            return None
    task = QueryTask(
        query_id=query.pk,
        deadline_at=query.deadline_at.isoformat(),
        study_id=query.study.pk,
        study_name=query.study.name,
        data_schema=query.data_schema,
        query=query.spec,
        secure_aggregation=query_services.secure_step(query),
        evaluation=evaluation,
    )
    return task.to_json()


def _evaluation_of(version_ids: list[int]) -> dict[str, object] | None:
    """An evaluation's study settings and model versions, or None if a version is gone."""
    by_id = {v.pk: v for v in ModelVersion.objects.filter(pk__in=version_ids).select_related("job__study")}
    if set(by_id) != set(version_ids):
        return None
    ordered = [by_id[v] for v in version_ids]
    return {
        "study": study_settings(ordered[0].job).to_json(),
        "versions": [{"id": v.pk, "sha256": v.sha256, "size": v.size} for v in ordered],
    }


def task_for(round_: Round, institution_id: int) -> dict[str, object]:
    """The task message for one site in one round (``federation.protocol``)."""
    job, version = round_.job, round_.base_version
    task = WorkTask(
        kind=TaskKind(round_.kind),
        job_id=job.pk,
        round_id=round_.pk,
        round_number=round_.number,
        total_rounds=job.num_rounds,
        deadline_at=round_.deadline_at.isoformat(),
        model_version=ModelVersionRef(id=version.pk, sha256=version.sha256, size=version.size),
        study=study_settings(job),
        secure_aggregation=(
            secure_rounds.task_view(round_, institution_id) if secure_rounds.is_secure(round_) else None
        ),
    )
    return task.to_json()


def _training_settings(training: dict[str, object]) -> TrainingSettings:
    """A study's training settings with the defaults the study left out filled in."""
    config = TrainConfig(**training)  # type: ignore[arg-type]  # checked when the study was made
    return TrainingSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        proximal_mu=config.proximal_mu,
        max_steps=config.max_steps,
        class_weighting=config.class_weighting,
    )


def model_version_for_agent(*, credential: AgentCredential, version_id: int) -> ModelVersion | None:
    """A model version of a job this institution approved and has not refused."""
    approved = StudyParticipant.objects.filter(
        study=OuterRef("job__study"), institution=credential.institution_id, decision=Decision.APPROVED
    )
    refused = Refusal.objects.filter(job=OuterRef("job"), institution=credential.institution_id)
    return (
        ModelVersion.objects.filter(pk=version_id)
        .filter(Exists(approved))
        .exclude(Exists(refused))
        .select_related("job")
        .first()
    )


def agent_overview(*, credential: AgentCredential) -> dict[str, object]:
    participations = StudyParticipant.objects.filter(institution=credential.institution_id).select_related(
        "study"
    )
    studies = [{"id": p.study_id, "name": p.study.name, "approval": p.decision} for p in participations]
    study_ids = [p.study_id for p in participations]
    jobs = [
        {
            "id": job.pk,
            "study_id": job.study_id,
            "state": job.state,
            "current_round": job.rounds.order_by("-number").values_list("number", flat=True).first(),
        }
        for job in Job.objects.filter(study_id__in=study_ids).order_by("-pk")[:50]
    ]
    institution = credential.institution
    return {
        "institution": {"id": institution.pk, "name": institution.name},
        "credential_id": credential.pk,
        "studies": studies,
        "jobs": jobs,
    }
