"""What the agent does for privacy: the site's filters, clipping, DP-SGD and its own ledger.

Whatever the server says, the hospital keeps its own accounts: the :class:`LocalLedger`
records every DP-SGD round this site's data went through, per job, in
``state_dir/privacy-ledger.json`` (plain JSON, replaced atomically), so that the epsilon
spent survives restarts and a round that would take the site past its own
``policy.privacy.max_epsilon`` is refused before any row is touched.

The ledger is written before the prepared update is recorded, so a crash between the two
makes the agent train again and count the round twice: an over-count, the safe side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from federation.privacy import accounting, dp
from federation.privacy.settings import DPLevel, PrivacySettings
from federation.types import Weights
from silo_agent.config import UpdateFilters
from silo_agent.errors import StateError
from silo_agent.files import atomic_write

LEDGER_FILE = "privacy-ledger.json"
LEDGER_FORMAT = 1


@dataclass(frozen=True)
class DpSgdPlan:
    """One round of DP-SGD at this site: the noise, the sampling rate and the steps."""

    noise_multiplier: float
    clipping_norm: float
    sampling_rate: float
    steps: int

    def event(self) -> list[float]:
        return [self.noise_multiplier, self.sampling_rate, float(self.steps)]


def filter_update(
    trained: Weights,
    global_weights: Weights,
    *,
    settings: PrivacySettings,
    filters: UpdateFilters,
) -> Weights:
    """The update that leaves the site: excluded layers reset, then clipped by the study
    (client-level DP) and by the hospital's own bound, whichever is tighter."""
    unknown = sorted(set(filters.exclude_layers) - set(trained))
    if unknown:
        raise StateError(f"policy.filters.exclude_layers names tensors this model lacks: {unknown}")
    kept = {
        name: global_weights[name].copy() if name in filters.exclude_layers else tensor
        for name, tensor in trained.items()
    }
    for bound in _clipping_bounds(settings, filters):
        kept, _ = dp.clip_delta(kept, global_weights, bound)
    return kept


def _clipping_bounds(settings: PrivacySettings, filters: UpdateFilters) -> list[float]:
    bounds = []
    mechanism = settings.differential_privacy
    if mechanism is not None and mechanism.level is DPLevel.CLIENT:
        bounds.append(mechanism.clipping_norm)
    if filters.clip_update_norm is not None:
        bounds.append(filters.clip_update_norm)
    return bounds


def dp_sgd_plan(
    settings: PrivacySettings,
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    total_rounds: int,
    max_steps: int | None = None,
) -> DpSgdPlan | None:
    """The DP-SGD round this site will run, or None if the study uses no sample-level DP.

    Opacus samples each batch with rate ``1 / batches_per_epoch``; without a set noise
    multiplier the site picks the smallest that keeps all ``total_rounds`` within budget.
    """
    mechanism = settings.differential_privacy
    if mechanism is None or mechanism.level is not DPLevel.SAMPLE:
        return None
    schedule = accounting.dp_sgd_schedule(num_examples=num_examples, batch_size=batch_size)
    noise = mechanism.noise_multiplier
    if noise is None:
        noise = accounting.sample_level_noise_for_job(
            target_epsilon=settings.budget,
            delta=settings.delta,
            rounds=total_rounds,
            epochs=epochs,
            num_examples=num_examples,
            batch_size=batch_size,
            max_steps=max_steps,
        )
    steps = accounting.dp_sgd_steps_per_round(
        num_examples=num_examples, batch_size=batch_size, epochs=epochs, max_steps=max_steps
    )
    return DpSgdPlan(noise, mechanism.clipping_norm, schedule.sampling_rate, steps)


class LocalLedger:
    """The site's own record of the DP rounds its data went through, job by job."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LEDGER_FILE

    def _load(self) -> dict[str, dict[str, list[float]]]:
        if not self._path.exists():
            return {}
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StateError(f"{self._path}: the privacy ledger cannot be read ({error})") from None
        if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
            raise StateError(f"{self._path}: not a privacy ledger of format {LEDGER_FORMAT}")
        jobs: dict[str, dict[str, list[float]]] = document.get("jobs", {})
        return jobs

    def events(self, job_id: int) -> dict[int, list[float]]:
        """The DP event of each round of ``job_id`` recorded so far."""
        rounds = self._load().get(str(job_id), {})
        return {int(number): event for number, event in rounds.items()}

    def epsilon(self, job_id: int, *, delta: float, extra: list[float] | None = None) -> float:
        """Epsilon spent in ``job_id`` (plus ``extra``, a round not yet run)."""
        rows = list(self.events(job_id).values()) + ([extra] if extra else [])
        events = (accounting.PrivacyEvent(row[0], row[1], int(row[2])) for row in rows)
        return accounting.PrivacyLedgerState.of(events).epsilon(delta)

    def record(self, job_id: int, round_number: int, event: list[float]) -> None:
        """Record one round's event; recording the same round again replaces it."""
        jobs = self._load()
        jobs.setdefault(str(job_id), {})[str(round_number)] = event
        document = {"format": LEDGER_FORMAT, "jobs": jobs}
        atomic_write(self._path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"))
