"""A model's tensors as one float64 vector in the spec's canonical order, and back.

Secure aggregation (Bonawitz et al., CCS 2017) masks one vector per site; these two
functions are the layout every side agrees on: the simulator, the agent and the round plan.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from federation.errors import InvalidUpdateError
from federation.types import ModelSpec, Weights


def flatten(weights: Mapping[str, NDArray[np.floating]], spec: ModelSpec) -> NDArray[np.float64]:
    """The tensors of ``weights`` in the spec's canonical order, as one float64 vector.

    >>> spec = ModelSpec.from_weights({"a": np.zeros((2, 2)), "b": np.zeros(1)})
    >>> flatten({"b": np.array([5.0]), "a": np.array([[1.0, 2.0], [3.0, 4.0]])}, spec)
    array([1., 2., 3., 4., 5.])
    """
    if set(weights) != set(spec.names):
        raise InvalidUpdateError(f"the weights have tensors {sorted(weights)}, expected {sorted(spec.names)}")
    for tensor in spec.tensors:
        if np.shape(weights[tensor.name]) != tensor.shape:
            raise InvalidUpdateError(
                f"tensor {tensor.name!r} has shape {np.shape(weights[tensor.name])}, expected {tensor.shape}"
            )
    parts = [np.asarray(weights[t.name], dtype=np.float64).ravel() for t in spec.tensors]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def unflatten(vector: NDArray[np.floating], spec: ModelSpec) -> Weights:
    """The float64 tensors of ``spec`` cut from one vector (the inverse of :func:`flatten`).

    >>> spec = ModelSpec.from_weights({"a": np.zeros((2, 2)), "b": np.zeros(1)})
    >>> unflatten(np.arange(5.0), spec)["a"]
    array([[0., 1.],
           [2., 3.]])
    """
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (spec.numel,):
        raise InvalidUpdateError(f"the vector has shape {array.shape}, expected ({spec.numel},)")
    out: Weights = {}
    start = 0
    for tensor in spec.tensors:
        out[tensor.name] = array[start : start + tensor.numel].reshape(tensor.shape)
        start += tensor.numel
    return out
