"""A small fake of the control plane's agent API (docs/api.md), played through
``httpx.MockTransport``: it keeps rounds, stored updates (idempotent per round), evaluations
and refusals, and can inject faults per path."""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from federation.data import Standardizer, load_builtin
from federation.models import ModelConfig, TextModelConfig, build_model, model_config_from_json
from federation.privacy.settings import PrivacySettings
from federation.protocol import ModelVersionRef, StudySettings, TaskKind, TrainingSettings, WorkTask
from federation.wire import deserialize_weights, serialize_weights, sha256_hex
from silo_agent.client import AgentClient, RetryPolicy
from silo_agent.config import load_config
from silo_agent.local_data import DataCache
from silo_agent.runner import ProgressStep, TaskRunner
from silo_agent.state import StateStore

SERVER_URL = "https://fl.example.org"
API = "/api/agent/v1/"
KEY = "fha_3_s3cr3t-key-value"
INSTITUTION = {"id": 7, "name": "St. Example"}
MODEL_CONFIG = ModelConfig.from_json(
    {"kind": "logistic", "task": "binary", "num_features": 30, "num_classes": 2}
)

#: A fault injected into the next request to a path: an HTTP status to answer, an exception
#: to raise before the server acts, or "lost" (the server acts, then the answer is lost).
Fault = int | Exception | str


