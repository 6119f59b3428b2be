"""Migration 0004: each existing job gets the round plan its rounds ran with, and back."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from federation.privacy.settings import DPLevel

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("training", "0003_privacy"), ("studies", "0002_study_update_norm_bound")]
AFTER = [("training", "0004_job_round_plan")]
RESOLVED = {
    "secure_aggregation": False,
    "differential_privacy": {"level": "client", "clipping_norm": 1.0, "noise_multiplier": 1.3},
    "epsilon": 8.0,
    "delta": 1e-5,
}


def _migrate(targets: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def _study(apps, name: str, privacy: dict):  # type: ignore[no-untyped-def]
    return apps.get_model("studies", "Study").objects.create(
        name=name,
        model_config={},
        data_schema={},
        strategy="fedadam",
        strategy_params={"server_learning_rate": 0.05},
        privacy=privacy,
        training={},
    )


def test_existing_jobs_get_their_plan_from_their_resolved_privacy() -> None:
    old = _migrate(BEFORE)
    Job = old.get_model("training", "Job")
    unresolved = {"differential_privacy": {"level": "client", "clipping_norm": 1.0}, "epsilon": 8.0}
    dp_job = Job.objects.create(
        study=_study(old, "dp", unresolved), privacy=RESOLVED, num_rounds=3, min_updates=1, created_by="t"
    )
    plain_job = Job.objects.create(
        study=_study(old, "plain", {}), num_rounds=1, min_updates=1, created_by="t"
    )

    new = _migrate(AFTER)
    Job = new.get_model("training", "Job")
    plan = Job.objects.get(pk=dp_job.pk).plan
    assert plan.strategy.name.value == "fedadam"
    assert plan.strategy.params()["server_learning_rate"] == 0.05
    assert plan.client_noise_multiplier == 1.3
    assert plan.privacy.differential_privacy.level is DPLevel.CLIENT
    assert not Job.objects.get(pk=plain_job.pk).plan.privacy.uses_dp

    back = _migrate(BEFORE)
    assert back.get_model("training", "Job").objects.get(pk=dp_job.pk).privacy == RESOLVED
    _migrate(AFTER)
