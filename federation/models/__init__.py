"""Model adapters: torch, scikit-learn and pretrained text models behind one small interface.

Importing this package loads neither torch nor scikit-learn nor transformers;
:func:`build_model` (and the ``TorchAdapter`` / ``SklearnAdapter`` attributes) import them on
first use. :func:`model_config_from_json` and :func:`initial_weights` need none of them for
text models, whose adapters the control plane initialises with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from federation.errors import ConfigurationError
from federation.models.base import ModelAdapter, ModelConfig, ModelKind, TrainConfig, TrainResult
from federation.models.lora import AdapterAggregation, SiteModelOptions, TextModelConfig, is_text_model
from federation.types import Weights

if TYPE_CHECKING:
    from federation.models.sklearn_models import SklearnAdapter
    from federation.models.torch_models import TorchAdapter

#: A study's model: a small tabular model or a pretrained text model with adapters.
AnyModelConfig = ModelConfig | TextModelConfig

__all__ = [
    "AnyModelConfig",
    "ModelAdapter",
    "ModelConfig",
    "ModelKind",
    "SiteModelOptions",
    "SklearnAdapter",
    "TextModelConfig",
    "TorchAdapter",
    "TrainConfig",
    "TrainResult",
    "adapter_aggregation_of",
    "build_model",
    "initial_weights",
    "model_config_from_json",
]


def model_config_from_json(data: object) -> AnyModelConfig:
    """A stored model config, tabular or text; ConfigurationError saying what is wrong."""
    if isinstance(data, Mapping) and is_text_model(data):
        return TextModelConfig.from_json(data)
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"a model config must be a JSON object, got {type(data).__name__}")
    return ModelConfig.from_json(data)


def adapter_aggregation_of(config: AnyModelConfig) -> AdapterAggregation | None:
    """How the server combines the model's LoRA adapters; None for models without them."""
    return config.lora.aggregation if isinstance(config, TextModelConfig) else None


def initial_weights(config: AnyModelConfig, *, seed: int) -> Weights:
    """A job's first global model: text adapters drawn with numpy (no base model needed),
    other models as their adapter initialises them."""
    if isinstance(config, TextModelConfig):
        return config.initial_weights(seed=seed)
    return build_model(config, seed=seed).get_weights()


def build_model(spec: AnyModelConfig, *, seed: int = 0, site: SiteModelOptions | None = None) -> ModelAdapter:
    """A fresh adapter for ``spec``; ``seed`` fixes the initial weights of torch models
    (scikit-learn models start from zeros). ``site`` says where a text model's base model
    is and which device trains it."""
    if isinstance(spec, TextModelConfig):
        from federation.models.text_models import LoraTextAdapter

        options = site or SiteModelOptions()
        return LoraTextAdapter(
            spec, seed=seed, folders=options.folders, device=options.device, cache_dir=options.cache_dir
        )
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
