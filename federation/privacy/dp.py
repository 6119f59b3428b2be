"""Client-level differential privacy: clip each site's delta, add Gaussian noise to the mean.

DP-FedAvg -- H. B. McMahan, D. Ramage, K. Talwar and L. Zhang, "Learning Differentially
Private Recurrent Language Models", ICLR 2018 (Algorithm 1 with every site taking part,
as in a cross-silo study). Each site clips the L2 norm of its whole model delta
``w_i - w_global`` (all tensors as one vector) to ``C`` (:func:`clip_delta`); the server
adds ``N(0, (z * C)^2)`` to the sum of the clipped deltas, divides by the number of
sites ``n`` and applies the result to the global model (:func:`dp_fedavg`). The
Gaussian mechanism is C. Dwork and A. Roth, "The Algorithmic Foundations of Differential
Privacy", 2014, Appendix A; its epsilon is computed in :mod:`federation.privacy.accounting`.

Why the sites get equal weights here, not FedAvg's ``n_i / sum(n)``: the guarantee needs a
bound on how much one site can move the aggregate. With equal weights one site changes
the sum of clipped deltas by at most ``C``, whatever its data. With example weights a site
moves the mean by ``C * n_i / sum(n)``, a bound that depends on the (private, and
self-reported) example counts, so the noise would have to depend on the data too.

Why dividing by ``n`` is free: in a cross-silo study the list of participants is public,
so ``n`` is not a secret and the mean is post-processing of the noisy sum. That is also
why :func:`noisy_mean_from_sum` composes with secure aggregation, where the server only
learns the sum of the (masked) clipped deltas and how many sites sent one.

Randomness is always passed in. Production callers pass :func:`secure_generator`, a
numpy generator seeded with 128 bits from the operating system's CSPRNG (``secrets``), so
nobody can predict (and subtract) the noise; simulations and tests pass a seeded one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from federation.errors import ConfigurationError, InvalidUpdateError
from federation.types import Weights

#: Provenance of one noisy aggregation (no per-site values: they are what DP protects).
DPDetails = dict[str, float | int]

#: A delta whose norm exceeds the clipping norm by more than this (relative) was not
#: clipped by its site; float32 rounding of a clipped delta stays far below it.
_RECLIP_SLACK = 1e-4


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _num_sites(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigurationError(f"num_sites must be a positive integer, got {value!r}")
    return int(value)


def _check_same_tensors(name: str, weights: Mapping[str, NDArray[np.floating]], reference: Weights) -> None:
    if set(weights) != set(reference):
        raise InvalidUpdateError(f"{name} has tensors {sorted(weights)}, expected {sorted(reference)}")
    for tensor, array in weights.items():
        if np.shape(array) != np.shape(reference[tensor]):
            raise InvalidUpdateError(
                f"{name}: tensor {tensor!r} has shape {np.shape(array)}, "
                f"expected {np.shape(reference[tensor])}"
            )


def l2_norm(weights: Mapping[str, NDArray[np.floating]]) -> float:
    """The L2 norm of all tensors taken together as one vector, accumulated in float64.

    >>> l2_norm({"a": np.array([3.0]), "b": np.array([[4.0]])})
    5.0
    """
    total = 0.0
    for array in weights.values():
        values = np.asarray(array, dtype=np.float64).reshape(-1)
        total += float(np.dot(values, values))
    return math.sqrt(total)


def _delta(local: Mapping[str, NDArray[np.floating]], global_: Weights) -> dict[str, NDArray[np.float64]]:
    _check_same_tensors("the local weights", local, global_)
    return {
        name: np.asarray(local[name], dtype=np.float64) - np.asarray(array, dtype=np.float64)
        for name, array in global_.items()
    }


def _scaled(
    delta: Mapping[str, NDArray[np.float64]], norm: float, clipping_norm: float
) -> dict[str, NDArray[np.float64]]:
    """``delta * min(1, C / norm)``: unchanged under the bound, else scaled onto it."""
    if norm <= clipping_norm:
        return dict(delta)
    factor = clipping_norm / norm
    return {name: array * factor for name, array in delta.items()}


def clip_delta(local: Weights, global_: Weights, clipping_norm: float) -> tuple[Weights, float]:
    """``global + delta * min(1, C / ||delta||)`` with ``delta = local - global``, and ``||delta||``.

    The norm is over all tensors together (flat clipping, as in McMahan et al.). The result
    has the dtypes of ``local``; rounding to float32 can leave the norm a hair above ``C``,
    which :func:`dp_fedavg`'s own clipping absorbs.

    >>> clipped, norm = clip_delta({"w": np.array([3.0, 4.0])}, {"w": np.zeros(2)}, 1.0)
    >>> clipped["w"], norm
    (array([0.6, 0.8]), 5.0)
    """
    bound = _positive("clipping_norm", clipping_norm)
    delta = _delta(local, global_)
    norm = l2_norm(delta)
    clipped = _scaled(delta, norm, bound)
    result: Weights = {
        name: (np.asarray(global_[name], dtype=np.float64) + clipped[name]).astype(
            np.asarray(local[name]).dtype
        )
        for name in global_
    }
    return result, norm


def gaussian_noise_std(noise_multiplier: float, clipping_norm: float, num_sites: int) -> float:
    """Std of the noise on the MEAN of ``num_sites`` clipped deltas: ``z * C / n``.

    ``C`` is the L2 sensitivity of the sum of the clipped deltas (one site added or
    removed); the noise of std ``z * C`` on the sum becomes ``z * C / n`` on the mean.

    >>> gaussian_noise_std(1.1, 0.5, 4)
    0.1375
    """
    z = _positive("noise_multiplier", noise_multiplier)
    return z * _positive("clipping_norm", clipping_norm) / _num_sites(num_sites)


def secure_generator() -> np.random.Generator:
    """A numpy generator seeded with 128 bits from the OS CSPRNG, for production noise.

    The seed is unpredictable, so no party can regenerate the noise. PCG64 itself is not a
    cryptographic generator; that is acceptable because only noisy aggregates, never raw
    draws, leave the process.
    """
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def add_gaussian_noise(
    weights: Mapping[str, NDArray[np.floating]], std: float, rng: np.random.Generator
) -> Weights:
    """New arrays ``w + N(0, std^2)`` per coordinate, drawn in float64 from ``rng`` and
    returned in each tensor's dtype. ``std == 0`` returns copies.

    Pass :func:`secure_generator` in production, a seeded generator in tests.
    """
    if (
        isinstance(std, bool)
        or not isinstance(std, int | float | np.floating)
        or not (math.isfinite(std) and std >= 0)
    ):
        raise ConfigurationError(f"the noise std must be a finite number >= 0, got {std!r}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigurationError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    noisy: Weights = {}
    for name, array in weights.items():
        values = np.asarray(array)
        noise = rng.normal(0.0, float(std), size=values.shape) if std > 0 else 0.0
        noisy[name] = (values.astype(np.float64) + noise).astype(values.dtype)
    return noisy


def noisy_mean_from_sum(
    delta_sum: Mapping[str, NDArray[np.floating]],
    num_sites: int,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    rng: np.random.Generator,
) -> Weights:
    """``(sum + N(0, (z C)^2)) / n``: the noisy mean delta from the sum of ``n`` deltas,
    each clipped to ``C``. For secure aggregation, where the server only holds the sum;
    the clipping is then each site's own promise (the server cannot check it)."""
    std = gaussian_noise_std(noise_multiplier, clipping_norm, num_sites)
    mean: Weights = {
        name: np.asarray(array, dtype=np.float64) / num_sites for name, array in delta_sum.items()
    }
    return add_gaussian_noise(mean, std, rng)  # float64 in, float64 out


