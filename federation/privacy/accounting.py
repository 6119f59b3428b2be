"""Epsilon from Rényi differential privacy, with dp-accounting's RDP accountant.

Every mechanism of this platform is ``steps`` compositions of a Gaussian mechanism with
noise multiplier ``z`` (noise std / L2 sensitivity), optionally Poisson-subsampled with
rate ``q``:

* **client level** (DP-FedAvg): H. B. McMahan, D. Ramage, K. Talwar and L. Zhang,
  "Learning Differentially Private Recurrent Language Models", ICLR 2018. One step per
  round; cross-silo, every site takes part in every round, so ``q = 1``.
* **sample level** (DP-SGD): M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov,
  K. Talwar and L. Zhang, "Deep Learning with Differential Privacy", CCS 2016. One step
  per minibatch, ``q = expected batch size / number of examples``.

The RDP analysis is I. Mironov, "Rényi Differential Privacy", CSF 2017, with the
subsampled Gaussian of Mironov, Talwar and Zhang (2019), as implemented by Google's
``dp_accounting`` (add-or-remove-one neighbouring relation, its default RDP orders).

What a site has spent is a :class:`PrivacyLedgerState`: a plain list of events that
travels as JSON (never pickle), so it survives agent restarts and can be audited.

>>> round(client_level_epsilon(noise_multiplier=1.0, rounds=50, delta=1e-5), 6)
57.301693

This module never imports torch or opacus (an import-linter contract says so), and it
imports ``dp_accounting`` (about a second: it loads scipy) only when an epsilon is computed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from federation.errors import ConfigurationError

#: Default relative tolerance of :func:`noise_for_epsilon` on the noise multiplier.
NOISE_TOLERANCE = 1e-3
#: The search range of :func:`noise_for_epsilon`.
MIN_NOISE_MULTIPLIER = 0.01
MAX_NOISE_MULTIPLIER = 10_000.0

#: Marks the JSON form of a ledger, so a state written by another accountant is refused.
_ACCOUNTANT = "rdp"
_STATE_VERSION = 1
_EVENT_KEYS = frozenset({"noise_multiplier", "sampling_rate", "steps"})


# ----------------------------------------------------------------------------- checks


def _is_real(value: object) -> bool:
    # numbers.Real also admits numpy scalars (from Opacus or numpy maths); never booleans.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_noise(noise_multiplier: float) -> None:
    if not _is_real(noise_multiplier) or noise_multiplier <= 0:
        raise ConfigurationError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")


def _check_rate(sampling_rate: float) -> None:
    if not _is_real(sampling_rate) or not 0 < sampling_rate <= 1:
        raise ConfigurationError(f"sampling_rate must lie in (0, 1], got {sampling_rate!r}")


def _check_steps(steps: int, name: str = "steps") -> None:
    if not _is_integer(steps) or steps < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {steps!r}")


def _check_delta(delta: float) -> None:
    if not _is_real(delta) or not 0 < delta < 1:
        raise ConfigurationError(f"delta must lie in (0, 1), got {delta!r}")


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PrivacyEvent:
    """``steps`` compositions of a Gaussian mechanism with ``noise_multiplier``,
    Poisson-subsampled at ``sampling_rate`` (1.0: no subsampling)."""

    noise_multiplier: float
    sampling_rate: float
    steps: int

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)
        _check_rate(self.sampling_rate)
        _check_steps(self.steps)
        # Plain Python numbers, so the JSON form and the cache key never hold numpy scalars.
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        object.__setattr__(self, "sampling_rate", float(self.sampling_rate))
        object.__setattr__(self, "steps", int(self.steps))

    def to_json(self) -> dict[str, float | int]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_json(cls, data: object) -> PrivacyEvent:
        if not isinstance(data, Mapping) or set(data) != _EVENT_KEYS:
            raise ConfigurationError(
                f"a privacy event must be an object with exactly the keys {sorted(_EVENT_KEYS)}"
            )
        steps = data["steps"]
        if not _is_integer(steps):
            raise ConfigurationError(f"a privacy event's steps must be an integer, got {steps!r}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sampling_rate=data["sampling_rate"],
            steps=steps,
        )


@contextlib.contextmanager
def _quiet_fractional_orders() -> Iterator[None]:
    """Silence dp_accounting's "failed to converge" warnings for the fractional RDP orders
    of a subsampled Gaussian: those orders are then left out of the minimum (the epsilon
    stays a valid upper bound), and a bisection would print hundreds of them."""

    def keep(record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()

    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


@functools.lru_cache(maxsize=4096)
def _epsilon_of(events: tuple[PrivacyEvent, ...], delta: float) -> float:
    """Epsilon of the composition of ``events``; cached because bisections and ledgers ask
    for the same compositions again and again (the function is pure)."""
    # Imported here, not at the top: it takes about a second (see the module docstring).
    from dp_accounting import dp_event, rdp

    accountant = rdp.RdpAccountant()
    with _quiet_fractional_orders():  # the RDP curve is computed in compose()
        for event in events:
            gaussian = dp_event.GaussianDpEvent(event.noise_multiplier)
            # q == 1 composes the plain Gaussian: exact, and the fast closed form.
            step = (
                gaussian
                if event.sampling_rate == 1.0
                else dp_event.PoissonSampledDpEvent(event.sampling_rate, gaussian)
            )
            accountant.compose(step, event.steps)
        return float(accountant.get_epsilon(delta))


def events_epsilon(events: Sequence[PrivacyEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0.0 for none)."""
    _check_delta(delta)
    if not events:
        return 0.0
    return _epsilon_of(tuple(events), float(delta))


