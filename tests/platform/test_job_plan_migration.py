"""Migrations 0004 and 0005: each existing job gets the round plan its rounds ran with (and
back), then the model spec its first model version's blob holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from federation.privacy.settings import DPLevel
from federation.types import ModelSpec
from federation.wire import serialize_weights
from training.blobs import blob_store

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("training", "0003_privacy"), ("studies", "0002_study_update_norm_bound")]
AFTER = [("training", "0004_job_round_plan"), ("studies", "0002_study_update_norm_bound")]
WITH_SPEC = [("training", "0005_plan_model_spec"), ("studies", "0002_study_update_norm_bound")]
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
    _migrate(WITH_SPEC)


def test_jobs_with_a_model_get_its_spec_in_their_plan(isolated_model_storage: Path) -> None:
    old = _migrate(AFTER)
    Job = old.get_model("training", "Job")
    weights = {"layer.weight": np.zeros((3, 2), np.float32), "layer.bias": np.zeros(3, np.float32)}
    spec = ModelSpec.from_weights(weights)
    blob = serialize_weights(weights, spec=spec, metadata={"model_spec": json.dumps(spec.to_json())})
    sha256 = blob_store().put(blob)
    plan = {"strategy": {"name": "fedavg", "params": {}}, "privacy": {}}
    begun = Job.objects.create(
        study=_study(old, "begun", {}), plan=plan, num_rounds=1, min_updates=1, created_by="t"
    )
    ModelVersion = old.get_model("training", "ModelVersion")
    ModelVersion.objects.create(job=begun, number=0, sha256=sha256, size=len(blob))
    waiting = Job.objects.create(
        study=_study(old, "waiting", {}), plan=plan, num_rounds=1, min_updates=1, created_by="t"
    )

    new = _migrate(WITH_SPEC)
    Job = new.get_model("training", "Job")
    assert Job.objects.get(pk=begun.pk).plan.model_spec == spec
    assert Job.objects.get(pk=waiting.pk).plan.model_spec is None