def dp_fedavg(
    global_weights: Weights,
    clipped_updates: Sequence[Mapping[str, NDArray[np.floating]]],
    *,
    noise_multiplier: float,
    clipping_norm: float,
    rng: np.random.Generator,
) -> tuple[Weights, DPDetails]:
    """DP-FedAvg's server step: ``global + (sum of clipped deltas + N(0, (z C)^2)) / n``.

    ``clipped_updates`` are the sites' weights after :func:`clip_delta`. The server clips
    every delta again: a no-op for an honest site, and the guarantee then does not rest
    on every site having clipped. The result has the dtypes of ``global_weights``.
    """
    if len(clipped_updates) == 0:
        raise ConfigurationError("DP-FedAvg needs at least one update")
    bound = _positive("clipping_norm", clipping_norm)
    delta_sum = {name: np.zeros(np.shape(array), dtype=np.float64) for name, array in global_weights.items()}
    reclipped = 0
    for update in clipped_updates:
        delta = _delta(update, global_weights)
        norm = l2_norm(delta)
        reclipped += int(norm > bound * (1.0 + _RECLIP_SLACK))
        for name, array in _scaled(delta, norm, bound).items():
            delta_sum[name] += array
    num_sites = len(clipped_updates)
    mean = noisy_mean_from_sum(
        delta_sum, num_sites, noise_multiplier=noise_multiplier, clipping_norm=bound, rng=rng
    )
    new_weights: Weights = {
        name: (np.asarray(array, dtype=np.float64) + mean[name]).astype(np.asarray(array).dtype)
        for name, array in global_weights.items()
    }
    details: DPDetails = {
        "num_sites": num_sites,
        "noise_multiplier": float(noise_multiplier),
        "clipping_norm": bound,
        "noise_std": gaussian_noise_std(noise_multiplier, bound, num_sites),
        "num_reclipped": reclipped,
    }
    return new_weights, details
