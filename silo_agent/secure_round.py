"""This site's side of a secure-aggregation round (docs/privacy.md).

The server hands out one task per phase; :class:`SecureRound` answers the advertise,
share and unmask phases, and masks the trained update in the mask phase (the runner trains).
The protocol's client state (private keys, self-mask seed, the shares it holds and what
it has revealed) lives in ``state_dir/secagg/round-<id>.json``, mode 0600, written
*before* each answer is sent: after a restart the agent sends the same keys and shares
again and never reveals both shares of one site. The file is removed once the round's
last answer is accepted. It never leaves the site.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from federation.aggregation.flat import flatten
from federation.errors import FederationError
from federation.privacy import secagg
from federation.types import ModelSpec, Weights
from silo_agent.errors import TaskError
from silo_agent.files import atomic_write
from silo_agent.tasks import JsonObject, WorkTask

PHASES = ("advertise", "share", "mask", "unmask")
#: Secure-aggregation state older than this belongs to a round that is over.
ABANDONED_AFTER_SECONDS = 7 * 24 * 3600
_T = TypeVar("_T")


class SecureRound:
    """The protocol state of one round at this site, kept on disk between phases."""

    def __init__(self, state_dir: Path, task: WorkTask, site_id: int) -> None:
        view = task.secure_aggregation
        assert view is not None
        self.view = view
        self.phase = _phase(view)
        self.round_id = task.round_id
        self._path = state_dir / "secagg" / f"round-{task.round_id}.json"
        self._masked_path = state_dir / "secagg" / f"round-{task.round_id}.masked"
        _prune_abandoned(state_dir / "secagg")
        self._site_id = site_id
        self._config = _config(view, task)

    # --- phases the runner hands over ---------------------------------------------------

    def keys(self) -> dict[str, str]:
        """The advertise phase: this round's public keys (the same after a restart)."""
        client = self._load(create=True)
        self._save(client)
        return client.advertise_keys().to_json()

    def shares(self) -> dict[str, str]:
        """The share phase: a bundle for each other site of the roster, encrypted for it."""
        client = self._load()
        bundles = _guarded(lambda: client.share_keys(secagg.roster_from_json(_object(self.view, "roster"))))
        self._save(client)
        return {str(peer): base64.b64encode(bundle).decode("ascii") for peer, bundle in bundles.items()}

    def mask(self, sent: Weights, global_weights: Weights, spec: ModelSpec, weight: float) -> bytes:
        """The mask phase: ``[weight * (sent - global), weight]`` masked, as the bytes to upload.

        The masked bytes are written before the state that records them, and reused once
        it does: after a crash the same bytes are sent again, never a second masked input.
        """
        client = self._load()
        if client.to_json()["masked_peers"] is not None and self._masked_path.exists():
            return self._masked_path.read_bytes()
        change = flatten(sent, spec) - flatten(global_weights, spec)
        packed = secagg.pack_weighted(change, weight)
        masked = _encode_masked(_guarded(lambda: client.masked_input(packed, self._inbound())))
        atomic_write(self._masked_path, masked, mode=0o600)
        self._save(client)
        return masked

    def unmasking(self) -> dict[str, object]:
        """The unmask phase: the shares the server asked for (never both of one site)."""
        client = self._load()
        survivors, dropped = _sites(self.view, "survivors"), _sites(self.view, "dropped")
        answer = _guarded(
            lambda: client.unmasking_shares(survivors=survivors, dropped=dropped, inbound=self._inbound())
        )
        self._save(client)
        return dict(answer.to_json())

    def finish(self) -> None:
        self._path.unlink(missing_ok=True)
        self._masked_path.unlink(missing_ok=True)

    # --- state on disk ------------------------------------------------------------------

    def _load(self, *, create: bool = False) -> secagg.SecAggClient:
        if self._path.exists():
            try:
                data = json.loads(self._path.read_text(encoding="utf-8"))
                client = secagg.SecAggClient.from_json(data)
            except (OSError, ValueError, FederationError) as error:
                raise TaskError(f"the secure-aggregation state of this round is damaged: {error}") from None
            if client.config != self._config:
                raise TaskError("this round changed its secure-aggregation settings mid-round")
            return client
        if not create:
            raise TaskError(
                "the secure-aggregation keys of this round are lost; this site cannot continue the round"
            )
        return secagg.SecAggClient(site_id=self._site_id, config=self._config)

    def _save(self, client: secagg.SecAggClient) -> None:
        atomic_write(self._path, json.dumps(client.to_json()).encode("utf-8"), mode=0o600)

    def _inbound(self) -> dict[int, bytes]:
        inbound = _object(self.view, "inbound")
        try:
            return {
                int(sender): base64.b64decode(str(text), validate=True) for sender, text in inbound.items()
            }
        except (ValueError, binascii.Error):
            raise TaskError("malformed task: secure_aggregation.inbound holds a bad bundle") from None


def _prune_abandoned(folder: Path) -> None:
    """Remove the secrets of rounds left long ago (a round lasts hours at most): a site that
    dropped out never hears the round end."""
    if not folder.exists():
        return
    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    for path in folder.glob("round-*"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)


def _phase(view: JsonObject) -> str:
    phase = view.get("phase")
    if phase not in PHASES:
        raise TaskError(f"malformed task: unknown secure_aggregation.phase {phase!r}")
    return str(phase)


def _config(view: JsonObject, task: WorkTask) -> secagg.SecAggConfig:
    """The round's protocol settings, checked to name this very job and round: keys bound to
    another round's context must never be reused here."""
    config = _guarded(lambda: secagg.SecAggConfig.from_json(_object(view, "config")))
    expected = f"fedhealth;job={task.job_id};round={task.round_number};base={task.model_version.sha256}"
    if config.round_context != expected.encode():
        raise TaskError("the secure-aggregation settings name another job, round or model")
    return config


def _object(view: JsonObject, key: str) -> Mapping[str, object]:
    value = view.get(key)
    if not isinstance(value, Mapping):
        raise TaskError(f"malformed task: secure_aggregation.{key} must be an object")
    return value


def _sites(view: JsonObject, key: str) -> list[int]:
    value = view.get(key)
    if not isinstance(value, list) or not all(isinstance(site, int) for site in value):
        raise TaskError(f"malformed task: secure_aggregation.{key} must be a list of site ids")
    return value


def _guarded(operation: Callable[[], _T]) -> _T:
    try:
        return operation()
    except FederationError as error:
        raise TaskError(f"secure aggregation: {error}") from None


def _encode_masked(vector: NDArray[np.uint64]) -> bytes:
    from safetensors.numpy import save

    return bytes(save({"masked": np.ascontiguousarray(vector, dtype=np.uint64)}))