# -------------------------------------------------------------------------- mechanisms


def client_level_epsilon(
    *, noise_multiplier: float, rounds: int, delta: float, sampling_rate: float = 1.0
) -> float:
    """Epsilon of DP-FedAvg after ``rounds`` rounds: one (subsampled) Gaussian per round.

    >>> round(client_level_epsilon(noise_multiplier=5.0, rounds=10, delta=1e-5), 4)
    2.8137
    """
    _check_steps(rounds, "rounds")
    return events_epsilon([PrivacyEvent(noise_multiplier, sampling_rate, rounds)], delta=delta)


def sample_level_epsilon(*, noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps at ``sampling_rate`` = batch size / examples."""
    return events_epsilon([PrivacyEvent(noise_multiplier, sampling_rate, steps)], delta=delta)


def noise_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    steps: int,
    sampling_rate: float = 1.0,
    tolerance: float = NOISE_TOLERANCE,
) -> float:
    """The smallest noise multiplier whose ``steps`` compositions stay within ``target_epsilon``.

    ``steps`` are rounds at the client level (``sampling_rate`` 1) or DP-SGD steps at the
    sample level. Bisection on the noise multiplier: the result ``z`` always meets the
    target (``epsilon(z) <= target_epsilon``) and is at most ``tolerance`` (relative) above
    the true smallest one, i.e. ``epsilon(z * (1 - tolerance)) > target_epsilon``. A
    target that even :data:`MIN_NOISE_MULTIPLIER` meets returns that minimum; one that
    needs more than :data:`MAX_NOISE_MULTIPLIER` raises :class:`ConfigurationError`.
    """
    if not _is_real(target_epsilon) or target_epsilon <= 0:
        raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not _is_real(tolerance) or not 0 < tolerance < 0.5:
        raise ConfigurationError(f"tolerance must lie in (0, 0.5), got {tolerance!r}")
    _check_steps(steps)
    _check_rate(sampling_rate)
    _check_delta(delta)
    return _noise_for(float(target_epsilon), float(delta), steps, float(sampling_rate), float(tolerance))


@functools.lru_cache(maxsize=256)
def _noise_for(
    target_epsilon: float, delta: float, steps: int, sampling_rate: float, tolerance: float
) -> float:
    """:func:`noise_for_epsilon` on checked arguments, cached: a simulation asks once per site."""

    def epsilon(noise: float) -> float:
        return events_epsilon([PrivacyEvent(noise, sampling_rate, steps)], delta=delta)

    low, high = _bracket(epsilon, target_epsilon)
    if low == high:
        return high
    # Invariant: epsilon(low) > target >= epsilon(high).
    while high - low > tolerance * high:
        middle = math.sqrt(low * high)  # geometric: the noise spans orders of magnitude
        if epsilon(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


def _bracket(epsilon: Callable[[float], float], target_epsilon: float) -> tuple[float, float]:
    """``(low, high)`` with ``epsilon(low) > target >= epsilon(high)``, found by doubling
    or halving from 1; ``(MIN, MIN)`` when the smallest noise already meets the target."""
    if epsilon(MIN_NOISE_MULTIPLIER) <= target_epsilon:
        return MIN_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER
    if epsilon(MAX_NOISE_MULTIPLIER) > target_epsilon:
        raise ConfigurationError(
            f"epsilon {target_epsilon} is out of reach: "
            f"even noise multiplier {MAX_NOISE_MULTIPLIER} spends more"
        )
    high = 1.0
    while epsilon(high) > target_epsilon:
        high *= 2.0
    low = high / 2.0
    while low > MIN_NOISE_MULTIPLIER and epsilon(low) <= target_epsilon:
        high, low = low, low / 2.0
    return max(low, MIN_NOISE_MULTIPLIER), high


# ------------------------------------------------------------------ DP-SGD in one job


class DPSGDSchedule(NamedTuple):
    """How Opacus's Poisson loader samples one epoch: ``steps_per_epoch`` batches, each
    example in each batch with probability ``sampling_rate``."""

    sampling_rate: float
    steps_per_epoch: int


def dp_sgd_schedule(*, num_examples: int, batch_size: int) -> DPSGDSchedule:
    """The schedule Opacus uses for ``batch_size``: ``ceil(n / batch_size)`` steps per
    epoch at rate ``1 / ceil(n / batch_size)`` (``batch_size / n`` when it divides ``n``).

    >>> dp_sgd_schedule(num_examples=160, batch_size=32)
    DPSGDSchedule(sampling_rate=0.2, steps_per_epoch=5)
    >>> dp_sgd_schedule(num_examples=151, batch_size=32).steps_per_epoch
    5
    """
    _check_steps(num_examples, "num_examples")
    _check_steps(batch_size, "batch_size")
    steps_per_epoch = math.ceil(num_examples / batch_size)
    return DPSGDSchedule(1.0 / steps_per_epoch, steps_per_epoch)


def dp_sgd_steps_per_round(
    *, num_examples: int, batch_size: int, epochs: int, max_steps: int | None = None
) -> int:
    """The DP-SGD steps of one round: ``epochs`` passes of :func:`dp_sgd_schedule` steps,
    or exactly ``max_steps`` when that is set (:class:`~federation.models.base.TrainConfig`).

    >>> dp_sgd_steps_per_round(num_examples=160, batch_size=32, epochs=2)
    10
    >>> dp_sgd_steps_per_round(num_examples=160, batch_size=32, epochs=1, max_steps=12)
    12
    """
    _check_steps(epochs, "epochs")
    _check_steps(num_examples, "num_examples")
    _check_steps(batch_size, "batch_size")
    if max_steps is not None:
        _check_steps(max_steps, "max_steps")
        return max_steps
    return epochs * dp_sgd_schedule(num_examples=num_examples, batch_size=batch_size).steps_per_epoch


def sample_level_noise_for_job(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    epochs: int,
    num_examples: int,
    batch_size: int,
    max_steps: int | None = None,
    tolerance: float = NOISE_TOLERANCE,
) -> float:
    """One site's DP-SGD noise multiplier so its whole job (``rounds`` rounds of
    :func:`dp_sgd_steps_per_round` steps) spends at most ``target_epsilon``."""
    _check_steps(rounds, "rounds")
    schedule = dp_sgd_schedule(num_examples=num_examples, batch_size=batch_size)
    per_round = dp_sgd_steps_per_round(
        num_examples=num_examples, batch_size=batch_size, epochs=epochs, max_steps=max_steps
    )
    return noise_for_epsilon(
        target_epsilon=target_epsilon,
        delta=delta,
        steps=rounds * per_round,
        sampling_rate=schedule.sampling_rate,
        tolerance=tolerance,
    )


# ---------------------------------------------------------------------- ledger state


@dataclass(frozen=True)
class PrivacyLedgerState:
    """Everything a site (or the server) has spent so far, as plain data.

    Immutable: :meth:`spend` returns a new state. Consecutive events with the same noise
    and rate merge, so one study keeps a handful of entries however many rounds it runs.
    Keep it with :meth:`to_json` and restore it with :meth:`from_json`.

    >>> ledger = PrivacyLedgerState().spend(PrivacyEvent(1.0, 1.0, 30)).spend(PrivacyEvent(1.0, 1.0, 20))
    >>> ledger.events
    (PrivacyEvent(noise_multiplier=1.0, sampling_rate=1.0, steps=50),)
    >>> round(PrivacyLedgerState.from_json(ledger.to_json()).epsilon(1e-5), 6)
    57.301693
    """

    events: tuple[PrivacyEvent, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        if not all(isinstance(event, PrivacyEvent) for event in self.events):
            raise ConfigurationError("a privacy ledger state holds PrivacyEvent values only")

    @classmethod
    def of(cls, events: Iterable[PrivacyEvent]) -> PrivacyLedgerState:
        """The ledger after spending ``events`` in order (consecutive equal mechanisms merge)."""
        ledger = cls()
        for event in events:
            ledger = ledger.spend(event)
        return ledger

    def spend(self, event: PrivacyEvent) -> PrivacyLedgerState:
        if not isinstance(event, PrivacyEvent):
            raise ConfigurationError(f"spend needs a PrivacyEvent, got {type(event).__name__}")
        if self.events:
            last = self.events[-1]
            if (last.noise_multiplier, last.sampling_rate) == (event.noise_multiplier, event.sampling_rate):
                merged = PrivacyEvent(last.noise_multiplier, last.sampling_rate, last.steps + event.steps)
                return PrivacyLedgerState((*self.events[:-1], merged))
        return PrivacyLedgerState((*self.events, event))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any event)."""
        return events_epsilon(self.events, delta=delta)

    @property
    def total_steps(self) -> int:
        return sum(event.steps for event in self.events)

    def to_json(self) -> dict[str, object]:
        return {
            "accountant": _ACCOUNTANT,
            "version": _STATE_VERSION,
            "events": [event.to_json() for event in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PrivacyLedgerState:
        """Parse :meth:`to_json`'s output; :class:`ConfigurationError` if malformed."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("a privacy ledger state must be a JSON object")
        if data.get("accountant") != _ACCOUNTANT or data.get("version") != _STATE_VERSION:
            raise ConfigurationError(
                f"not a privacy ledger state of accountant {_ACCOUNTANT!r} version {_STATE_VERSION}: "
                f"got accountant {data.get('accountant')!r} version {data.get('version')!r}"
            )
        events = data.get("events")
        if not isinstance(events, list):
            raise ConfigurationError("a privacy ledger state's events must be a list")
        return cls(tuple(PrivacyEvent.from_json(item) for item in events))
