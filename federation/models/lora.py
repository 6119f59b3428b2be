"""Language models with LoRA adapters, described without torch: the base model's pin, the
adapter settings, and the tensors that travel.

A study fine-tunes a pretrained transformer that every site holds on its own disk. Only the
low-rank adapters (Hu et al., "LoRA", ICLR 2022) and, for an encoder, a small
classification head ever leave a site; the base model is never uploaded or stored by the
control plane. So the control plane can check, size and initialise a study's model from
this module alone, with numpy:

* :class:`BaseModelPin` names the base model, the SHA-256 of each of its weight files (an
  agent whose files differ refuses the study, :mod:`federation.models.pins`) and the
  shapes of its linear layers, from which the adapters' shapes follow;
* :class:`LoraSettings` holds rank, alpha, dropout, target modules and the way the server
  combines adapters (:class:`AdapterAggregation`);
* :class:`TextModelConfig` is the study's model: its :meth:`~TextModelConfig.model_spec` is
  the list of tensors on the wire and :meth:`~TextModelConfig.initial_weights` the first
  global model.

Tensor names are the base model's module paths: ``<path>.lora_A.weight`` of shape
``(rank, in)``, ``<path>.lora_B.weight`` of shape ``(out, rank)``, and for an encoder
``classifier.weight`` ``(outputs, hidden)`` and ``classifier.bias`` ``(outputs,)``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from federation.errors import ConfigurationError
from federation.types import ModelSpec, Task, TensorSpec, Weights

#: Suffixes of the two factors of one adapter, as the tensors are named on the wire.
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
#: The encoder's classification head.
HEAD_WEIGHT, HEAD_BIAS = "classifier.weight", "classifier.bias"
_FACTOR_SUFFIXES = (LORA_A_SUFFIX, LORA_B_SUFFIX)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_RANK = 256
MAX_TOKENS_LIMIT = 8192


class BaseModelFamily(enum.StrEnum):
    """How a base model is used."""

    #: A bidirectional encoder (BERT-like): mean pooling and a classification head.
    ENCODER = "encoder"
    #: A causal language model: classes are scored as answer tokens after a prompt.
    CAUSAL_LM = "causal_lm"


class AdapterAggregation(enum.StrEnum):
    """How the server combines the sites' adapters (each site sends its A and B)."""

    #: FedIT (Zhang et al., ICASSP 2024): the example-weighted mean of A and of B on their
    #: own. Simple and compatible with everything, but mean(B)·mean(A) != mean(B·A).
    FEDIT = "fedit"
    #: The example-weighted mean of the products B_i·A_i, re-factorised to rank r by a
    #: truncated SVD (the best rank-r approximation, Eckart-Young); the residual's relative
    #: norm is reported each round.
    SVD = "svd"
    #: FFA-LoRA (Sun et al., ICLR 2024): A stays frozen at its initial value and only B is
    #: trained and averaged, so the mean of the products is exact and DP noise only touches B.
    FFA = "ffa"

    @property
    def label(self) -> str:
        return _AGGREGATION_LABELS[self]


