"""Fixtures of the control-plane tests: the shared test world (:mod:`world_fixtures`).

Coordinator API fixtures: ``isolated_model_storage``, ``hospital_a`` / ``hospital_b``,
``make_api_client`` and the role clients built with it (``coordinator_client``,
``observer_client``, ``owner_a_client``, ``owner_b_client``), ``study_payload``,
``make_study``, ``study_ab``, ``draft_job`` and ``running_job``; ``agent_world`` for tests
that drive agents through the API.
"""

from __future__ import annotations

from world_fixtures import (
    agent_world,
    coordinator_client,
    draft_job,
    hospital_a,
    hospital_b,
    isolated_model_storage,
    make_api_client,
    make_study,
    observer_client,
    owner_a_client,
    owner_b_client,
    running_job,
    study_ab,
    study_payload,
)

__all__ = [
    "agent_world",
    "coordinator_client",
    "draft_job",
    "hospital_a",
    "hospital_b",
    "isolated_model_storage",
    "make_api_client",
    "make_study",
    "observer_client",
    "owner_a_client",
    "owner_b_client",
    "running_job",
    "study_ab",
    "study_payload",
]
