"""The agent's small on-disk state, so that a crash or restart never loses or repeats work.

Layout of ``state_dir``::

    agent-state.json            the state below, replaced atomically on every change
    agent.lock                  held (flock) by a running agent: one agent per state_dir
    models/<sha256>.safetensors the global model of the current round, as downloaded
    updates/<kind>-<round>.safetensors  the prepared update, written before the upload

``agent-state.json``::

    {"format": 1,
     "current": {"kind": "train", "job_id": 1, "round_id": 7, "round_number": 3,
                 "model_sha256": "<hex>", "step": "downloaded" | "trained" | "evaluated" | "uploaded",
                 "num_examples": 91, "metrics": {"global_accuracy": 0.9, ...},
                 "update_file": "updates/train-7.safetensors", "update_sha256": "<hex>"} | null,
     "completed": ["train:5", "train:6", "evaluate:9"],
     "refused_jobs": {"4": "the job asks for 500 rounds; ..."}}

Rules that follow from it: an update is written to disk and recorded as ``trained`` before
its upload starts, so after a crash the same bytes are uploaded again (the server answers
"duplicate") and training is not repeated; ``completed`` (the last
:data:`COMPLETED_LIMIT` rounds) is never redone; a refused job is never reconsidered.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from federation.wire import sha256_hex
from silo_agent.errors import ConfigError, StateError
from silo_agent.files import atomic_write, remove_leftovers
from silo_agent.tasks import TaskKind

STATE_FORMAT = 1
STATE_FILE = "agent-state.json"
LOCK_FILE = "agent.lock"
#: How many finished rounds are remembered (far more than any job has rounds in flight).
COMPLETED_LIMIT = 500
#: How many refused jobs are remembered.
REFUSED_LIMIT = 500


class Step(enum.StrEnum):
    """How far the current round got. ``evaluated`` is the ``trained`` of an evaluate task."""

    DOWNLOADED = "downloaded"
    TRAINED = "trained"
    EVALUATED = "evaluated"
    UPLOADED = "uploaded"


@dataclass(frozen=True)
class RoundState:
    """The round this agent is working on, and the result it prepared for it."""

    kind: TaskKind
    job_id: int
    round_id: int
    round_number: int
    model_sha256: str
    step: Step
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    update_file: str | None = None
    update_sha256: str | None = None
    #: Sample-level DP: what DP-SGD did in this round (noise_multiplier, sampling_rate, steps).
    dp_steps: dict[str, float] | None = None

    @property
    def key(self) -> str:
        return round_key(self.kind, self.round_id)


@dataclass(frozen=True)
class AgentState:
    current: RoundState | None = None
    completed: tuple[str, ...] = ()
    refused_jobs: dict[int, str] = field(default_factory=dict)

    def is_completed(self, kind: TaskKind, round_id: int) -> bool:
        return round_key(kind, round_id) in self.completed


def round_key(kind: TaskKind, round_id: int) -> str:
    """Rounds are remembered per kind: an evaluate task may reuse the last round's id."""
    return f"{kind.value}:{round_id}"


