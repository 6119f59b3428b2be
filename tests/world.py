"""Builders of the control plane's test world: institutions, people with a role, agents'
credentials, studies and jobs, all made through the services as in production.

One place for what the control plane's tests set up; the fixtures built on them are in
:mod:`world_fixtures` (imported by the per-folder conftests), and the richer worlds
(:mod:`platform_world`'s agent clients, the security tests' two-hospital world) use them too.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import Role
from accounts.services import CreatedUser, user_create
from institutions.models import AgentCredential, Institution
from institutions.services import agent_enroll, enrollment_token_create
from studies.models import Study
from studies.services import study_create, study_decide
from training.models import Job
from training.services import job_begin, job_create, job_start

#: A small valid study: logistic regression on three numeric features, two classes.
STUDY_MODEL: dict[str, object] = {
    "kind": "logistic",
    "task": "binary",
    "num_features": 3,
    "num_classes": 2,
    "hidden_sizes": [64],
    "image_size": None,
}
STUDY_SCHEMA: dict[str, object] = {
    "features": [{"name": name, "kind": "numeric"} for name in ("age", "bmi", "glucose")],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
    "site_column": None,
}
STUDY_TRAINING: dict[str, object] = {"epochs": 1, "batch_size": 16, "learning_rate": 0.1}
#: Who the set-up's audit events name.
SETUP_ACTOR = "user:setup"


def study_make(
    name: str,
    institutions: list[Institution],
    *,
    description: str = "",
    seed: int = 0,
    strategy: str = "fedavg",
    strategy_params: dict[str, object] | None = None,
    model: dict[str, object] = STUDY_MODEL,
    training: dict[str, object] = STUDY_TRAINING,
    privacy: dict[str, object] | None = None,
    update_norm_bound: dict[str, object] | None = None,
    data_schema: dict[str, object] = STUDY_SCHEMA,
    actor: str = SETUP_ACTOR,
) -> Study:
    """A valid study of ``institutions`` (the small default unless told), decisions pending."""
    return study_create(
        name=name,
        description=description,
        model_config=model,
        data_schema=data_schema,
        strategy=strategy,
        strategy_params=strategy_params or {},
        training=training,
        feature_scaling=None,
        privacy=privacy or {},
        update_norm_bound=update_norm_bound,
        validation_fraction=0.2,
        seed=seed,
        institution_ids=[institution.pk for institution in institutions],
        actor=actor,
    )


def study_approve_all(study: Study, *, actor: str = SETUP_ACTOR) -> None:
    """Every participating institution approves ``study``."""
    for participant in study.participants.select_related("institution"):
        study_decide(study=study, institution=participant.institution, approve=True, actor=actor)


def job_make(
    study: Study,
    *,
    num_rounds: int = 2,
    min_updates: int = 2,
    round_deadline_seconds: int = 600,
    max_deadline_extensions: int = 1,
    actor: str = SETUP_ACTOR,
) -> Job:
    """A draft job of ``study``."""
    return job_create(
        study=study,
        num_rounds=num_rounds,
        min_updates=min_updates,
        round_deadline_seconds=round_deadline_seconds,
        max_deadline_extensions=max_deadline_extensions,
        actor=actor,
    )


def job_run(job: Job, *, actor: str = SETUP_ACTOR) -> Job:
    """``job`` started, and begun as the worker would: model 0 written, round 1 open."""
    job_start(job_id=job.pk, actor=actor)
    job_begin(job_id=job.pk)  # the worker's part: initial model, round 1
    job.refresh_from_db()
    return job


@dataclass(frozen=True)
class Enrolled:
    credential: AgentCredential
    key: str


def agent_make(
    institution: Institution,
    *,
    hostname: str | None = None,
    agent_version: str = "1.0",
    actor: str = SETUP_ACTOR,
) -> Enrolled:
    """An agent of ``institution`` enrolled with a fresh one-time token (on host
    ``agent.<institution id>`` unless told)."""
    token = enrollment_token_create(institution=institution, actor=actor).token
    hostname = hostname if hostname is not None else f"agent.{institution.pk}"
    enrollment = agent_enroll(token=token, agent_version=agent_version, hostname=hostname)
    return Enrolled(enrollment.credential, enrollment.key)


def person_make(
    username: str,
    role: Role,
    institution: Institution | None = None,
    *,
    with_token: bool = True,
    actor: str = "system",
) -> CreatedUser:
    """A person with ``role`` (a data owner: of ``institution``) and no password."""
    return user_create(
        username=username,
        role=role,
        institution=institution,
        password=None,
        with_token=with_token,
        actor=actor,
    )