class FakeClock:
    """Monotonic time that moves only when someone waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def global_model_bytes(config: ModelConfig = MODEL_CONFIG, *, seed: int = 0) -> bytes:
    adapter = build_model(config, seed=seed)
    return serialize_weights(adapter.get_weights(), spec=adapter.model_spec())


def breast_cancer_scaling() -> dict[str, list[float]]:
    features = load_builtin("breast_cancer").features.astype(np.float64)
    std = features.std(axis=0)
    return Standardizer(mean=features.mean(axis=0), std=np.where(std > 0, std, 1.0)).to_json()


_SCALING = breast_cancer_scaling()


def default_study() -> StudySettings:
    return StudySettings(
        id=1,
        name="breast-cancer-pilot",
        model=MODEL_CONFIG.to_json(),
        data_schema=None,
        feature_scaling=_SCALING,
        strategy_name="fedavg",
        privacy=PrivacySettings.from_json({}),
        training=TrainingSettings(epochs=1, batch_size=16, learning_rate=0.1, proximal_mu=0.0),
        validation_fraction=0.25,
        seed=0,
    )


def study_json(**overrides: object) -> dict[str, object]:
    """A study as the task message carries it (``federation.protocol``), with raw overrides."""
    return {**default_study().to_json(), **overrides}


def make_task(
    model_bytes: bytes,
    /,
    *,
    kind: str = "train",
    job_id: int = 1,
    round_id: int = 7,
    round_number: int = 1,
    total_rounds: int = 3,
    model_id: int = 12,
    **study_overrides: object,
) -> dict[str, object]:
    """A task message as the control plane writes it; study fields may be overridden raw."""
    task = WorkTask(
        kind=TaskKind(kind),
        job_id=job_id,
        round_id=round_id,
        round_number=round_number,
        total_rounds=total_rounds,
        deadline_at="2026-11-25T03:00:00Z",
        model_version=ModelVersionRef(id=model_id, sha256=sha256_hex(model_bytes), size=len(model_bytes)),
        study=default_study(),
    )
    return {**task.to_json(), "study": study_json(**study_overrides)}


@dataclass
class UploadAttempt:
    round_id: int
    sha256: str
    meta: dict[str, object]
    status: int


@dataclass
class FakeServer:
    """The server side of the agent API, with just enough state to check the agent."""

    clock: FakeClock = field(default_factory=FakeClock)
    key: str = KEY
    revoked: bool = False
    tokens: set[str] = field(default_factory=lambda: {"enroll-token-1"})
    studies: list[dict[str, object]] = field(
        default_factory=lambda: [{"id": 1, "name": "breast-cancer-pilot", "approval": "approved"}]
    )
    tasks: list[dict[str, object]] = field(default_factory=list)
    models: dict[int, bytes] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    heartbeat_times: list[float] = field(default_factory=list)
    heartbeat_bodies: list[dict[str, object]] = field(default_factory=list)
    enroll_bodies: list[dict[str, object]] = field(default_factory=list)
    upload_attempts: list[UploadAttempt] = field(default_factory=list)
    stored_updates: dict[int, bytes] = field(default_factory=dict)
    evaluations: dict[int, dict[str, object]] = field(default_factory=dict)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    #: Secure-aggregation messages received, as (round id, step, body).
    secagg_messages: list[tuple[int, str, dict[str, object]]] = field(default_factory=list)
    #: An error (status, code) to answer the next secure-aggregation message with.
    secagg_error: tuple[int, str] | None = None
    on_work: Callable[[], None] | None = None

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def offer(self, task: dict[str, object], model: bytes) -> None:
        self.tasks.append(task)
        self.models[task["model_version"]["id"]] = model  # type: ignore[index]

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, path in self.requests if m == method and path.startswith(prefix))

    # --- routing -----------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        path = request.url.path.removeprefix(API)
        self.requests.append((request.method, path))
        fault = self._next_fault(path)
        if isinstance(fault, Exception):
            raise fault
        if isinstance(fault, int):
            return error(fault, f"injected_{fault}", "injected fault")
        response = self._route(request, path)
        if fault == "lost":
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def _next_fault(self, path: str) -> Fault | None:
        queue = self.faults.get(path)
        return queue.pop(0) if queue else None

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        if path == "enroll":
            return self._enroll(request)
        if self.revoked:
            return error(401, "credential_revoked", "this credential was revoked")
        if request.headers.get("Authorization") != f"Agent {self.key}":
            return error(401, "invalid_credential", "unknown credential")
        parts = path.split("/")
        if path == "heartbeat":
            self.heartbeat_times.append(self.clock())
            self.heartbeat_bodies.append(json.loads(request.content))
            return httpx.Response(200, json={"server_time": "2026-11-24T10:00:00Z"})
        if path == "me":
            return httpx.Response(200, json=self._me())
        if path == "work":
            return self._work(int(request.url.params["wait"]))
        if parts[0] == "models":
            return self._model(int(parts[1]))
        if parts[0] == "rounds" and parts[2] == "update":
            return self._update(int(parts[1]), request)
        if parts[0] == "rounds" and parts[2] == "evaluation":
            return self._evaluation(int(parts[1]), json.loads(request.content))
        if parts[0] == "rounds" and parts[2] == "secagg":
            return self._secagg(int(parts[1]), parts[3], json.loads(request.content))
        if parts[0] == "jobs" and parts[2] == "refuse":
            self.refusals.append((int(parts[1]), json.loads(request.content)["reason"]))
            return httpx.Response(200, json={})
        return error(404, "not_found", "no such resource")

    # --- endpoints ---------------------------------------------------------------------

    def _secagg(self, round_id: int, step: str, body: dict[str, object]) -> httpx.Response:
        if self.secagg_error is not None:
            status, code = self.secagg_error
            return error(status, code, f"injected {code}")
        self.secagg_messages.append((round_id, step, body))
        return httpx.Response(201, json={"duplicate": False})

    def _enroll(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.enroll_bodies.append(body)
        if body.get("token") not in self.tokens:
            return error(400, "invalid_token", "this enrollment token is unknown, used or expired")
        self.tokens.discard(body["token"])
        return httpx.Response(201, json={"institution": INSTITUTION, "credential_id": 3, "key": self.key})

    def _me(self) -> dict[str, object]:
        jobs = [{"id": 1, "study_id": 1, "state": "running", "current_round": 1}]
        return {"institution": INSTITUTION, "credential_id": 3, "studies": self.studies, "jobs": jobs}

    def _work(self, wait: int) -> httpx.Response:
        if self.on_work is not None:
            self.on_work()
        for task in self.tasks:
            if not self._is_done(task):
                return httpx.Response(200, json={"task": task})
        self.clock.sleep(wait)  # a long poll that found nothing
        return httpx.Response(200, json={"task": None})

    def _is_done(self, task: dict[str, object]) -> bool:
        if any(job == task["job_id"] for job, _ in self.refusals):
            return True
        store = self.stored_updates if task["kind"] == "train" else self.evaluations
        return task["round_id"] in store

    def _model(self, model_id: int) -> httpx.Response:
        data = self.models.get(model_id)
        if data is None:
            return error(404, "not_found", "no such model version")
        headers = {"X-Content-SHA256": sha256_hex(data), "Content-Type": "application/octet-stream"}
        return httpx.Response(200, content=data, headers=headers)

    def _update(self, round_id: int, request: httpx.Request) -> httpx.Response:
        parts = parse_multipart(request)
        meta, tensors = json.loads(parts["meta"]), parts["tensors"]
        digest = sha256_hex(tensors)
        status, body = self._store_update(round_id, meta, tensors, digest)
        self.upload_attempts.append(UploadAttempt(round_id, digest, meta, status))
        return httpx.Response(status, json=body)

    def _store_update(
        self, round_id: int, meta: dict[str, object], tensors: bytes, digest: str
    ) -> tuple[int, dict[str, object]]:
        if round_id in self.stored_updates:
            if sha256_hex(self.stored_updates[round_id]) == digest:
                return 200, {"update_id": round_id, "sha256": digest, "duplicate": True}
            return 409, error_body("update_exists", "a different update was already stored for this round")
        task = next(t for t in self.tasks if t["round_id"] == round_id and t["kind"] == "train")
        binding = (meta["job_id"], meta["round_number"], meta["base_model_sha256"])
        expected = (task["job_id"], task["round_number"], task["model_version"]["sha256"])  # type: ignore[index]
        if binding != expected:
            return 400, error_body("binding_mismatch", "the update is bound to another round")
        model = model_config_from_json(task["study"]["model"])  # type: ignore[index]
        spec = model.model_spec() if isinstance(model, TextModelConfig) else build_model(model).model_spec()
        deserialize_weights(tensors, spec=spec)  # raises if off-spec
        self.stored_updates[round_id] = tensors
        return 201, {"update_id": round_id, "sha256": digest, "duplicate": False}

    def _evaluation(self, round_id: int, body: dict[str, object]) -> httpx.Response:
        if round_id in self.evaluations:
            return httpx.Response(200, json={"duplicate": True})
        self.evaluations[round_id] = body
        return httpx.Response(201, json={"duplicate": False})


def error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json=error_body(code, message))


def parse_multipart(request: httpx.Request) -> dict[str, bytes]:
    """The named parts of a multipart/form-data body."""
    header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + request.content)
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True)
    return parts


@dataclass(frozen=True)
class Site:
    """A hospital's files in a temporary folder: config, credential, rows of breast_cancer."""

    directory: Path
    config_path: Path
    credential_path: Path
    state_dir: Path
    rows: list[int]


