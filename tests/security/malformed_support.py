"""The federation the bad-input tests attack: enrolled agents and jobs in every state.

Everything is made through the services and the real agent API, as in production. The
model is a small MLP (3 -> 512 -> 512 -> 1, about 1 MB of float32), large enough that
reading an upload into memory shows in the measured peak, small enough to stay fast.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone
from platform_world import Site, start_job
from world import person_make

from accounts.models import Role
from federation.types import ModelSpec, Weights
from federation.wire import deserialize_weights, max_update_bytes, serialize_weights, sha256_hex
from institutions.models import AgentCredential
from training import services as training_services
from training.blobs import blob_store
from training.models import Job, Round, RoundKind

MODEL = {
    "kind": "mlp",
    "task": "binary",
    "num_features": 3,
    "num_classes": 2,
    "hidden_sizes": [512, 512],
    "image_size": None,
}


class Agent(Site):
    """One hospital: its institution and an agent enrolled through the API."""

    @property
    def credential(self) -> AgentCredential:
        return self.institution.credentials.get()


def make_job(name: str, agents: list[Agent], *, rounds: int = 2, min_updates: int | None = None) -> Job:
    """A started job of a fresh study every agent's site approved: round 1 is open."""
    return start_job(
        [agent.institution for agent in agents],
        name=name,
        model=MODEL,
        rounds=rounds,
        min_updates=min_updates,
        round_deadline_seconds=600,
    )


def spec_of(blob: bytes) -> ModelSpec:
    """The model spec a version blob carries in its metadata."""
    length = int.from_bytes(blob[:8], "little")
    return ModelSpec.from_json(json.loads(json.loads(blob[8 : 8 + length])["__metadata__"]["model_spec"]))


def trained(blob: bytes, shift: float = 0.01) -> bytes:
    """The received model moved by ``shift``: a stand-in for local training."""
    weights = deserialize_weights(blob, spec=spec_of(blob))
    return serialize_weights({name: array + np.float32(shift) for name, array in weights.items()})


def open_round(job: Job) -> Round:
    return job.rounds.get(number=job.rounds.order_by("-number").values_list("number", flat=True)[0])


def meta_for(round_: Round, **changes: object) -> dict[str, object]:
    """A correct ``meta`` for an update to ``round_``, with ``changes`` applied."""
    meta: dict[str, object] = {
        "num_examples": 50,
        "metrics": {"global_accuracy": 0.5, "local_accuracy": 0.7},
        "base_model_sha256": round_.base_version.sha256,
        "job_id": round_.job_id,
        "round_number": round_.number,
    }
    meta.update(changes)
    return meta


@dataclass
class World:
    """Site A uploads; ``rounds`` names the rounds it can aim at, in every state."""

    uploader: Agent
    other: Agent
    rounds: dict[str, Round]
    base_blob: bytes
    good_blob: bytes
    spec: ModelSpec
    limit: int
    coordinator_token: str
    owner_token: str

    @property
    def target(self) -> Round:
        return self.rounds["target"]

    @property
    def good_weights(self) -> Weights:
        return deserialize_weights(self.good_blob, spec=self.spec)


def build_world() -> World:
    """Two hospitals and five jobs, giving site A a round in each state it must not touch."""
    site_a, site_b = Agent("Hospital A"), Agent("Hospital B")
    target = make_job("target study", [site_a, site_b])
    foreign = make_job("B only", [site_b])
    paused = make_job("paused study", [site_a, site_b])
    training_services.job_pause(job_id=paused.pk, actor="user:test")
    refused = make_job("refused study", [site_a, site_b], min_updates=1)
    training_services.job_refuse(job_id=refused.pk, credential=site_a.credential, reason="policy")
    finished = make_job("one-round study", [site_a, site_b], rounds=1, min_updates=1)
    first = open_round(finished)
    training_services.update_submit(  # site B answers; site A never does
        round_id=first.pk,
        credential=site_b.credential,
        meta=training_services.UpdateMeta(**meta_for(first)),  # type: ignore[arg-type]
        data=trained(blob_store().read(first.base_version.sha256), shift=0.5),  # not good_blob's bytes
    )
    Round.objects.filter(pk=first.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    training_services.rounds_sweep()  # the deadline passed with min_updates: round 1 aggregates
    training_services.round_aggregate(round_id=first.pk)  # closes round 1, opens the evaluation
    evaluation = open_round(finished)
    assert evaluation.kind == RoundKind.EVALUATE
    target_round = open_round(target)
    base_blob = blob_store().read(target_round.base_version.sha256)
    spec = spec_of(base_blob)
    coordinator = person_make("carol", Role.COORDINATOR)
    owner = person_make("alice", Role.DATA_OWNER, site_a.institution)
    return World(
        uploader=site_a,
        other=site_b,
        rounds={
            "target": target_round,
            "foreign": open_round(foreign),
            "paused": open_round(paused),
            "refused": open_round(refused),
            "closed": first,
            "evaluation": evaluation,
        },
        base_blob=base_blob,
        good_blob=trained(base_blob),
        spec=spec,
        limit=max_update_bytes(spec),
        coordinator_token=str(coordinator.token),
        owner_token=str(owner.token),
    )


def safetensors_bytes(header: object, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors-shaped file: an 8-byte length (``length`` lies if given), header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (as a dict) and data section of a well-formed safetensors file."""
    length = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


__all__ = [
    "Agent",
    "World",
    "build_world",
    "make_job",
    "meta_for",
    "safetensors_bytes",
    "sha256_hex",
    "split_safetensors",
    "trained",
]