_AGGREGATION_LABELS = {
    AdapterAggregation.FEDIT: "FedIT: mean of A and of B (simple, approximate)",
    AdapterAggregation.SVD: "Mean of the products B·A, refactorised by SVD (exact up to rank r)",
    AdapterAggregation.FFA: "FFA-LoRA: A frozen, only B trained (exact; best with DP)",
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BaseModelPin:
    """A base model pinned by name and by the SHA-256 of each weight file.

    ``linear_layers`` maps every linear layer's module path to ``(in_features,
    out_features)``, so adapter shapes follow without loading the model. ``gguf_file``
    names the file to load when the weights ship as GGUF (transformers dequantizes it).
    Made by ``python -m federation.models.pin`` at a site that has the model.
    """

    name: str
    family: BaseModelFamily
    files: Mapping[str, str]
    hidden_size: int
    linear_layers: Mapping[str, tuple[int, int]]
    #: How many numbers the base model holds: what a full-model upload would carry.
    num_parameters: int
    gguf_file: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 200 or self.name != self.name.strip():
            raise ConfigurationError(f"a base model needs a name of 1 to 200 characters, got {self.name!r}")
        try:
            object.__setattr__(self, "family", BaseModelFamily(self.family))
        except ValueError:
            choices = ", ".join(f.value for f in BaseModelFamily)
            raise ConfigurationError(f"base model family {self.family!r} is not one of {choices}") from None
        object.__setattr__(self, "files", MappingProxyType(_checked_files(self.files)))
        if not _is_int(self.hidden_size) or self.hidden_size < 1:
            raise ConfigurationError(f"hidden_size must be a positive integer, got {self.hidden_size!r}")
        object.__setattr__(self, "linear_layers", MappingProxyType(_checked_layers(self.linear_layers)))
        if not _is_int(self.num_parameters) or self.num_parameters < 1:
            raise ConfigurationError(
                f"num_parameters must be a positive integer, got {self.num_parameters!r}"
            )
        if self.gguf_file is not None and self.gguf_file not in self.files:
            raise ConfigurationError(f"gguf_file {self.gguf_file!r} is not one of the pinned files")
        if self.gguf_file is not None and self.family is not BaseModelFamily.CAUSAL_LM:
            raise ConfigurationError("gguf_file is read for causal language models only")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "family": self.family.value,
            "files": dict(self.files),
            "hidden_size": self.hidden_size,
            "linear_layers": {path: list(shape) for path, shape in self.linear_layers.items()},
            "num_parameters": self.num_parameters,
        }
        if self.gguf_file is not None:
            out["gguf_file"] = self.gguf_file
        return out

    @classmethod
    def from_json(cls, data: object) -> BaseModelPin:
        mapping = _object(data, "a base model pin")
        _refuse_unknown(mapping, _PIN_FIELDS, "base model")
        layers = mapping.get("linear_layers")
        if not isinstance(layers, Mapping):
            raise ConfigurationError("a base model pin needs linear_layers: {module path: [in, out]}")
        return cls(
            name=mapping.get("name"),  # type: ignore[arg-type]  # checked in __post_init__
            family=mapping.get("family"),  # type: ignore[arg-type]
            files=_object(mapping.get("files"), "the pinned files"),  # type: ignore[arg-type]
            hidden_size=mapping.get("hidden_size"),  # type: ignore[arg-type]
            linear_layers={path: _pair(path, shape) for path, shape in layers.items()},
            num_parameters=mapping.get("num_parameters"),  # type: ignore[arg-type]
            gguf_file=mapping.get("gguf_file"),  # type: ignore[arg-type]
        )


_PIN_FIELDS = {"name", "family", "files", "hidden_size", "linear_layers", "num_parameters", "gguf_file"}


def _checked_files(files: object) -> dict[str, str]:
    if not isinstance(files, Mapping) or not files:
        raise ConfigurationError("a base model pins at least one weight file: {file name: sha256}")
    checked = {}
    for name, digest in files.items():
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
            raise ConfigurationError(
                f"pinned file name {name!r} must be a plain file name in the model folder"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ConfigurationError(
                f"pinned file {name!r}: expected a lowercase hex SHA-256, got {digest!r}"
            )
        checked[name] = digest
    return dict(sorted(checked.items()))


def _checked_layers(layers: object) -> dict[str, tuple[int, int]]:
    if not isinstance(layers, Mapping) or not layers:
        raise ConfigurationError("a base model pin lists its linear layers")
    checked = {}
    for path, shape in layers.items():
        if not isinstance(path, str) or not _MODULE_PATH.fullmatch(path):
            raise ConfigurationError(f"linear layer path {path!r} is not a module path")
        checked[path] = _pair(path, shape)
    return checked


def _pair(path: str, shape: object) -> tuple[int, int]:
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 2
        or not all(_is_int(value) and value >= 1 for value in shape)
    ):
        raise ConfigurationError(
            f"linear layer {path!r}: expected [in_features, out_features], got {shape!r}"
        )
    return int(shape[0]), int(shape[1])


