"""Fixtures of the security tests: the shared test world (:mod:`world_fixtures`).

``isolated_model_storage`` keeps blobs in a temporary folder; ``agent_world`` adds Celery
tasks run at once and cleared throttling counts, for tests that drive agents through the API.
"""

from __future__ import annotations

from world_fixtures import agent_world, isolated_model_storage

__all__ = ["agent_world", "isolated_model_storage"]
