"""Combining LoRA adapters: what averaging A and B on their own misses, and two exact ways.

Each site i sends the factors of its adapter, ``A_i`` (r x in) and ``B_i`` (out x r); the
layer's change is ``s * B_i @ A_i`` with LoRA's scaling ``s``. With the sites' shares
``c_i`` (summing to 1) the change the federation means is ``sum_i c_i B_i A_i``.

* FedIT averages the factors: ``(sum c_i B_i)(sum c_i A_i)``, which differs from the mean of
  the products whenever the sites' A differ. :func:`fedit_error` measures by how much:
  ``||mean(B_i A_i) - mean(B_i) mean(A_i)|| / ||mean(B_i A_i)||`` (Frobenius norms over all
  adapted layers together).
* The SVD method keeps the mean of the products and factorises it back to rank r: by the
  Eckart-Young-Mirsky theorem the truncated SVD is the best rank-r approximation, and the
  rest (the singular values past r) is the residual that :func:`svd_refactor` reports.
* FFA-LoRA freezes A: all sites share it, so ``mean(B_i) A = mean(B_i A)`` exactly.

None of this needs the base model: only the adapter tensors, as numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.errors import ConfigurationError, InvalidUpdateError
from federation.types import Weights

Matrix = NDArray[np.floating]


def product_mean(factors: Sequence[tuple[Matrix, Matrix]], shares: Sequence[float]) -> NDArray[np.float64]:
    """``sum_i c_i B_i @ A_i`` of the sites' ``(A_i, B_i)``, in float64."""
    if len(factors) != len(shares) or not factors:
        raise ConfigurationError("one share per site's adapter, and at least one adapter")
    total = np.zeros((factors[0][1].shape[0], factors[0][0].shape[1]))
    for (a, b), share in zip(factors, shares, strict=True):
        total += share * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))
    return total


@dataclass(frozen=True)
class Refactored:
    """Rank-r factors of a matrix and how much of it they miss."""

    a: NDArray[np.float32]
    b: NDArray[np.float32]
    #: ``||M - B @ A||_F``: the root of the sum of the squared singular values past r.
    residual_norm: float
    #: ``||M||_F``.
    norm: float


def svd_refactor(target: Matrix, rank: int, unused_a: Matrix | None = None) -> Refactored:
    """``B`` (out x r) and ``A`` (r x in) with ``B @ A`` the best rank-r approximation of
    ``target``; the singular values are split evenly (``B = U sqrt(S)``, ``A = sqrt(S) V^T``)
    so neither factor dwarfs the other in the next round's training.

    Where ``target`` has fewer than r non-zero singular values, the spare rows of A are taken
    from ``unused_a`` (the previous global A) with zero columns of B: the product is the same,
    and those rows can still learn (a zero row of A and a zero column of B never would).
    Raises :class:`InvalidUpdateError` if the factors are not finite in float32."""
    matrix = np.asarray(target, np.float64)
    if not np.all(np.isfinite(matrix)):
        raise InvalidUpdateError("the mean product of the sites' adapters is not finite")
    u, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    tolerance = singular[0] * max(matrix.shape) * np.finfo(np.float32).eps if singular.size else 0.0
    kept = min(rank, int(np.count_nonzero(singular > tolerance)))
    root = np.sqrt(singular[:kept])
    b = np.zeros((matrix.shape[0], rank))
    a = np.zeros((rank, matrix.shape[1]))
    b[:, :kept] = u[:, :kept] * root
    a[:kept, :] = root[:, None] * vt[:kept, :]
    if unused_a is not None:
        a[kept:, :] = np.asarray(unused_a, np.float64)[kept:, :]
    with np.errstate(over="ignore"):  # an overflow is refused just below
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
    factors = Refactored(
        a=a32,
        b=b32,
        residual_norm=float(np.sqrt(np.sum(singular[kept:] ** 2))),
        norm=float(np.sqrt(np.sum(singular**2))),
    )
    if not (np.all(np.isfinite(factors.a)) and np.all(np.isfinite(factors.b))):
        raise InvalidUpdateError("the refactorised adapters overflow float32")
    return factors


def fedit_error(
    site_weights: Sequence[Weights], shares: Sequence[float], pairs: Sequence[tuple[str, str]]
) -> float:
    """The relative error of FedIT's product of means against the mean of the products,
    over every adapter; 0 when the mean of the products is zero (e.g. all B still zero)."""
    difference, reference = 0.0, 0.0
    for a_name, b_name in pairs:
        factors = [(w[a_name], w[b_name]) for w in site_weights]
        exact = product_mean(factors, shares)
        mean_a, mean_b = _mean([a for a, _ in factors], shares), _mean([b for _, b in factors], shares)
        difference += float(np.sum((exact - mean_b @ mean_a) ** 2))
        reference += float(np.sum(exact**2))
    return math.sqrt(difference / reference) if reference > 0 else 0.0


def _mean(arrays: Sequence[Matrix], shares: Sequence[float]) -> NDArray[np.float64]:
    total = np.zeros(arrays[0].shape)
    for array, share in zip(arrays, shares, strict=True):
        total += share * np.asarray(array, np.float64)
    return total


def svd_aggregate(
    averaged: Weights,
    site_weights: Sequence[Weights],
    shares: Sequence[float],
    pairs: Sequence[tuple[str, str]],
    rank: int,
    global_weights: Weights | None = None,
) -> tuple[Weights, float]:
    """``averaged`` (the strategy's result, e.g. FedAvg's means) with every adapter's A and B
    replaced by the rank-r factors of the mean of the sites' products; and the relative
    residual ``||M - B A|| / ||M||`` over all adapters (0 for a zero mean)."""
    result = dict(averaged)
    residual, reference = 0.0, 0.0
    for a_name, b_name in pairs:
        target = product_mean([(w[a_name], w[b_name]) for w in site_weights], shares)
        factors = svd_refactor(target, rank, None if global_weights is None else global_weights[a_name])
        result[a_name], result[b_name] = factors.a, factors.b
        residual += factors.residual_norm**2
        reference += factors.norm**2
    return result, (math.sqrt(residual / reference) if reference > 0 else 0.0)


def keep_frozen_a(result: Weights, global_weights: Weights, pairs: Sequence[tuple[str, str]]) -> Weights:
    """FFA-LoRA: every A stays the global one, whatever a site sent (it must not train A)."""
    kept = dict(result)
    for a_name, _ in pairs:
        kept[a_name] = np.array(global_weights[a_name], copy=True)
    return kept