@dataclass(frozen=True)
class LoraSettings:
    """The adapters every site trains: rank r, scaling alpha/r, dropout, the linear layers
    they attach to (by the last part of the module path, e.g. ``query``) and the server's
    way of combining them."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "key", "value")
    aggregation: AdapterAggregation = AdapterAggregation.FEDIT

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or not 1 <= self.rank <= MAX_RANK:
            raise ConfigurationError(f"LoRA rank must be an integer in 1..{MAX_RANK}, got {self.rank!r}")
        if not _real(self.alpha) or not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigurationError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        if not _real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigurationError(f"LoRA dropout must lie in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigurationError("LoRA target_modules must be a non-empty list of module names")
        modules = tuple(self.target_modules)
        for module in modules:
            if not isinstance(module, str) or not _MODULE_NAME.fullmatch(module):
                raise ConfigurationError(
                    f"LoRA target module {module!r} must be a module name such as 'query'"
                )
        if len(set(modules)) != len(modules):
            raise ConfigurationError("a LoRA target module is listed twice")
        object.__setattr__(self, "target_modules", modules)
        try:
            object.__setattr__(self, "aggregation", AdapterAggregation(self.aggregation))
        except ValueError:
            choices = ", ".join(a.value for a in AdapterAggregation)
            raise ConfigurationError(
                f"adapter aggregation {self.aggregation!r} is not one of {choices}"
            ) from None

    def to_json(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "aggregation": self.aggregation.value,
        }

    @classmethod
    def from_json(cls, data: object) -> LoraSettings:
        mapping = _object(data, "LoRA settings")
        _refuse_unknown(mapping, {"rank", "alpha", "dropout", "target_modules", "aggregation"}, "LoRA")
        defaults = cls()
        modules = mapping.get("target_modules", list(defaults.target_modules))
        if not isinstance(modules, list | tuple):
            raise ConfigurationError(f"LoRA target_modules must be a list of module names, got {modules!r}")
        return cls(
            rank=mapping.get("rank", defaults.rank),  # type: ignore[arg-type]  # checked
            alpha=mapping.get("alpha", defaults.alpha),  # type: ignore[arg-type]
            dropout=mapping.get("dropout", defaults.dropout),  # type: ignore[arg-type]
            target_modules=tuple(modules),
            aggregation=mapping.get("aggregation", defaults.aggregation),  # type: ignore[arg-type]
        )


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TextModelKind(enum.StrEnum):
    """The text model families a study can use."""

    #: An encoder with LoRA adapters, mean pooling and a classification head.
    LORA_ENCODER = "lora_encoder"
    #: A causal language model with LoRA adapters that scores the class names as answers.
    LORA_CAUSAL_LM = "lora_causal_lm"

    @property
    def family(self) -> BaseModelFamily:
        return BaseModelFamily.ENCODER if self is TextModelKind.LORA_ENCODER else BaseModelFamily.CAUSAL_LM


_TEXT_CONFIG_FIELDS = {"kind", "task", "num_classes", "class_names", "base_model", "lora", "max_tokens"}


@dataclass(frozen=True)
class TextModelConfig:
    """A study's text classifier: a pinned base model, its adapters and its classes.

    ``class_names`` are the study's classes in label order: a causal model scores them as
    answers, an encoder only reports them. ``max_tokens`` truncates every text.
    """

    kind: TextModelKind
    task: Task
    num_classes: int
    class_names: tuple[str, ...]
    base_model: BaseModelPin
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_tokens: int = 128

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TextModelKind(self.kind))
            object.__setattr__(self, "task", Task(self.task))
        except ValueError as error:
            raise ConfigurationError(f"text model: {error}") from None
        self._check_classes()
        if self.base_model.family is not self.kind.family:
            raise ConfigurationError(
                f"a {self.kind.value} model needs a {self.kind.family.value} base model; "
                f"{self.base_model.name} is a {self.base_model.family.value}"
            )
        if not _is_int(self.max_tokens) or not 8 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ConfigurationError(
                f"max_tokens must be an integer in 8..{MAX_TOKENS_LIMIT}, got {self.max_tokens!r}"
            )
        missing = [m for m in self.lora.target_modules if not self.target_layers_named(m)]
        if missing:
            raise ConfigurationError(
                f"LoRA target modules {missing} match no linear layer of {self.base_model.name}; "
                f"its layers end in {sorted({p.rsplit('.', 1)[-1] for p in self.base_model.linear_layers})}"
            )

    def _check_classes(self) -> None:
        if self.task is Task.REGRESSION:
            raise ConfigurationError("text models classify: the task must be binary or multiclass")
        if not _is_int(self.num_classes) or (self.task is Task.BINARY and self.num_classes != 2):
            raise ConfigurationError(f"a binary text model has 2 classes, got {self.num_classes!r}")
        if self.task is Task.MULTICLASS and self.num_classes < 3:
            raise ConfigurationError(
                f"a multiclass text model has at least 3 classes, got {self.num_classes}"
            )
        names = tuple(self.class_names)
        if len(names) != self.num_classes or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigurationError(f"class_names must name the {self.num_classes} classes in label order")
        if len(set(names)) != len(names):
            raise ConfigurationError("a class name is listed twice")
        object.__setattr__(self, "class_names", names)

    # --- what travels --------------------------------------------------------------------

    @property
    def num_outputs(self) -> int:
        """The head's width: one logit for a binary task, one per class otherwise."""
        return 1 if self.task is Task.BINARY else self.num_classes

    def target_layers_named(self, module: str) -> list[str]:
        return [path for path in self.base_model.linear_layers if path.rsplit(".", 1)[-1] == module]

    def target_layers(self) -> list[str]:
        """The module paths that carry an adapter, in the base model's order."""
        modules = set(self.lora.target_modules)
        return [path for path in self.base_model.linear_layers if path.rsplit(".", 1)[-1] in modules]

    def model_spec(self) -> ModelSpec:
        """The tensors on the wire: every adapter's A and B, then the head (encoders)."""
        rank, tensors = self.lora.rank, []
        for path in self.target_layers():
            inputs, outputs = self.base_model.linear_layers[path]
            tensors.append(TensorSpec(path + LORA_A_SUFFIX, (rank, inputs)))
            tensors.append(TensorSpec(path + LORA_B_SUFFIX, (outputs, rank)))
        if self.kind is TextModelKind.LORA_ENCODER:
            tensors.append(TensorSpec(HEAD_WEIGHT, (self.num_outputs, self.base_model.hidden_size)))
            tensors.append(TensorSpec(HEAD_BIAS, (self.num_outputs,)))
        return ModelSpec(tuple(tensors))

    @property
    def num_parameters(self) -> int:
        """Numbers that travel per update: adapters and head, never the base model."""
        return self.model_spec().numel

    @property
    def full_model_bytes(self) -> int:
        """The whole model in float32 (base model and head): what full fine-tuning would send."""
        head = sum(t.numel for t in self.model_spec().tensors if not t.name.endswith(_FACTOR_SUFFIXES))
        return 4 * (self.base_model.num_parameters + head)

    def initial_weights(self, *, seed: int) -> Weights:
        """The first global model, drawn with numpy so the control plane needs no torch.

        As LoRA starts: A uniform in ±1/sqrt(in) (torch's default for a linear layer, which
        peft's Kaiming-uniform init amounts to), B zero so the adapted model starts as the
        base model; the head uniform in ±1/sqrt(hidden), its bias zero.
        """
        rng = np.random.default_rng(seed)
        weights: Weights = {}
        for tensor in self.model_spec().tensors:
            if tensor.name.endswith(LORA_A_SUFFIX) or tensor.name == HEAD_WEIGHT:
                bound = 1.0 / math.sqrt(tensor.shape[1])
                weights[tensor.name] = rng.uniform(-bound, bound, tensor.shape).astype(np.float32)
            else:
                weights[tensor.name] = np.zeros(tensor.shape, np.float32)
        return weights

    # --- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "task": self.task.value,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "base_model": self.base_model.to_json(),
            "lora": self.lora.to_json(),
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: object) -> TextModelConfig:
        mapping = _object(data, "a text model config")
        _refuse_unknown(mapping, _TEXT_CONFIG_FIELDS, "text model config")
        names = mapping.get("class_names")
        if not isinstance(names, list | tuple):
            raise ConfigurationError("a text model config needs class_names: the classes in label order")
        return cls(
            kind=mapping.get("kind"),  # type: ignore[arg-type]  # checked in __post_init__
            task=mapping.get("task"),  # type: ignore[arg-type]
            num_classes=mapping.get("num_classes"),  # type: ignore[arg-type]
            class_names=tuple(names),
            base_model=BaseModelPin.from_json(mapping.get("base_model")),
            lora=LoraSettings.from_json(mapping.get("lora", {})),
            max_tokens=mapping.get("max_tokens", 128),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class SiteModelOptions:
    """What a site decides about a text model: where its base models are (by name; built-in
    models need no entry), the device (auto, cpu or cuda) and where to cache dequantized
    weights."""

    folders: Mapping[str, Path] = field(default_factory=dict)
    device: str = "auto"
    cache_dir: Path | None = None


def dp_sgd_refusal(config: TextModelConfig) -> str | None:
    """Why sample-level DP (DP-SGD) cannot train this text model, or None."""
    if config.kind is TextModelKind.LORA_CAUSAL_LM:
        return (
            "sample-level DP (DP-SGD) is available for text encoders, not for causal language models "
            "(Opacus's per-example gradients do not survive gradient checkpointing): use client-level DP"
        )
    return None


def is_text_model(data: Mapping[str, object]) -> bool:
    """Whether a stored model config (JSON) describes a text model."""
    return data.get("kind") in {kind.value for kind in TextModelKind}


def lora_pairs(spec: ModelSpec) -> list[tuple[str, str]]:
    """The (A, B) tensor names of every adapter in ``spec``, in order."""
    names = set(spec.names)
    pairs = []
    for name in spec.names:
        if name.endswith(LORA_A_SUFFIX):
            partner = name[: -len(LORA_A_SUFFIX)] + LORA_B_SUFFIX
            if partner not in names:
                raise ConfigurationError(f"adapter {name!r} has no {LORA_B_SUFFIX} partner")
            pairs.append((name, partner))
    return pairs


def _object(data: object, what: str) -> Mapping[str, object]:
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _refuse_unknown(mapping: Mapping[str, object], allowed: set[str], what: str) -> None:
    unknown = sorted(str(key) for key in set(mapping) - allowed)
    if unknown:
        raise ConfigurationError(f"unknown {what} fields: {unknown}")