def write_site(
    directory: Path,
    *,
    server_url: str = SERVER_URL,
    policy: str = 'approved_studies = ["*"]',
    enrolled: bool = True,
    num_rows: int = 160,
) -> Site:
    rows = [int(r) for r in np.random.default_rng(5).permutation(569)[:num_rows]]
    (directory / "rows.json").write_text(json.dumps(rows))
    config = f"""
server_url = "{server_url}"
credential_file = "credential.json"
state_dir = "state"
poll_wait_seconds = 25

[data]
builtin = "breast_cancer"
rows = "rows.json"

[policy]
{policy}
"""
    config_path = directory / "agent.toml"
    config_path.write_text(config)
    credential_path = directory / "credential.json"
    if enrolled:
        credential = {"server_url": server_url, "credential_id": 3, "institution": INSTITUTION, "key": KEY}
        credential_path.write_text(json.dumps(credential))
        credential_path.chmod(0o600)
    return Site(directory, config_path, credential_path, directory / "state", rows)


class RunnerHarness:
    """A TaskRunner wired to the fake server, recording the progress steps it reports."""

    def __init__(self, server: FakeServer, site: Site, retry: RetryPolicy) -> None:
        config = load_config(site.config_path)
        self.store = StateStore(config.state_dir)
        self.store.prepare()
        self.steps: list[ProgressStep] = []
        self.client = AgentClient(
            config.server_url,
            key=server.key,
            retry=retry,
            rng=random.Random(0),
            sleep=server.clock.sleep,
            transport=server.transport,
        )
        self.runner = TaskRunner(
            client=self.client,
            policy=config.policy,
            institution_id=7,
            store=self.store,
            data=DataCache(config.data, 7),
            progress=lambda step, detail: self.steps.append(step),
            models=config.models,
        )
