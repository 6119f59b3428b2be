"""Model adapters: torch and scikit-learn models behind one small interface.

Importing this package loads neither torch nor scikit-learn; :func:`build_model` (and the
``TorchAdapter`` / ``SklearnAdapter`` attributes) import them on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.errors import ConfigurationError
from federation.models.base import ModelAdapter, ModelConfig, ModelKind, TrainConfig, TrainResult

if TYPE_CHECKING:
    from federation.models.sklearn_models import SklearnAdapter
    from federation.models.torch_models import TorchAdapter

__all__ = [
    "ModelAdapter",
    "ModelConfig",
    "ModelKind",
    "SklearnAdapter",
    "TorchAdapter",
    "TrainConfig",
    "TrainResult",
    "build_model",
]


def build_model(spec: ModelConfig, *, seed: int = 0) -> ModelAdapter:
    """A fresh adapter for ``spec``; ``seed`` fixes the initial weights of torch models
    (scikit-learn models start from zeros)."""
    if not isinstance(spec, ModelConfig):
        raise ConfigurationError(f"build_model needs a ModelConfig, got {type(spec).__name__}")
    if spec.kind.uses_torch:
        from federation.models.torch_models import TorchAdapter

        return TorchAdapter(spec, seed=seed)
    from federation.models.sklearn_models import SklearnAdapter

    return SklearnAdapter(spec, seed=seed)


def __getattr__(name: str) -> object:
    if name == "TorchAdapter":
        from federation.models.torch_models import TorchAdapter

        return TorchAdapter
    if name == "SklearnAdapter":
        from federation.models.sklearn_models import SklearnAdapter

        return SklearnAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
