"""Pretrained transformers with LoRA adapters behind :class:`ModelAdapter` (torch,
transformers and peft; the rest of federation describes these models without them,
:mod:`federation.models.lora`).

* An **encoder** (e.g. all-MiniLM-L6-v2) is mean-pooled over its tokens and topped by a
  linear classification head.
* A **causal language model** (e.g. SmolLM2-135M-Instruct) reads the text and a question
  listing the classes, and the classes are scored by the logit of their first answer token
  (``logits_to_keep=1``: only the last position's logits are computed). Its perplexity on
  held-out text is :meth:`LoraTextAdapter.perplexity`.

The base model is found on the site's disk and checked against the study's pin
(:mod:`federation.models.pins`) before it is loaded; the libraries run offline, so a missing
file fails at once instead of reaching for a model hub. A GGUF model is dequantized once and
the float weights kept in a cache folder keyed by the GGUF file's digest. The loaded,
adapted model is kept per process: a second adapter for the same study, or the next round,
reuses it and only swaps the adapter weights.

Training is AdamW on the adapters (and the head), shuffled and seeded by
:attr:`TrainConfig.seed`, for ``epochs`` passes or exactly ``max_steps`` steps. Under FFA-LoRA the
A factors are frozen. Only adapter and head tensors ever leave :meth:`get_weights`.
"""

from __future__ import annotations

import os

# Before transformers is imported: never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import contextlib
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from federation.errors import ConfigurationError, DataSchemaError
from federation.models.base import (
    TrainConfig,
    TrainResult,
    example_weights,
    validate_labels,
    validate_weights,
)
from federation.models.lora import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    LORA_A_SUFFIX,
    AdapterAggregation,
    BaseModelFamily,
    BaseModelPin,
    TextModelConfig,
    TextModelKind,
    dp_sgd_refusal,
)
from federation.models.pins import locate_base_model, verify_base_model
from federation.models.torch_models import weighted_mean
from federation.types import ModelSpec, Task, Weights

transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

_T = TypeVar("_T")

#: Texts per forward pass in predict() and perplexity().
_PREDICT_BATCH = 32


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU."""
    if device not in {"auto", "cpu", "cuda"}:
        raise ConfigurationError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device cuda was asked for, but torch sees no CUDA device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# --- loading the base model once per process ------------------------------------------------


@dataclass
class _Loaded:
    """One adapted model, kept for the process: the network and its tokenizer. Adapters
    share it; ``owner`` is the adapter whose weights the network holds now."""

    network: nn.Module
    tokenizer: PreTrainedTokenizerBase
    parameters: dict[str, nn.Parameter]
    owner: object | None = None


_LOADED: dict[tuple[str, ...], _Loaded] = {}


def forget_loaded() -> None:
    """Drop the process's loaded model (after it was changed in place, e.g. merged)."""
    _LOADED.clear()


def _load(config: TextModelConfig, folder: Path, device: torch.device, cache_dir: Path | None) -> _Loaded:
    """The adapted model for ``config``, loaded once; one model is kept at a time (a
    second study's model replaces the first). The pin is checked on every call: hashes are
    remembered per file, so a check after the first costs a stat of each file."""
    verify_base_model(config.base_model, folder)
    key = (json.dumps(config.to_json(), sort_keys=True), str(Path(folder).resolve()), str(device))
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()
    base, tokenizer = _load_base(config.base_model, folder, device, cache_dir)
    network = _adapted_network(config, base).to(device)
    network.eval()  # dropout off until fit() turns training on
    loaded = _Loaded(network, tokenizer, _wire_parameters(config, network))
    _LOADED[key] = loaded
    return loaded


