"""Core value types shared by every part of the federation library."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod

import numpy as np
from numpy.typing import NDArray

from federation.errors import ConfigurationError

#: A model's parameters: tensor name -> array. Insertion order is the canonical order.
Weights = dict[str, NDArray[np.floating]]

#: dtypes a model tensor may have (names as safetensors spells them).
SUPPORTED_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
}


class Task(enum.StrEnum):
    """The learning task of a study."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype (safetensors spelling, e.g. ``"F32"``) of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "F32"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a tensor needs a non-empty name")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ConfigurationError(
                f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {sorted(SUPPORTED_DTYPES)}"
            )
        if any(int(dim) < 0 for dim in self.shape):
            raise ConfigurationError(f"tensor {self.name!r}: negative dimension in {self.shape}")

    @property
    def numel(self) -> int:
        return int(prod(self.shape))

    @property
    def numpy_dtype(self) -> np.dtype:
        return SUPPORTED_DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.numel * self.numpy_dtype.itemsize


@dataclass(frozen=True)
class ModelSpec:
    """The names, shapes and dtypes of a model's tensors, in canonical order."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"duplicate tensor names in model spec: {names}")

    @classmethod
    def from_weights(cls, weights: Mapping[str, NDArray[np.floating]]) -> ModelSpec:
        """The spec that describes ``weights`` exactly."""
        dtype_names = {v: k for k, v in SUPPORTED_DTYPES.items()}
        specs = []
        for name, array in weights.items():
            dtype = np.dtype(array.dtype).newbyteorder("<")
            if dtype not in dtype_names:
                raise ConfigurationError(f"tensor {name!r}: unsupported dtype {array.dtype}")
            specs.append(TensorSpec(name, tuple(int(d) for d in array.shape), dtype_names[dtype]))
        return cls(tuple(specs))

    @classmethod
    def from_json(cls, data: list[dict[str, object]]) -> ModelSpec:
        """Parse ``[{"name": ..., "shape": [...], "dtype": "F32"}, ...]``."""
        try:
            return cls(tuple(_tensor_spec_from_json(item) for item in data))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"malformed model spec: {error}") from error

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.tensors]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def by_name(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.tensors}

    def zeros(self) -> Weights:
        """A zero-filled set of weights with this spec."""
        return {t.name: np.zeros(t.shape, dtype=t.numpy_dtype) for t in self.tensors}


def _tensor_spec_from_json(item: dict[str, object]) -> TensorSpec:
    shape = item["shape"]
    if not isinstance(shape, list | tuple):
        raise TypeError(f"shape must be a list, got {shape!r}")
    return TensorSpec(str(item["name"]), tuple(int(d) for d in shape), str(item.get("dtype", "F32")))


@dataclass(frozen=True)
class ClientUpdate:
    """One silo's contribution to a round: its locally trained weights and how many
    examples it trained on. Metrics are aggregates over the silo's data, never rows."""

    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_examples <= 0:
            raise ConfigurationError(f"num_examples must be positive, got {self.num_examples}")