class StateStore:
    """Reads and writes the state and the files next to it, each write atomic."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.models_dir = directory / "models"
        self.updates_dir = directory / "updates"

    def prepare(self) -> None:
        """Create the folders (mode 0700) and drop temporary files a crash left behind."""
        for folder in (self.directory, self.models_dir, self.updates_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            remove_leftovers(folder)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state folder for this process; a second agent on it is a configuration error."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.directory / LOCK_FILE).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"state_dir {self.directory} is in use by another silo-agent") from None
                raise
            yield

    def load(self) -> AgentState:
        if not self.path.exists():
            return AgentState()
        try:
            return _state_from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StateError(
                f"{self.path} is unreadable ({error}); move it aside to start afresh "
                "(an update already sent for the current round may then be refused as a conflict)"
            ) from None

    def bind(self, identity: str) -> bool:
        """Tie the state to one server and credential. Job and round ids mean nothing on
        another server, so state kept for a different one is moved aside; True if it was."""
        identity_file = self.directory / "identity"
        previous = identity_file.read_text(encoding="utf-8").strip() if identity_file.exists() else None
        moved = previous is not None and previous != identity and self.path.exists()
        if moved:
            self.path.rename(self.directory / f"{STATE_FILE}.{int(time.time())}.previous-server")
        if previous != identity:
            atomic_write(identity_file, identity.encode() + b"\n", mode=0o600)
        return moved

    def save(self, state: AgentState) -> None:
        data = json.dumps(_state_to_json(state), indent=1, sort_keys=True).encode()
        atomic_write(self.path, data + b"\n", mode=0o600)

    # --- state transitions -------------------------------------------------------------

    def begin(self, current: RoundState) -> None:
        """Record that work on ``current``'s round started (after the model download)."""
        self.save(replace(self.load(), current=current))

    def save_prepared(self, current: RoundState, update: bytes | None) -> RoundState:
        """Persist the prepared result (and the update's bytes) before anything is sent."""
        if update is not None:
            relative = f"updates/{current.key.replace(':', '-')}.safetensors"
            atomic_write(self.directory / relative, update, mode=0o600)
            current = replace(current, update_file=relative, update_sha256=sha256_hex(update))
        self.begin(current)
        return current

    def read_prepared(self, current: RoundState) -> bytes | None:
        """The prepared update's bytes if they are intact, else None."""
        if current.update_file is None:
            return None
        try:
            data = (self.directory / current.update_file).read_bytes()
        except OSError:
            return None
        return data if sha256_hex(data) == current.update_sha256 else None

    def mark_done(self, kind: TaskKind, round_id: int) -> None:
        """The server has the result of this round: remember it and drop its files."""
        state = self.load()
        key = round_key(kind, round_id)
        completed = (*(k for k in state.completed if k != key), key)
        current = state.current
        if current is not None and current.key == key:
            current = replace(current, step=Step.UPLOADED)
        self.save(replace(state, current=current, completed=completed[-COMPLETED_LIMIT:]))
        self.clean_files(keep_model=None)

    def remember_refusal(self, job_id: int, reason: str) -> None:
        state = self.load()
        refused = {**state.refused_jobs, job_id: reason}
        self.save(replace(state, refused_jobs=dict(list(refused.items())[-REFUSED_LIMIT:])))

    # --- model files -------------------------------------------------------------------

    def read_model(self, sha256: str) -> bytes | None:
        """A previously downloaded model, if present and intact."""
        try:
            data = (self.models_dir / f"{sha256}.safetensors").read_bytes()
        except OSError:
            return None
        return data if sha256_hex(data) == sha256 else None

    def save_model(self, sha256: str, data: bytes) -> None:
        atomic_write(self.models_dir / f"{sha256}.safetensors", data, mode=0o600)

    def clean_files(self, *, keep_model: str | None) -> None:
        """Delete every prepared update and every model but ``keep_model``. Called when a round
        starts or ends, that is when no prepared update is waiting to be sent."""
        for update in self.updates_dir.glob("*.safetensors"):
            update.unlink(missing_ok=True)
        for model in self.models_dir.glob("*.safetensors"):
            if model.stem != keep_model:
                model.unlink(missing_ok=True)


# --- JSON form ----------------------------------------------------------------------------


def _state_to_json(state: AgentState) -> dict[str, object]:
    current = state.current
    return {
        "format": STATE_FORMAT,
        "current": None if current is None else _round_to_json(current),
        "completed": list(state.completed),
        "refused_jobs": {str(job): reason for job, reason in state.refused_jobs.items()},
    }


def _round_to_json(current: RoundState) -> dict[str, object]:
    return {
        "kind": current.kind.value,
        "job_id": current.job_id,
        "round_id": current.round_id,
        "round_number": current.round_number,
        "model_sha256": current.model_sha256,
        "step": current.step.value,
        "num_examples": current.num_examples,
        "metrics": current.metrics,
        "update_file": current.update_file,
        "update_sha256": current.update_sha256,
        "dp_steps": current.dp_steps,
    }


def _state_from_json(data: dict[str, object]) -> AgentState:
    if data.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown state format {data.get('format')!r}")
    current, completed, refused = data["current"], data["completed"], data["refused_jobs"]
    if not isinstance(completed, list) or not isinstance(refused, dict):
        raise TypeError("completed must be a list and refused_jobs an object")
    return AgentState(
        current=None if current is None else _round_from_json(current),
        completed=tuple(str(key) for key in completed),
        refused_jobs={int(job): str(reason) for job, reason in refused.items()},
    )


def _round_from_json(data: object) -> RoundState:
    if not isinstance(data, dict):
        raise TypeError("current must be an object")
    metrics = data["metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in metrics.values()
    ):
        raise TypeError("metrics must map names to finite numbers")
    return RoundState(
        kind=TaskKind(data["kind"]),
        job_id=int(data["job_id"]),
        round_id=int(data["round_id"]),
        round_number=int(data["round_number"]),
        model_sha256=str(data["model_sha256"]),
        step=Step(data["step"]),
        num_examples=int(data["num_examples"]),
        metrics={str(name): float(value) for name, value in metrics.items()},
        update_file=None if data["update_file"] is None else str(data["update_file"]),
        update_sha256=None if data["update_sha256"] is None else str(data["update_sha256"]),
        dp_steps=_dp_steps_from_json(data.get("dp_steps")),
    )


def _dp_steps_from_json(data: object) -> dict[str, float] | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"noise_multiplier", "sampling_rate", "steps"}:
        raise TypeError("dp_steps must hold noise_multiplier, sampling_rate and steps")
    return {str(name): float(value) for name, value in data.items()}