def _load_base(
    pin: BaseModelPin, folder: Path, device: torch.device, cache_dir: Path | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if pin.family is BaseModelFamily.ENCODER:
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return model, tokenizer
    source = _dequantized(pin, folder, cache_dir) if pin.gguf_file else folder
    model = AutoModelForCausalLM.from_pretrained(
        source, local_files_only=True, use_safetensors=True, dtype=dtype
    )
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return model, tokenizer


def _dequantized(pin: BaseModelPin, folder: Path, cache_dir: Path | None) -> Path:
    """A folder of float weights made from the GGUF file once (about 20 s), then reused."""
    assert pin.gguf_file is not None
    root = cache_dir or Path(os.environ.get("FEDHEALTH_MODEL_CACHE", Path.home() / ".cache" / "fedhealth"))
    # The folder's name says what it holds: float32 weights of the GGUF file with this digest.
    target = Path(root) / "dequantized" / f"{pin.files[pin.gguf_file]}-float32"
    if _cache_intact(target):
        return target
    shutil.rmtree(target, ignore_errors=True)  # damaged or changed: made again
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=pin.gguf_file, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=pin.gguf_file, local_files_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        # save_pretrained refuses a model loaded from GGUF; its float weights are plain tensors.
        save_model(model, str(staging / "model.safetensors"))
        _save_float_config(model.config, staging)
        tokenizer.save_pretrained(staging)
        _write_manifest(staging)
        staging.rename(target)  # whole or not at all: a crash leaves only a staging folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


_MANIFEST = "fedhealth-digests.json"


def _write_manifest(folder: Path) -> None:
    """The digest of every file written, checked before the cache is used again."""
    from federation.models.pins import file_sha256

    digests = {path.name: file_sha256(path) for path in sorted(folder.iterdir()) if path.is_file()}
    (folder / _MANIFEST).write_text(json.dumps(digests, indent=1), encoding="utf-8")


def _cache_intact(folder: Path) -> bool:
    from federation.models.pins import file_sha256

    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return False
    digests = json.loads(manifest.read_text(encoding="utf-8"))
    return all(
        (folder / name).is_file() and file_sha256(folder / name) == digest for name, digest in digests.items()
    )


def _save_float_config(config: Any, folder: Path) -> None:
    """The model's config without the GGUF quantization note: the saved weights are plain
    floats, and a model that believes itself quantized refuses to be saved (export)."""
    config.save_pretrained(folder)
    path = folder / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class _EncoderClassifier(nn.Module):
    """Mean of the encoder's token states (padding left out), then a linear head."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_outputs: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.classifier(pooled.to(self.classifier.weight.dtype))
        return logits


def _adapted_network(config: TextModelConfig, base: nn.Module) -> nn.Module:
    if config.kind is TextModelKind.LORA_CAUSAL_LM:
        # Recompute activations in the backward pass: a 135M-parameter model then trains in
        # a few GB. Non-reentrant checkpointing needs no gradient on the frozen inputs.
        base.config.use_cache = False  # type: ignore[union-attr]
        checkpointing = {"use_reentrant": False}
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)  # type: ignore[operator]
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,  # type: ignore[arg-type]  # peft takes any number; it divides by r
        lora_dropout=config.lora.dropout,
        target_modules=config.target_layers(),
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about module names it will not touch
        adapted = get_peft_model(base, lora)
    if config.kind is TextModelKind.LORA_ENCODER:
        return _EncoderClassifier(adapted, config.base_model.hidden_size, config.num_outputs)
    return adapted


def _wire_parameters(config: TextModelConfig, network: nn.Module) -> dict[str, nn.Parameter]:
    """The network's parameters under their names on the wire, in the spec's order."""
    found: dict[str, nn.Parameter] = {}
    for name, parameter in network.named_parameters():
        if ".lora_" in name:
            found[_wire_name(name)] = parameter
        elif name in {HEAD_WEIGHT, HEAD_BIAS}:
            found[name] = parameter
    spec = config.model_spec()
    missing = [tensor.name for tensor in spec.tensors if tensor.name not in found]
    if missing or len(found) != len(spec.tensors):
        raise ConfigurationError(
            f"the adapted {config.base_model.name} does not match its pin: missing {missing[:3]}, "
            f"{len(found)} adapter tensors against {len(spec.tensors)} pinned"
        )
    for tensor in spec.tensors:
        if tuple(found[tensor.name].shape) != tensor.shape:
            raise ConfigurationError(
                f"adapter {tensor.name}: the model has shape {tuple(found[tensor.name].shape)}, "
                f"the pin says {tensor.shape}"
            )
    return {tensor.name: found[tensor.name] for tensor in spec.tensors}


def _wire_name(name: str) -> str:
    """peft's ``[encoder.]base_model.model.<path>.lora_A.default.weight`` -> ``<path>.lora_A.weight``."""
    for prefix in ("encoder.base_model.model.", "base_model.model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name.replace(".default.", ".")


# --- the adapter --------------------------------------------------------------------------------


class LoraTextAdapter:
    """A pinned transformer with LoRA adapters, as a :class:`ModelAdapter` over texts.

    ``features`` are texts (a sequence or object array of ``str``); labels are class indices.
    ``folders`` maps base model names to the site's folders (built-in models need none).
    """

    def __init__(
        self,
        config: TextModelConfig,
        *,
        seed: int = 0,
        folders: Mapping[str, Path] | None = None,
        device: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        folder = locate_base_model(config.base_model, folders)
        self._loaded = _load(config, folder, self.device, cache_dir)
        self._spec = config.model_spec()
        self._answer_tokens = self._class_tokens() if config.kind is TextModelKind.LORA_CAUSAL_LM else None
        self._weights: Weights = {}
        self.set_weights(config.initial_weights(seed=seed))

    @property
    def network(self) -> nn.Module:
        """The adapted network holding this adapter's weights (for inspection and export)."""
        self._activate()
        return self._loaded.network

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded.tokenizer

    # --- weights -------------------------------------------------------------------------
    # Each adapter keeps its own weights; the process's one network holds those of the
    # adapter that used it last, and another adapter's weights are copied in before use.

    def model_spec(self) -> ModelSpec:
        return self._spec

    def get_weights(self) -> Weights:
        return {name: array.copy() for name, array in self._weights.items()}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        self._weights = validate_weights(self._spec, weights)
        if self._loaded.owner is self:
            self._loaded.owner = None  # copied in at the next use

    def _activate(self) -> None:
        if self._loaded.owner is self:
            return
        with torch.no_grad():
            for name, parameter in self._loaded.parameters.items():
                parameter.copy_(torch.from_numpy(self._weights[name]).to(parameter.device, parameter.dtype))
        self._loaded.owner = self

    def _keep_trained(self) -> None:
        self._weights = {
            name: parameter.detach().float().cpu().numpy().astype(np.float32, copy=True)
            for name, parameter in self._loaded.parameters.items()
        }

    # --- training ----------------------------------------------------------------------------

    def fit(
        self, features: Sequence[str] | NDArray[Any], labels: NDArray[Any], config: TrainConfig
    ) -> TrainResult:
        texts = _texts(features)
        targets = validate_labels(_label_view(self.config), labels, len(texts))
        self._activate()
        network = self._loaded.network
        trainable = self._trainable()
        network.train()
        try:
            with torch.random.fork_rng(devices=self._cuda_devices()):
                torch.manual_seed(config.seed)  # dropout's draws, without touching the caller's RNG
                if config.uses_dp_sgd:
                    return self._fit_dp_sgd(texts, targets, config, trainable)
                return self._fit_adamw(texts, targets, config, trainable)
        finally:
            network.eval()
            self._freeze_all()
            self._keep_trained()

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _fit_adamw(
        self, texts: list[str], targets: NDArray[Any], config: TrainConfig, trainable: list[nn.Parameter]
    ) -> TrainResult:
        optimizer = torch.optim.AdamW(trainable, lr=float(config.learning_rate), weight_decay=0.0)
        order = torch.Generator().manual_seed(config.seed)
        weights = example_weights(self.config.task, targets, self.config.num_classes, config)
        losses, correct, seen = [], 0, 0
        for batch in _capped(_shuffled_batches(len(texts), config, order), config.max_steps):
            optimizer.zero_grad(set_to_none=True)
            logits = self._logits([texts[i] for i in batch])
            y = torch.from_numpy(targets[batch]).to(self.device)
            loss = self._loss(logits, y, None if weights is None else torch.from_numpy(weights[batch]))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            correct += int((self._predicted(logits.detach()) == y).sum())
            seen += len(batch)
        metrics = {
            "loss": float(np.mean(losses)),
            "accuracy": correct / max(seen, 1),
            "steps": float(len(losses)),
        }
        return TrainResult(num_examples=len(texts), metrics=metrics)

    def _fit_dp_sgd(
        self, texts: list[str], targets: NDArray[Any], config: TrainConfig, trainable: list[nn.Parameter]
    ) -> TrainResult:
        """DP-SGD (Abadi et al., CCS 2016) with Opacus on the trainable parameters only:
        Poisson-sampled batches, each example's gradient clipped to ``dp_clipping_norm``,
        Gaussian noise on their sum; the steps taken go to the site's privacy ledger."""
        from federation.models.torch_models import privacy_spend

        reason = dp_sgd_refusal(self.config)
        if reason is not None:
            raise ConfigurationError(reason)
        optimizer = torch.optim.AdamW(trainable, lr=float(config.learning_rate), weight_decay=0.0)
        with warnings.catch_warnings():
            # Seeded from the OS CSPRNG at real sites (TrainConfig); frozen inputs fire hooks.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            engine, private, private_optimizer, loader = self._private(len(texts), targets, optimizer, config)
            try:
                losses = self._dp_steps(texts, loader, private, private_optimizer, config, trainable)
            finally:
                private.cleanup()
        spend = privacy_spend(engine.accountant.history)
        metrics = {
            "loss": float(np.mean(losses)) if losses else 0.0,
            "steps": float(spend.steps),
            "dp_steps": float(spend.steps),
            "dp_sampling_rate": spend.sampling_rate,
        }
        return TrainResult(num_examples=len(texts), metrics=metrics, privacy_spend=spend)

    def _private(
        self, n: int, targets: NDArray[Any], optimizer: torch.optim.Optimizer, config: TrainConfig
    ) -> tuple[Any, Any, Any, DataLoader[Any]]:
        """Opacus's engine, wrapped network, optimizer and Poisson loader over row indices."""
        from opacus import PrivacyEngine  # seconds to import: only DP studies need it

        from federation.models.torch_models import dp_generators

        sampling, noise = dp_generators(config.dp_seed, device=self.device)
        rows = TensorDataset(torch.arange(n), torch.from_numpy(targets))
        engine = PrivacyEngine(accountant="rdp")
        try:
            private, private_optimizer, loader = engine.make_private(
                module=self._loaded.network,
                optimizer=optimizer,
                data_loader=DataLoader(rows, batch_size=config.batch_size, generator=sampling),
                noise_multiplier=config.dp_noise_multiplier,
                max_grad_norm=config.dp_clipping_norm,
                poisson_sampling=True,
                noise_generator=noise,
            )
        except (NotImplementedError, ValueError) as error:
            raise ConfigurationError(f"DP-SGD cannot compute per-example gradients here: {error}") from None
        return engine, private, private_optimizer, loader

    def _dp_steps(
        self,
        texts: list[str],
        loader: DataLoader[Any],
        private: nn.Module,
        optimizer: Any,
        config: TrainConfig,
        trainable: list[nn.Parameter],
    ) -> list[float]:
        losses = []
        for batch, targets in _capped(_passes(loader, config), config.max_steps):
            optimizer.zero_grad(set_to_none=True)
            if len(batch) == 0:
                # An empty Poisson batch still takes its noisy step (and is counted).
                for parameter in trainable:
                    parameter.grad_sample = torch.zeros(  # type: ignore[attr-defined]
                        (0, *parameter.shape), device=parameter.device, dtype=parameter.dtype
                    )
                optimizer.step()
                continue
            loss = self._loss(
                self._logits([texts[i] for i in batch.tolist()], network=private), targets.to(self.device)
            )
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    def _trainable(self) -> list[nn.Parameter]:
        """The adapters and head, less the A factors under FFA-LoRA; everything else frozen."""
        frozen_a = self.config.lora.aggregation is AdapterAggregation.FFA
        trainable = []
        for name, parameter in self._loaded.parameters.items():
            train = not (frozen_a and name.endswith(LORA_A_SUFFIX))
            parameter.requires_grad_(train)
            if train:
                trainable.append(parameter)
        return trainable

    def _freeze_all(self) -> None:
        for parameter in self._loaded.parameters.values():
            parameter.requires_grad_(False)

    def _loss(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        reduction = "mean" if weights is None else "none"
        if self.config.task is Task.BINARY and logits.shape[-1] == 1:
            losses = F.binary_cross_entropy_with_logits(
                logits[:, 0].float(), targets.float(), reduction=reduction
            )
        else:
            losses = F.cross_entropy(logits.float(), targets, reduction=reduction)
        return weighted_mean(losses, weights)

    def _predicted(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=-1)

    # --- prediction --------------------------------------------------------------------------

    def predict(self, features: Sequence[str] | NDArray[Any]) -> NDArray[np.float64]:
        """Binary: P(class 1), shape (n,); multiclass: class probabilities, shape (n, C)."""
        texts = _texts(features, allow_empty=True)
        self._activate()
        self._loaded.network.eval()
        chunks = []
        with torch.inference_mode():
            for begin in range(0, len(texts), _PREDICT_BATCH):
                chunks.append(self._probabilities(self._logits(texts[begin : begin + _PREDICT_BATCH])))
        width = 1 if self.config.task is Task.BINARY else self.config.num_classes
        scores = np.concatenate(chunks) if chunks else np.zeros((0, width))
        return scores[:, 0] if self.config.task is Task.BINARY else scores

    def _probabilities(self, logits: torch.Tensor) -> NDArray[np.float64]:
        logits = logits.float().cpu()
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits).double().numpy()
        probabilities = torch.softmax(logits, dim=-1).double().numpy()
        # A binary task scored by a causal model has two answers: report P(class 1).
        return probabilities[:, 1:2] if self.config.task is Task.BINARY else probabilities

    def _logits(self, texts: list[str], network: nn.Module | None = None) -> torch.Tensor:
        """The class logits of ``texts``, through ``network`` (DP-SGD's wrapped one) or the model."""
        network = network or self._loaded.network
        with self._autocast():
            if self.config.kind is TextModelKind.LORA_ENCODER:
                encoded = self._loaded.tokenizer(
                    texts,
                    truncation=True,
                    max_length=self.config.max_tokens,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                logits: torch.Tensor = network(encoded["input_ids"], encoded["attention_mask"])
                return logits
            input_ids, attention_mask = self._prompts(texts)
            output = network(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
            assert self._answer_tokens is not None
            answers: torch.Tensor = output.logits[:, -1, self._answer_tokens]
            return answers

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        """bf16 autocast where it pays: on CUDA, and for causal models on the CPU."""
        use = self.device.type == "cuda" or self.config.kind is TextModelKind.LORA_CAUSAL_LM
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use):
            yield

    # --- the causal model's prompt -----------------------------------------------------------

    def _question(self) -> str:
        return f"\nWhich of these fits the text above: {', '.join(self.config.class_names)}?\nAnswer:"

    def _class_tokens(self) -> list[int]:
        tokenizer = self._loaded.tokenizer
        first = [
            tokenizer.encode(" " + name, add_special_tokens=False)[0] for name in self.config.class_names
        ]
        if len(set(first)) != len(first):
            raise ConfigurationError(
                "the causal model scores each class by its first answer token, and two class names "
                f"share one: {list(self.config.class_names)}; rename the classes"
            )
        return first

    def _prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text cut to ``max_tokens``, then the question; left-padded so every prompt
        ends at the last position, whose logits alone are computed."""
        tokenizer = self._loaded.tokenizer
        question = tokenizer.encode(self._question(), add_special_tokens=False)
        bodies = tokenizer(
            texts, truncation=True, max_length=self.config.max_tokens, add_special_tokens=False
        )
        rows = [ids + question for ids in bodies["input_ids"]]
        return _left_padded(rows, _pad_id(tokenizer), self.device)

    def perplexity(self, features: Sequence[str] | NDArray[Any]) -> float:
        """exp of the mean negative log-likelihood per token of ``features`` (causal models)."""
        if self.config.kind is not TextModelKind.LORA_CAUSAL_LM:
            raise ConfigurationError("perplexity is defined for causal language models only")
        texts = _texts(features)
        self._activate()
        tokenizer, network = self._loaded.tokenizer, self._loaded.network
        network.eval()
        total, count = 0.0, 0
        with torch.inference_mode(), self._autocast():
            for begin in range(0, len(texts), _PREDICT_BATCH):
                encoded = tokenizer(
                    texts[begin : begin + _PREDICT_BATCH], truncation=True, max_length=self.config.max_tokens
                )
                input_ids, mask = _left_padded(encoded["input_ids"], _pad_id(tokenizer), self.device)
                logits = network(input_ids=input_ids, attention_mask=mask).logits.float()
                # Only real tokens predicted from real tokens: with left padding, the first
                # token of a shorter row follows a pad and is not a prediction of the text.
                scored = mask[:, :-1] * mask[:, 1:]
                losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
                total, count = total + float((losses * scored).sum()), count + int(scored.sum())
        return math.exp(total / max(count, 1))


def _texts(features: Sequence[str] | NDArray[Any], *, allow_empty: bool = False) -> list[str]:
    texts = (
        list(np.asarray(features, dtype=object).reshape(-1)) if not isinstance(features, list) else features
    )
    if not texts and not allow_empty:
        raise DataSchemaError("no training examples: no texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataSchemaError(f"text {index} is empty or not a string")
    return texts


def _label_view(config: TextModelConfig) -> Any:
    """What validate_labels reads of a model config: its task and number of classes."""
    return _LabelView(config.task, config.num_classes)


@dataclass(frozen=True)
class _LabelView:
    task: Task
    num_classes: int


def _shuffled_batches(n: int, config: TrainConfig, generator: torch.Generator) -> Iterator[NDArray[np.intp]]:
    """Row indices in shuffled batches, pass after pass (:meth:`TrainConfig.passes`)."""
    for _ in config.passes():
        order = torch.randperm(n, generator=generator).numpy()
        for begin in range(0, n, config.batch_size):
            yield order[begin : begin + config.batch_size]


def _passes(loader: DataLoader[Any], config: TrainConfig) -> Iterator[Any]:
    for _ in config.passes():
        yield from loader


def _capped(batches: Iterable[_T], max_steps: int | None) -> Iterator[_T]:
    """The batches, stopping after ``max_steps`` of them if set (one optimizer step each)."""
    for step, batch in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            return
        yield batch


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigurationError("the tokenizer has neither a padding nor an end-of-text token")
    return int(pad)


def _left_padded(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


# --- pinning a base model ------------------------------------------------------------------------


def pin_base_model(
    name: str, folder: Path, family: BaseModelFamily, *, gguf_file: str | None = None
) -> BaseModelPin:
    """The pin of the model in ``folder``: its weight files' digests and its linear layers'
    shapes (read from a weightless copy of the architecture, so any size pins in seconds)."""
    from transformers import AutoConfig

    from federation.models.pins import file_sha256, files_to_pin

    folder = Path(folder)
    names = files_to_pin(folder, gguf_file)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    architecture = AutoConfig.from_pretrained(folder, local_files_only=True, **options)
    loader = AutoModel if family is BaseModelFamily.ENCODER else AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = loader.from_config(architecture)
    layers = {
        path: (int(module.in_features), int(module.out_features))
        for path, module in skeleton.named_modules()
        if isinstance(module, nn.Linear)
    }
    return BaseModelPin(
        name=name,
        family=family,
        files={file: file_sha256(folder / file) for file in names},
        hidden_size=int(architecture.hidden_size),
        linear_layers=layers,
        num_parameters=sum(parameter.numel() for parameter in skeleton.parameters()),
        gguf_file=gguf_file,
    )
