"""Aggregating a round into the next model version, by the job's round plan (docs/rounds.md).

The claim and the commit are two short transactions under the round's lock; the maths runs
between them, outside any lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from safetensors.numpy import load as safetensors_load

from audit.services import audit_record
from federation.aggregation.strategies import AggregationResult
from federation.aggregation.streaming import StoredUpdate
from federation.privacy import dp
from federation.rounds import RoundInputs, RoundPlan
from federation.types import ModelSpec, Weights
from federation.wire import deserialize_weights
from training import privacy, secure_rounds
from training.blobs import blob_store
from training.models import Job, ModelVersion, Round, RoundState, Update
from training.selectors import counted_update_list, job_model_spec_get
from training.services.jobs import model_version_write
from training.services.rounds import job_lock, round_combined_metrics, round_fail, round_lock, round_open

#: An aggregation that keeps dying (a worker killed each time, an unexpected error) fails
#: its round after this many starts instead of being retried for ever.
MAX_AGGREGATION_ATTEMPTS = 5


@dataclass(frozen=True)
class AggregationOutcome:
    round_id: int
    version_number: int | None


@dataclass(frozen=True)
class _AggregationWork:
    round_id: int
    number: int
    job: Job
    base: ModelVersion
    updates: list[Update]
    secure: bool = False


def round_aggregate(*, round_id: int) -> AggregationOutcome:
    """Aggregate a round's stored updates into the next model version; open the next round.

    The maths runs outside any transaction, so no lock is held while it runs; the round's
    state is checked again before the result is written, so a second run that overlaps
    the first writes nothing. Both would compute the same bytes anyway.
    """
    work = _aggregation_claim(round_id)
    if work is None:
        return AggregationOutcome(round_id, None)  # done already, never ready, or given up
    _drill_pause_point()
    spec = job_model_spec_get(job=work.job)
    plan = work.job.plan
    result = _aggregate(work, plan, spec)
    provenance: dict[str, object] = {
        "strategy": plan.strategy.name.value,
        "params": plan.strategy.params(),
        "privacy": plan.privacy.to_json(),
        "base": {"number": work.base.number, "sha256": work.base.sha256},
        "updates": [
            {"institution": u.institution.name, "sha256": u.sha256, "num_examples": u.num_examples}
            for u in work.updates
        ],
        "details": result.details,
    }
    return _aggregation_commit(work, spec, result.weights, result.state, provenance)


def _drill_pause_point() -> None:
    """The crash drills' pause point, between the claim (committed) and the commit: with
    ``FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS`` set (only tests/faults sets it), a kill
    timed from the claim lands in the window by construction rather than by luck."""
    if settings.FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS:
        time.sleep(settings.FEDHEALTH_DRILL_PAUSE_AFTER_CLAIM_SECONDS)


def _aggregate(work: _AggregationWork, plan: RoundPlan, spec: ModelSpec) -> AggregationResult:
    """The job's round plan on the round's inputs: the stored updates (read chunk by chunk
    where the plan allows), or the unmasked sum of a secure round."""
    store = blob_store()
    global_weights = deserialize_weights(store.read(work.base.sha256), spec=spec)
    inputs: RoundInputs
    if work.secure:
        round_ = Round.objects.get(pk=work.round_id)
        inputs = secure_rounds.round_unmasked_sum(round_, work.updates, store.read)
    else:
        inputs = [StoredUpdate(store.path(u.sha256), u.num_examples, u.sha256) for u in work.updates]
    return plan.aggregate(global_weights, inputs, _server_state(work.base), dp.secure_generator())


@transaction.atomic
def _aggregation_claim(round_id: int) -> _AggregationWork | None:
    round_ = round_lock(round_id=round_id)
    if round_.state != RoundState.AGGREGATING:
        return None
    if round_.aggregation_attempts >= MAX_AGGREGATION_ATTEMPTS:
        round_fail(round_=round_, reason=f"aggregation did not finish in {MAX_AGGREGATION_ATTEMPTS} attempts")
        return None
    round_.aggregation_attempts += 1
    round_.aggregating_since = timezone.now()
    round_.save(update_fields=["aggregation_attempts", "aggregating_since"])
    secure = secure_rounds.is_secure(round_)
    if secure:
        # The survivors' masked inputs are all in the sum, whatever happened since.
        updates = secure_rounds.survivors_updates(round_)
    else:
        counted = counted_update_list(round_=round_)
        updates = list(counted.select_related("institution").order_by("institution_id"))
    return _AggregationWork(round_.pk, round_.number, round_.job, round_.base_version, updates, secure)


@transaction.atomic
def _aggregation_commit(
    work: _AggregationWork,
    spec: ModelSpec,
    weights: Weights,
    server_state: Weights,
    provenance: dict[str, object],
) -> AggregationOutcome:
    round_ = round_lock(round_id=work.round_id)
    if round_.state != RoundState.AGGREGATING:
        return AggregationOutcome(work.round_id, None)  # cancelled, failed or done meanwhile
    version = model_version_write(
        job=round_.job,
        number=round_.number,
        weights=weights,
        spec=spec,
        parent=work.base,
        round_=round_,
        server_state=server_state,
        provenance=provenance,
    )
    metrics = {**round_combined_metrics(round_=round_), **_adapter_metrics(provenance)}
    round_.state, round_.closed_at, round_.metrics = RoundState.CLOSED, timezone.now(), metrics
    round_.save(update_fields=["state", "closed_at", "metrics"])
    privacy.privacy_spend_client_round(round_=round_)
    ModelVersion.objects.filter(pk=work.base.pk).update(metrics=_global_metrics(metrics))
    audit_record(
        actor="system",
        kind="round.closed",
        job=round_.job,
        details={"round": round_.number, "version": version.number, "sha256": version.sha256},
    )
    round_open(job=job_lock(job_id=round_.job_id))
    return AggregationOutcome(work.round_id, version.number)


def _adapter_metrics(provenance: dict[str, object]) -> dict[str, float]:
    """What combining LoRA adapters cost this round (FedIT's error, the SVD's residual)."""
    details = provenance.get("details")
    if not isinstance(details, dict):
        return {}
    return {name: float(value) for name, value in details.items() if name.startswith("lora_")}


@transaction.atomic
def round_fail_aggregation(*, round_id: int, reason: str) -> None:
    """An aggregation that cannot succeed fails its round and job, with the reason."""
    round_ = round_lock(round_id=round_id)
    if round_.state == RoundState.AGGREGATING:
        round_fail(round_=round_, reason=f"aggregation failed: {reason}")


def _global_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The sites' evaluation of the round's base model (``global_*``), without the prefix."""
    return {
        name.removeprefix("global_"): value for name, value in metrics.items() if name.startswith("global_")
    }


def _server_state(version: ModelVersion) -> Weights | None:
    if not version.server_state_sha256:
        return None
    # Our own blob, checked against its digest on read: not bytes from a site.
    return dict(safetensors_load(blob_store().read(version.server_state_sha256)))
