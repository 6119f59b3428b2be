"""Model-poisoning attacks on a round's updates, for measuring robust aggregation.

Small pure functions: given the round's global weights and what silos trained, they
return what malicious silos send instead. Nothing here is used by the control plane or
the silo agent; the simulator (:mod:`federation.simulation`) applies an attack to the
first ``num_malicious`` silos after they have trained honestly on their own data.

The delta of a silo is ``local - global``. Every attack keeps each tensor's dtype.

References:

* Sign flipping -- the standard sign-flipping attack of the Byzantine-robustness
  literature, e.g. Li, Xu, Chen, Giannakis and Ling, "RSA: Byzantine-Robust Stochastic
  Aggregation Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019.
  The attacker sends its honest delta reversed and scaled by ``s``:
  ``global - s * (local - global)``.
* Scaled update (boosting, model replacement) -- Bhagoji, Chakraborty, Mittal and Calo,
  "Analyzing Federated Learning through an Adversarial Lens", ICML 2019 (explicit
  boosting), and Bagdasaryan, Veit, Hua, Estrin and Shmatikov, "How To Backdoor
  Federated Learning", AISTATS 2020 (model replacement). The attacker sends
  ``global + s * (local - global)``, so its delta outweighs the others' in a mean.
  Here the local model is trained honestly: the attack measures what an outsized step
  does, not a backdoor.
* "A little is enough" -- Baruch, Baruch and Goldberg, "A Little Is Enough:
  Circumventing Defenses For Distributed Learning", NeurIPS 2019. With ``n`` silos of
  which ``f`` are malicious, ``s = floor(n / 2 + 1) - f`` honest silos must be won over
  for the malicious value to pass as a majority, and the largest shift that stays
  inside the honest spread is ``z = Phi^-1((n - s) / n)`` (``Phi`` the standard normal
  CDF). Every malicious silo sends ``global + mean - z * std``, per coordinate, of the
  honest deltas. **Threat assumption:** the attacker knows the per-coordinate mean and
  standard deviation (population, ``ddof=0``) of the honest silos' deltas this round:
  an omniscient attacker, or one whose own data is distributed like the honest silos'.
  The sign of the shift is the attacker's choice; this module subtracts.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from federation.errors import ConfigurationError
from federation.types import Weights

#: Read-only weights: any mapping of tensor name to array (an attack never mutates them).
WeightsLike = Mapping[str, NDArray[np.floating]]


class AttackKind(enum.StrEnum):
    """What the malicious silos send in place of their honestly trained weights."""

    NONE = "none"
    SIGN_FLIP = "sign_flip"
    SCALED = "scaled"
    LITTLE_IS_ENOUGH = "little_is_enough"

    @property
    def default_scale(self) -> float:
        """The scale ``s`` used when none is given (sign flip 1, scaled update 10)."""
        return 10.0 if self is AttackKind.SCALED else 1.0


def _check_scale(scale: float) -> float:
    value = float(scale)
    if not math.isfinite(value) or value <= 0.0:
        raise ConfigurationError(f"the attack's scale must be a positive finite number, got {scale!r}")
    return value


def _shifted(global_weights: WeightsLike, deltas: Weights) -> Weights:
    """``global + delta`` per tensor, in each global tensor's dtype."""
    return {
        name: (params + deltas[name]).astype(params.dtype, copy=False)
        for name, params in global_weights.items()
    }


def sign_flip(global_weights: WeightsLike, local_weights: WeightsLike, *, scale: float = 1.0) -> Weights:
    """The reversed, scaled delta: ``global - scale * (local - global)``.

    >>> g, l = {"w": np.array([1.0, 1.0])}, {"w": np.array([2.0, 0.0])}
    >>> sign_flip(g, l, scale=2.0)["w"]
    array([-1.,  3.])
    """
    s = _check_scale(scale)
    return _shifted(
        global_weights, {name: -s * (local_weights[name] - params) for name, params in global_weights.items()}
    )


def scaled_update(global_weights: WeightsLike, local_weights: WeightsLike, *, scale: float = 10.0) -> Weights:
    """The boosted delta: ``global + scale * (local - global)``.

    >>> g, l = {"w": np.array([1.0, 1.0])}, {"w": np.array([2.0, 0.0])}
    >>> scaled_update(g, l, scale=10.0)["w"]
    array([11., -9.])
    """
    s = _check_scale(scale)
    return _shifted(
        global_weights, {name: s * (local_weights[name] - params) for name, params in global_weights.items()}
    )


