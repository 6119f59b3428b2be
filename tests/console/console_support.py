"""Helpers shared by the console's tests: approvals, an enrolled agent, and site answers
recorded as the agent API would store them (the rest of the world is in :mod:`world`)."""

from __future__ import annotations

from world import STUDY_SCHEMA, agent_make
from world import study_approve_all as approve_all

from institutions.models import AgentCredential, Institution
from training.models import Round, Update

__all__ = ["STUDY_SCHEMA", "approve_all", "credential", "record_update"]


def credential(institution: Institution) -> AgentCredential:
    """An agent credential of ``institution``: version 1.4.2 on ``agent.<institution id>``."""
    return agent_make(institution, agent_version="1.4.2").credential


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
