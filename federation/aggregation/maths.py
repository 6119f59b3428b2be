"""The pure mathematics of server-side aggregation.

Small, typed functions on numpy arrays. They know nothing about tensors, rounds or
silos: the strategies call them on whole models and the streaming layer calls them
slice by slice over a flattened parameter vector. So every function works on any
1-D slice, or on a stacked ``(num_updates, slice_len)`` array whose axis 0 indexes
the client updates, and none of them assumes it sees a whole model.

Conventions:

* Bad hyper-parameters (learning rates, betas, caps, counts) raise
  :class:`~federation.errors.ConfigurationError`; arrays of the wrong shape or of a
  non-floating dtype raise :class:`~federation.errors.InvalidUpdateError`.
* Inputs are never mutated, except the accumulator of :func:`accumulate_weighted`,
  whose whole purpose is to be updated in place.
* Finiteness of the updates is checked upstream (the wire layer rejects NaN and
  infinity), so it is not re-checked here.

References:

* FedAvg -- McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017. The aggregate is
  the weighted mean ``sum(n_i * w_i) / sum(n_i)`` over the silos' example counts
  ``n_i`` (not ``1/N * sum(n_i * w_i)``).
* FedAvgM -- Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019: server momentum applied
  to the pseudo-gradient.
* FedAdagrad, FedAdam, FedYogi (and the server-optimizer view of FedAvg/FedAvgM) --
  Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan, "Adaptive
  Federated Optimization", ICLR 2021, Algorithm 2, with server learning rate ``eta``,
  moment decays ``beta_1``/``beta_2`` and adaptivity ``tau``. The pseudo-gradient is
  ``delta = aggregated_client_weights - global_weights``, so the step moves along
  ``+delta``.
* Coordinate-wise median and trimmed mean -- Yin, Chen, Ramchandran and Bartlett,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
  ICML 2018.
* Krum and Multi-Krum -- Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from federation.errors import ConfigurationError, InvalidUpdateError

#: Elements processed per block by :func:`accumulate_weighted` (bounds its scratch memory).
ACCUMULATE_CHUNK = 1 << 16


class MomentumStep(NamedTuple):
    """Result of a FedAvgM server step: the new global parameters and momentum buffer."""

    params: NDArray[np.floating]
    momentum: NDArray[np.floating]


class AdaptiveStep(NamedTuple):
    """Result of a FedAdagrad/FedAdam/FedYogi server step: parameters and both moments."""

    params: NDArray[np.floating]
    m: NDArray[np.floating]
    v: NDArray[np.floating]


# --------------------------------------------------------------------------- validation


def _hyper(name: str, value: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from error
    if not math.isfinite(result):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    return result


def _positive(name: str, value: float) -> float:
    result = _hyper(name, value)
    if result <= 0.0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")
    return result


def _decay(name: str, value: float) -> float:
    result = _hyper(name, value)
    if not 0.0 <= result < 1.0:
        raise ConfigurationError(f"{name} must satisfy 0 <= {name} < 1, got {value!r}")
    return result


def _float_array(name: str, array: NDArray[np.floating]) -> NDArray[np.floating]:
    result = np.asarray(array)
    if not np.issubdtype(result.dtype, np.floating):
        raise InvalidUpdateError(f"{name} must have a floating dtype, got {result.dtype}")
    return result


def _stacked(name: str, stacked: NDArray[np.floating]) -> NDArray[np.floating]:
    result = _float_array(name, stacked)
    if result.ndim < 2 or result.shape[0] == 0:
        raise InvalidUpdateError(
            f"{name} must stack at least one update along axis 0, got shape {result.shape}"
        )
    return result


def _same_shape(name: str, array: NDArray[np.floating], shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise InvalidUpdateError(f"{name} has shape {array.shape}, expected {shape}")


def _square_matrix(name: str, matrix: NDArray[np.floating]) -> NDArray[np.float64]:
    result = np.array(matrix, dtype=np.float64)  # always a copy: callers modify it
    if result.ndim != 2 or result.shape[0] != result.shape[1] or result.shape[0] == 0:
        raise InvalidUpdateError(f"{name} must be a non-empty square matrix, got shape {result.shape}")
    if not np.all(np.isfinite(result)) or np.any(result < 0.0):
        raise InvalidUpdateError(f"{name} must hold finite, non-negative values")
    return result


# ------------------------------------------------------------------- weighted averaging


def normalized_weights(num_examples: Sequence[int], *, max_share: float | None = None) -> NDArray[np.float64]:
    """Each silo's share ``n_i / sum(n)`` of the examples, optionally capped.

    With ``max_share`` (``0 < max_share <= 1``) no share exceeds it: the excess of the
    silos above the cap is redistributed among the others in proportion to their
    counts, repeatedly, until no share is above the cap (water-filling). Uncapped silos
    keep shares proportional to their counts; the shares always sum to 1. A cap with
    ``max_share * num_silos < 1`` cannot be met and raises ``ConfigurationError``.

    >>> normalized_weights([10, 30])
    array([0.25, 0.75])
    >>> normalized_weights([80, 10, 10], max_share=0.5)
    array([0.5 , 0.25, 0.25])
    """
    try:
        counts = np.asarray(num_examples, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"num_examples must be numbers, got {num_examples!r}") from error
    if counts.ndim != 1 or counts.size == 0:
        raise ConfigurationError("num_examples must be a non-empty sequence of counts")
    if not np.all(np.isfinite(counts)) or np.any(counts <= 0):
        raise ConfigurationError(f"every silo's num_examples must be positive, got {list(num_examples)}")
    if max_share is None:
        return counts / float(counts.sum())
    cap = _hyper("max_share", max_share)
    if not 0.0 < cap <= 1.0:
        raise ConfigurationError(f"max_share must satisfy 0 < max_share <= 1, got {max_share!r}")
    if cap * counts.size < 1.0 - 1e-12:
        raise ConfigurationError(
            f"max_share={max_share} is infeasible for {counts.size} silos: the shares must sum "
            f"to 1, so max_share must be at least 1/{counts.size} = {1.0 / counts.size:.6g}"
        )
    return _water_fill(counts, cap)


def _water_fill(counts: NDArray[np.float64], cap: float) -> NDArray[np.float64]:
    capped = np.zeros(counts.size, dtype=bool)
    while True:
        free_mass = 1.0 - cap * int(capped.sum())
        scale = free_mass / float(counts[~capped].sum())
        shares = np.where(capped, cap, counts * scale)
        over = ~capped & (shares > cap)
        if not over.any():
            return shares
        capped |= over
        if capped.all():  # only when cap * num_silos == 1 up to rounding
            return np.full(counts.size, 1.0 / counts.size)


def accumulate_weighted(
    accumulator: NDArray[np.floating],
    update: NDArray[np.floating],
    weight: float,
    *,
    scratch: NDArray[np.floating] | None = None,
) -> None:
    """In place, ``accumulator += weight * update``: fold one update into a running sum.

    The arithmetic happens in the accumulator's dtype, block by block, through a
    scratch buffer: ``scratch`` if given (1-D, the accumulator's dtype; its length is
    the block size), else one of :data:`ACCUMULATE_CHUNK` elements. So no temporary of
    the full size is made, unless the accumulator is a non-contiguous n-D view.

    >>> acc = np.zeros(3)
    >>> accumulate_weighted(acc, np.array([1.0, 2.0, 3.0], dtype=np.float32), 0.5)
    >>> acc
    array([0.5, 1. , 1.5])
    """
    if not isinstance(accumulator, np.ndarray) or accumulator.dtype.kind != "f":
        raise InvalidUpdateError("the accumulator must be a numpy array with a floating dtype")
    if update.shape != accumulator.shape:
        raise InvalidUpdateError(f"update has shape {update.shape}, expected {accumulator.shape}")
    factor = _hyper("weight", weight)
    if scratch is not None and scratch.shape == accumulator.shape and scratch.dtype == accumulator.dtype:
        # The hot path of streaming aggregation: exactly two numpy calls.
        np.multiply(update, factor, out=scratch, dtype=scratch.dtype)
        np.add(accumulator, scratch, out=accumulator)
        return
    if accumulator.ndim > 1 and not accumulator.flags.c_contiguous:
        accumulator += factor * update.astype(accumulator.dtype, copy=False)
        return
    flat = accumulator.reshape(-1)  # a view: 1-D arrays and C-contiguous arrays reshape in place
    values = update.reshape(-1)
    buffer = _scratch_buffer(scratch, flat)
    for start in range(0, flat.size, buffer.size):
        stop = min(start + buffer.size, flat.size)
        block = buffer[: stop - start]
        np.multiply(values[start:stop], factor, out=block, dtype=block.dtype)
        np.add(flat[start:stop], block, out=flat[start:stop])


def _scratch_buffer(scratch: NDArray[np.floating] | None, flat: NDArray[np.floating]) -> NDArray[np.floating]:
    if scratch is None:
        return np.empty(max(1, min(ACCUMULATE_CHUNK, flat.size)), dtype=flat.dtype)
    if not isinstance(scratch, np.ndarray) or scratch.ndim != 1 or scratch.size == 0:
        raise ConfigurationError("scratch must be a non-empty 1-D numpy array")
    if scratch.dtype != flat.dtype:
        raise ConfigurationError(f"scratch has dtype {scratch.dtype}, the accumulator {flat.dtype}")
    return scratch


def weighted_mean(updates: Sequence[NDArray[np.floating]], weights: Sequence[float]) -> NDArray[np.float64]:
    """``sum(w_i * u_i) / sum(w_i)``, accumulated one update at a time in float64.

    The weights need not be normalized (example counts are fine); they must be
    non-negative with a positive sum. This is the FedAvg aggregate when the weights
    are the silos' example counts.

    >>> weighted_mean([np.array([0.0, 0.0]), np.array([3.0, 6.0])], [1, 2])
    array([2., 4.])
    """
    if len(updates) == 0:
        raise ConfigurationError("weighted_mean needs at least one update")
    if len(updates) != len(weights):
        raise ConfigurationError(f"got {len(updates)} updates but {len(weights)} weights")
    raw = np.asarray([_hyper("weight", w) for w in weights], dtype=np.float64)
    if np.any(raw < 0.0) or raw.sum() <= 0.0:
        raise ConfigurationError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    shares = raw / raw.sum()
    first = _float_array("update", updates[0])
    accumulator = np.zeros(first.shape, dtype=np.float64)
    for update, share in zip(updates, shares, strict=True):
        accumulate_weighted(accumulator, _float_array("update", update), float(share))
    return accumulator


# ---------------------------------------------------------------- server optimizer steps


def _prepare(
    params: NDArray[np.floating], delta: NDArray[np.floating]
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """``params`` and ``delta`` in the working dtype: float64 for float64 params, else float32."""
    x = _float_array("params", params)
    d = _float_array("delta", delta)
    _same_shape("delta", d, x.shape)
    work = np.result_type(x.dtype, np.float32)
    return x.astype(work, copy=False), d.astype(work, copy=False)


def _state(
    name: str, state: NDArray[np.floating] | None, fill: float, like: NDArray[np.floating]
) -> NDArray[np.floating]:
    if state is None:
        return np.full(like.shape, fill, dtype=like.dtype)
    array = _float_array(name, state)
    _same_shape(name, array, like.shape)
    return array.astype(like.dtype, copy=False)


def fedavg_step(
    params: NDArray[np.floating], delta: NDArray[np.floating], *, server_learning_rate: float
) -> NDArray[np.floating]:
    """Server SGD on the pseudo-gradient: ``params + eta * delta``.

    With ``server_learning_rate == 1`` this is plain FedAvg: the result is the
    aggregated client weights ``params + delta``.

    >>> fedavg_step(np.array([1.0, 2.0]), np.array([0.5, -1.0]), server_learning_rate=0.5)
    array([1.25, 1.5 ])
    """
    x, d = _prepare(params, delta)
    eta = _positive("server_learning_rate", server_learning_rate)
    result = d * eta
    result += x
    return result.astype(np.asarray(params).dtype, copy=False)


def fedavgm_step(
    params: NDArray[np.floating],
    delta: NDArray[np.floating],
    momentum: NDArray[np.floating] | None,
    *,
    server_learning_rate: float,
    server_momentum: float,
) -> MomentumStep:
    """FedAvgM: ``v = beta * v + delta`` then ``x = x + eta * v``.

    ``momentum`` is ``None`` on the first round (zeros). Returns new arrays; the
    momentum is kept in float64 for float64 params and in float32 otherwise.

    >>> step = fedavgm_step(np.array([1.0]), np.array([2.0]), np.array([1.0]),
    ...                     server_learning_rate=0.5, server_momentum=0.9)
    >>> step.momentum, step.params
    (array([2.9]), array([2.45]))
    """
    x, d = _prepare(params, delta)
    eta = _positive("server_learning_rate", server_learning_rate)
    beta = _decay("server_momentum", server_momentum)
    new_momentum = _state("momentum", momentum, 0.0, x) * beta
    new_momentum += d
    new_params = new_momentum * eta
    new_params += x
    return MomentumStep(new_params.astype(np.asarray(params).dtype, copy=False), new_momentum)


def _first_moment(
    m: NDArray[np.floating] | None, delta: NDArray[np.floating], beta_1: float
) -> NDArray[np.floating]:
    """``beta_1 * m + (1 - beta_1) * delta`` (``m`` is zeros when None)."""
    new_m = _state("m", m, 0.0, delta) * beta_1
    new_m += delta * (1.0 - beta_1)
    return new_m


def _adaptive_finish(
    params: NDArray[np.floating],
    x: NDArray[np.floating],
    new_m: NDArray[np.floating],
    new_v: NDArray[np.floating],
    eta: float,
    tau: float,
) -> AdaptiveStep:
    """``x + eta * m / (sqrt(v) + tau)``, cast back to the dtype of ``params``."""
    denominator = np.sqrt(new_v)
    denominator += tau
    new_params = new_m / denominator
    new_params *= eta
    new_params += x
    return AdaptiveStep(new_params.astype(np.asarray(params).dtype, copy=False), new_m, new_v)


def fedadagrad_step(
    params: NDArray[np.floating],
    delta: NDArray[np.floating],
    m: NDArray[np.floating] | None,
    v: NDArray[np.floating] | None,
    *,
    eta: float,
    beta_1: float,
    tau: float,
) -> AdaptiveStep:
    """FedAdagrad (Reddi et al. 2021, Algorithm 2).

    ``m = beta_1 * m + (1 - beta_1) * delta``; ``v = v + delta**2``;
    ``x = x + eta * m / (sqrt(v) + tau)``. On the first round pass ``None``: ``m``
    starts at zeros and ``v`` at ``tau**2`` (the paper asks for ``v_{-1} >= tau**2``).
    No bias correction, as in the paper.

    >>> step = fedadagrad_step(np.array([1.0]), np.array([2.0]), None, None,
    ...                        eta=0.1, beta_1=0.5, tau=1.0)
    >>> step.m, step.v, step.params
    (array([1.]), array([5.]), array([1.0309017]))
    """
    x, d = _prepare(params, delta)
    eta = _positive("eta", eta)
    beta_1 = _decay("beta_1", beta_1)
    tau = _positive("tau", tau)
    new_m = _first_moment(m, d, beta_1)
    new_v = _state("v", v, tau**2, x) + np.square(d)
    return _adaptive_finish(params, x, new_m, new_v, eta, tau)


def fedadam_step(
    params: NDArray[np.floating],
    delta: NDArray[np.floating],
    m: NDArray[np.floating] | None,
    v: NDArray[np.floating] | None,
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> AdaptiveStep:
    """FedAdam (Reddi et al. 2021, Algorithm 2).

    As :func:`fedadagrad_step` but ``v = beta_2 * v + (1 - beta_2) * delta**2``.
    First round: ``m`` starts at zeros and ``v`` at ``tau**2``. No bias correction.

    >>> step = fedadam_step(np.array([1.0]), np.array([2.0]), None, None,
    ...                     eta=0.1, beta_1=0.5, beta_2=0.75, tau=1.0)
    >>> step.m, step.v, step.params
    (array([1.]), array([1.75]), array([1.04305009]))
    """
    x, d = _prepare(params, delta)
    eta = _positive("eta", eta)
    beta_1 = _decay("beta_1", beta_1)
    beta_2 = _decay("beta_2", beta_2)
    tau = _positive("tau", tau)
    new_m = _first_moment(m, d, beta_1)
    new_v = _state("v", v, tau**2, x) * beta_2
    scaled_square = np.square(d)
    scaled_square *= 1.0 - beta_2
    new_v += scaled_square
    return _adaptive_finish(params, x, new_m, new_v, eta, tau)


def fedyogi_step(
    params: NDArray[np.floating],
    delta: NDArray[np.floating],
    m: NDArray[np.floating] | None,
    v: NDArray[np.floating] | None,
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> AdaptiveStep:
    """FedYogi (Reddi et al. 2021, Algorithm 2).

    As :func:`fedadam_step` but ``v = v - (1 - beta_2) * delta**2 * sign(v - delta**2)``.
    First round: ``m`` starts at zeros and ``v`` at ``tau**2``. No bias correction.

    >>> step = fedyogi_step(np.array([1.0]), np.array([2.0]), None, None,
    ...                     eta=0.1, beta_1=0.5, beta_2=0.75, tau=1.0)
    >>> step.m, step.v, step.params
    (array([1.]), array([2.]), array([1.04142136]))
    """
    x, d = _prepare(params, delta)
    eta = _positive("eta", eta)
    beta_1 = _decay("beta_1", beta_1)
    beta_2 = _decay("beta_2", beta_2)
    tau = _positive("tau", tau)
    new_m = _first_moment(m, d, beta_1)
    previous_v = _state("v", v, tau**2, x)
    correction = np.square(d)
    direction = np.sign(previous_v - correction)
    correction *= 1.0 - beta_2
    correction *= direction
    new_v = previous_v - correction
    return _adaptive_finish(params, x, new_m, new_v, eta, tau)


# ------------------------------------------------------------------- robust aggregation


def coordinate_median(stacked: NDArray[np.floating]) -> NDArray[np.floating]:
    """Coordinate-wise median over axis 0 of ``(num_updates, ...)`` stacked updates.

    With an even number of updates each coordinate is the mean of its two middle values.

    >>> coordinate_median(np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0]]))
    array([2., 0.])
    """
    values = _stacked("stacked", stacked)
    return np.asarray(np.median(values, axis=0), dtype=values.dtype)


def trimmed_mean(stacked: NDArray[np.floating], *, beta: float) -> NDArray[np.floating]:
    """Coordinate-wise ``beta``-trimmed mean over axis 0 of stacked updates.

    Per coordinate, the ``floor(beta * n)`` largest and the ``floor(beta * n)`` smallest
    of the ``n`` values are dropped and the rest averaged (``0 <= beta < 0.5``; at
    least one value must remain). Uses a partial partition, not a full sort.

    >>> trimmed_mean(np.array([[1.0], [2.0], [3.0], [4.0], [100.0]]), beta=0.2)
    array([3.])
    """
    values = _stacked("stacked", stacked)
    fraction = _hyper("beta", beta)
    if not 0.0 <= fraction < 0.5:
        raise ConfigurationError(f"beta must satisfy 0 <= beta < 0.5, got {beta!r}")
    n = values.shape[0]
    trim = math.floor(fraction * n + 1e-9)  # tolerate 0.29 * 100 == 28.999...
    if n - 2 * trim < 1:
        raise ConfigurationError(f"beta={beta} trims all {n} updates; at least one must remain")
    if trim == 0:
        return np.asarray(values.mean(axis=0), dtype=values.dtype)
    kept = np.partition(values, sorted({trim, n - trim - 1}), axis=0)[trim : n - trim]
    return np.asarray(kept.mean(axis=0), dtype=values.dtype)


def pairwise_squared_distances(stacked: NDArray[np.floating]) -> NDArray[np.float64]:
    """The ``(n, n)`` matrix of squared Euclidean distances between stacked updates.

    Computed in float64 from explicit differences (no Gram-matrix cancellation), with
    one scratch row of memory. Squared distances add up over coordinates, so the
    streaming layer may sum the matrices of successive slices to get the whole
    model's matrix. The result is exactly symmetric with a zero diagonal.

    >>> pairwise_squared_distances(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))
    array([[ 0., 25.,  1.],
           [25.,  0., 18.],
           [ 1., 18.,  0.]])
    """
    values = _stacked("stacked", stacked)
    n = values.shape[0]
    rows = values.reshape(n, -1)
    distances = np.zeros((n, n), dtype=np.float64)
    scratch = np.empty(rows.shape[1], dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            np.subtract(rows[j], rows[i], out=scratch, dtype=np.float64)
            distances[i, j] = distances[j, i] = float(np.dot(scratch, scratch))
    return distances


def krum_minimum_updates(num_byzantine: int) -> int:
    """The fewest updates Krum can score with ``f = num_byzantine`` hostile ones: ``2f + 3``."""
    try:
        f = operator.index(num_byzantine)
    except TypeError as error:
        raise ConfigurationError(f"num_byzantine must be an integer, got {num_byzantine!r}") from error
    if f < 0:
        raise ConfigurationError(f"num_byzantine must be >= 0, got {f}")
    return 2 * f + 3


def _krum_neighbours(n: int, num_byzantine: int) -> int:
    """How many nearest neighbours Krum sums: ``n - f - 2``, after checking ``n >= 2f + 3``."""
    minimum = krum_minimum_updates(num_byzantine)
    if n < minimum:
        raise ConfigurationError(
            f"Krum with num_byzantine={num_byzantine} needs at least 2f + 3 = {minimum} updates, got {n}"
        )
    return n - num_byzantine - 2


def krum_scores(squared_distances: NDArray[np.floating], *, num_byzantine: int) -> NDArray[np.float64]:
    """Krum score of each update: the sum of its ``n - f - 2`` smallest squared
    distances to the *other* updates (``f = num_byzantine``; requires ``n >= 2f + 3``).

    >>> d = pairwise_squared_distances(np.array([[0.0], [1.0], [2.0], [3.0], [100.0]]))
    >>> krum_scores(d, num_byzantine=1)
    array([5.0000e+00, 2.0000e+00, 2.0000e+00, 5.0000e+00, 1.9013e+04])
    """
    distances = _square_matrix("squared_distances", squared_distances)
    neighbours = _krum_neighbours(distances.shape[0], num_byzantine)
    np.fill_diagonal(distances, np.inf)  # never one's own neighbour (n - f - 2 <= n - 1)
    nearest = np.partition(distances, neighbours - 1, axis=1)[:, :neighbours]
    scores: NDArray[np.float64] = nearest.sum(axis=1)
    return scores


def krum_select(
    squared_distances: NDArray[np.floating], *, num_byzantine: int, num_selected: int = 1
) -> NDArray[np.intp]:
    """Indices of the ``num_selected`` updates with the lowest Krum scores, best first.

    Ties are broken by the lowest index, so the selection is deterministic.
    ``num_selected=1`` is Krum (the aggregate is the selected update itself);
    ``num_selected > 1`` is Multi-Krum, whose aggregate is, as in Blanchard et al.,
    the plain *unweighted* mean of the selected updates (example counts are ignored).

    >>> d = pairwise_squared_distances(np.array([[0.0], [1.0], [2.0], [3.0], [100.0]]))
    >>> krum_select(d, num_byzantine=1)
    array([1])
    >>> krum_select(d, num_byzantine=1, num_selected=3)
    array([1, 2, 0])
    """
    scores = krum_scores(squared_distances, num_byzantine=num_byzantine)
    try:
        count = operator.index(num_selected)
    except TypeError as error:
        raise ConfigurationError(f"num_selected must be an integer, got {num_selected!r}") from error
    if not 1 <= count <= scores.size:
        raise ConfigurationError(f"num_selected must be in [1, {scores.size}], got {count}")
    return np.argsort(scores, kind="stable")[:count].astype(np.intp, copy=False)
