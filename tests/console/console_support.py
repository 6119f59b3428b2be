"""Helpers shared by the console's tests and their fixtures: a valid study, approvals, an
enrolled agent, and site answers recorded as the agent API would store them."""

from __future__ import annotations

from institutions.models import AgentCredential, Institution
from institutions.services import agent_enroll, enrollment_token_create
from studies.models import Study
from studies.services import study_create, study_decide
from training.models import Round, Update

STUDY_MODEL = {
    "kind": "logistic",
    "task": "binary",
    "num_features": 3,
    "num_classes": 2,
    "hidden_sizes": [64],
    "image_size": None,
}
STUDY_SCHEMA = {
    "features": [{"name": name, "kind": "numeric"} for name in ("age", "bmi", "glucose")],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
    "site_column": None,
}


def make_study(name: str, institutions: list[Institution]) -> Study:
    return study_create(
        name=name,
        description="Three lab values.",
        model_config=STUDY_MODEL,
        data_schema=STUDY_SCHEMA,
        strategy="fedavg",
        strategy_params={},
        training={"epochs": 1, "batch_size": 16, "learning_rate": 0.1},
        feature_scaling=None,
        privacy={},
        validation_fraction=0.2,
        seed=0,
        institution_ids=[institution.pk for institution in institutions],
        actor="user:setup",
    )


def approve_all(study: Study) -> None:
    for participant in study.participants.select_related("institution"):
        study_decide(study=study, institution=participant.institution, approve=True, actor="user:setup")


def credential(institution: Institution) -> AgentCredential:
    token = enrollment_token_create(institution=institution, actor="user:setup").token
    return agent_enroll(token=token, agent_version="1.4.2", hostname=f"agent.{institution.pk}").credential


def record_update(round_: Round, institution: Institution, metrics: dict[str, float]) -> Update:
    """An answer as the agent API stores it (its bytes do not matter to the console)."""
    return Update.objects.create(
        round=round_,
        institution=institution,
        credential=credential(institution),
        num_examples=40,
        metrics=metrics,
        sha256="ab" * 32,
        size=10,
    )