def little_is_enough_z(num_silos: int, num_malicious: int) -> float:
    """The paper's ``z_max = Phi^-1((n - s) / n)`` with ``s = floor(n / 2 + 1) - f``.

    It needs ``1 <= f <= n / 2`` (so that ``0 < s``): with more attackers than that
    they are a majority already and the bound is infinite.

    >>> round(little_is_enough_z(5, 1), 4)  # s = 3 - 1 = 2, Phi^-1(3 / 5)
    0.2533
    >>> little_is_enough_z(50, 24) > 1.0
    True
    """
    if num_silos < 2 or not 1 <= num_malicious <= num_silos // 2:
        raise ConfigurationError(
            f"'a little is enough' needs 1 <= malicious <= silos / 2, got {num_malicious} of {num_silos}"
        )
    supporters = (num_silos // 2 + 1) - num_malicious
    return float(norm.ppf((num_silos - supporters) / num_silos))


def honest_delta_moments(
    global_weights: WeightsLike, honest_weights: Sequence[WeightsLike]
) -> tuple[Weights, Weights]:
    """Per-coordinate mean and population standard deviation of the honest deltas."""
    if not honest_weights:
        raise ConfigurationError("'a little is enough' needs at least one honest update to imitate")
    means: Weights = {}
    stds: Weights = {}
    for name, params in global_weights.items():
        deltas: NDArray[np.float64] = np.stack(
            [np.asarray(w[name], dtype=np.float64) - params for w in honest_weights]
        )
        means[name] = deltas.mean(axis=0)
        stds[name] = deltas.std(axis=0)
    return means, stds


def little_is_enough(
    global_weights: WeightsLike, honest_weights: Sequence[WeightsLike], *, z: float
) -> Weights:
    """``global + mean - z * std`` of the honest deltas, per coordinate (``z >= 0``).

    >>> g = {"w": np.zeros(2)}
    >>> honest = [{"w": np.array([1.0, 0.0])}, {"w": np.array([3.0, 0.0])}]
    >>> little_is_enough(g, honest, z=0.5)["w"]  # mean 2, std 1 in the first coordinate
    array([1.5, 0. ])
    """
    if not math.isfinite(z) or z < 0.0:
        raise ConfigurationError(f"z must be a non-negative finite number, got {z!r}")
    means, stds = honest_delta_moments(global_weights, honest_weights)
    return _shifted(global_weights, {name: means[name] - z * stds[name] for name in global_weights})


def attack(
    kind: AttackKind,
    global_weights: WeightsLike,
    honest_weights: Sequence[WeightsLike],
    malicious_local_weights: Sequence[WeightsLike],
    rng: np.random.Generator,
    *,
    scale: float | None = None,
    z: float | None = None,
) -> list[Weights]:
    """What each malicious silo sends, in the order of ``malicious_local_weights``.

    ``honest_weights`` are the honest silos' trained weights this round and
    ``malicious_local_weights`` what the malicious silos trained honestly on their own
    data. ``scale`` defaults to :attr:`AttackKind.default_scale`; ``z`` (for "a little is
    enough") to :func:`little_is_enough_z` of ``n = len(honest) + len(malicious)``.
    The three attacks here are deterministic: ``rng`` is the stream any randomized
    attack must draw from, and none of them consumes it.
    """
    del rng  # deterministic attacks; the parameter keeps randomness explicit for others
    if kind is AttackKind.NONE:
        return [dict(w) for w in malicious_local_weights]
    if kind is AttackKind.LITTLE_IS_ENOUGH:
        num_malicious = len(malicious_local_weights)
        num_silos = len(honest_weights) + num_malicious
        z_value = little_is_enough_z(num_silos, num_malicious) if z is None else z
        forged = little_is_enough(global_weights, honest_weights, z=z_value)
        return [{name: array.copy() for name, array in forged.items()} for _ in malicious_local_weights]
    step = scale if scale is not None else kind.default_scale
    transform = sign_flip if kind is AttackKind.SIGN_FLIP else scaled_update
    return [transform(global_weights, local, scale=step) for local in malicious_local_weights]
