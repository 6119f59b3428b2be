"""The small interface every model adapter implements, and the configuration values it uses.

This module deliberately imports neither torch nor scikit-learn, so the control plane can
describe, validate and store a model configuration without loading either library.

Conventions shared by all adapters:

* ``Task.BINARY`` needs ``num_classes == 2`` and labels in ``{0, 1}``; the model has a
  single output (one logit, or a scikit-learn binary coefficient row).
* ``Task.MULTICLASS`` needs ``num_classes >= 3`` and labels in ``0 .. num_classes - 1``;
  the model has ``num_classes`` outputs.
* ``Task.REGRESSION`` needs ``num_classes == 1`` (one output) and finite real labels.
* Weights travel as float32 arrays in a fixed canonical order; their names and shapes
  depend only on the :class:`ModelConfig`, never on a silo's local data, so every silo
  of a study agrees on them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import count, pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from federation.errors import ConfigurationError, DataSchemaError, InvalidUpdateError, NonFiniteValueError
from federation.privacy.accounting import PrivacyEvent
from federation.types import ModelSpec, Task, Weights

#: Largest seed accepted anywhere (numpy's legacy RandomState, used by scikit-learn,
#: takes seeds below 2**32).
MAX_SEED = 2**32 - 1


CLASS_WEIGHTING_WITH_DP_SGD = (
    "class_weighting cannot be combined with DP-SGD (sample-level DP): the weights come from all "
    "of a site's labels, so one patient's record would change every example's loss, which "
    "DP-SGD's accounting does not cover"
)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


@dataclass(frozen=True)
class TrainConfig:
    """How a silo trains the model locally in one round.

    ``proximal_mu > 0`` turns on the FedProx proximal term (torch models only).
    ``batch_size`` is used by the torch adapters; scikit-learn's SGD updates one example at
    a time and its LogisticRegression is full-batch, so they ignore it.

    ``dp_noise_multiplier`` and ``dp_clipping_norm`` (both or neither) turn on sample-level
    differential privacy: DP-SGD with Opacus, torch models only, not with FedProx (Opacus
    noises per-example gradients and would silently drop the proximal term's gradient).
    ``batch_size`` is then the expected size of the Poisson-sampled batches. The batch
    sampling and the noise come from generators seeded by ``dp_seed``: leave it ``None``
    at a real site, so they are seeded from the OS CSPRNG (``seed`` comes from the server,
    which could otherwise regenerate and subtract the noise); set it only in simulations
    and tests, to repeat a run exactly.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    proximal_mu: float = 0.0
    seed: int = 0
    dp_noise_multiplier: float | None = None
    dp_clipping_norm: float | None = None
    dp_seed: int | None = None
    #: Fixes a round's optimizer steps (text models, whose epochs are long): exactly this many,
    #: passing over the data as often as needed, so every site takes as many steps whatever
    #: its size; ``epochs`` must then stay 1. None: ``epochs`` passes.
    max_steps: int | None = None
    #: Weighs each training example by the inverse frequency of its class in the site's own
    #: labels (:func:`class_weights`), so a rare class counts as much as a common one.
    #: Classification only; not with DP-SGD.
    class_weighting: bool = False

    def __post_init__(self) -> None:
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            raise ConfigurationError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.max_steps is not None and self.epochs != 1:
            raise ConfigurationError(
                f"max_steps fixes a round's steps (passing over the data as often as needed): "
                f"leave epochs at 1, not {self.epochs!r}"
            )
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ConfigurationError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _is_real(self.learning_rate) or not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ConfigurationError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not _is_real(self.proximal_mu) or not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise ConfigurationError(f"proximal_mu must be a finite number >= 0, got {self.proximal_mu!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigurationError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        if not isinstance(self.class_weighting, bool | np.bool_):
            raise ConfigurationError(f"class_weighting must be true or false, got {self.class_weighting!r}")
        self._check_dp()

    def passes(self) -> Iterator[int]:
        """The passes over the data: ``epochs`` of them, or under ``max_steps`` as many as it
        takes (the trainer stops after ``max_steps`` steps)."""
        return count() if self.max_steps is not None else iter(range(self.epochs))

    def _check_dp(self) -> None:
        noise, clipping = self.dp_noise_multiplier, self.dp_clipping_norm
        if (noise is None) != (clipping is None):
            raise ConfigurationError("DP-SGD needs both dp_noise_multiplier and dp_clipping_norm, or neither")
        for name, value in (("dp_noise_multiplier", noise), ("dp_clipping_norm", clipping)):
            if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
        if self.dp_seed is not None:
            if not self.uses_dp_sgd:
                raise ConfigurationError("dp_seed seeds DP-SGD: set dp_noise_multiplier and dp_clipping_norm")
            if not _is_int(self.dp_seed) or not 0 <= self.dp_seed <= MAX_SEED:
                raise ConfigurationError(
                    f"dp_seed must be an integer in [0, 2**32 - 1], got {self.dp_seed!r}"
                )
        if self.uses_dp_sgd and self.class_weighting:
            raise ConfigurationError(CLASS_WEIGHTING_WITH_DP_SGD)
        if self.uses_dp_sgd and self.proximal_mu > 0:
            raise ConfigurationError(
                "FedProx (proximal_mu > 0) cannot be combined with DP-SGD: Opacus noises per-example "
                "gradients and would ignore the proximal term; set proximal_mu=0"
            )

    @property
    def uses_dp_sgd(self) -> bool:
        """Whether local training is DP-SGD (sample-level differential privacy)."""
        return self.dp_noise_multiplier is not None


@dataclass(frozen=True)
class TrainResult:
    """What local training reports: how many examples it used and aggregate metrics
    (e.g. the final training ``loss``). Never per-row data.

    ``privacy_spend`` is set by DP-SGD training: the noise multiplier, sampling rate and
    number of steps it took, for the site's
    :class:`~federation.privacy.accounting.PrivacyLedgerState`; the steps and the rate are
    also in ``metrics`` as ``dp_steps`` and ``dp_sampling_rate``."""

    num_examples: int
    metrics: dict[str, float]
    privacy_spend: PrivacyEvent | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.num_examples) or self.num_examples < 1:
            raise ConfigurationError(f"num_examples must be a positive integer, got {self.num_examples!r}")
        for name, value in self.metrics.items():
            if not isinstance(name, str) or not _is_real(value):
                raise ConfigurationError(f"metric {name!r} must map a name to a number, got {value!r}")
        if self.privacy_spend is not None and not isinstance(self.privacy_spend, PrivacyEvent):
            raise ConfigurationError(f"privacy_spend must be a PrivacyEvent, got {self.privacy_spend!r}")


class ModelKind(enum.StrEnum):
    """The model families a study can use."""

    #: torch logistic (binary), softmax (multiclass) or linear (regression) model: one linear layer.
    LOGISTIC = "logistic"
    #: torch multi-layer perceptron with ReLU hidden layers of ``hidden_sizes``.
    MLP = "mlp"
    #: small torch CNN for square single-channel images (e.g. 8x8 digits).
    CNN = "cnn"
    #: scikit-learn SGDClassifier(loss="log_loss") or SGDRegressor.
    SKLEARN_SGD = "sklearn_sgd"
    #: scikit-learn LogisticRegression (lbfgs, warm-started); classification only.
    SKLEARN_LOGISTIC = "sklearn_logistic"

    @property
    def uses_torch(self) -> bool:
        return self in (ModelKind.LOGISTIC, ModelKind.MLP, ModelKind.CNN)


#: Output channels of the CNN's two 3x3 convolutions.
CNN_CHANNELS = (8, 16)

_CONFIG_FIELDS = ("kind", "task", "num_features", "num_classes", "hidden_sizes", "image_size")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the same model in every silo.

    ``num_classes`` is 2 for binary tasks, the number of classes (>= 3) for multiclass
    tasks and 1 for regression. ``hidden_sizes`` is used by ``mlp`` and ``cnn`` (the
    fully connected layers after the convolutions; may be empty) and ignored otherwise.
    ``image_size`` is required by ``cnn`` (``num_features == image_size ** 2``, features
    are row-major flattened images) and must be ``None`` for every other kind.
    """

    kind: ModelKind
    task: Task
    num_features: int
    num_classes: int
    hidden_sizes: tuple[int, ...] = (64,)
    image_size: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ModelKind(self.kind))
        except ValueError:
            raise ConfigurationError(
                f"unknown model kind {self.kind!r}; expected one of {[k.value for k in ModelKind]}"
            ) from None
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            raise ConfigurationError(
                f"unknown task {self.task!r}; expected one of {[t.value for t in Task]}"
            ) from None
        if not _is_int(self.num_features) or self.num_features < 1:
            raise ConfigurationError(f"num_features must be a positive integer, got {self.num_features!r}")
        if not _is_int(self.num_classes):
            raise ConfigurationError(f"num_classes must be an integer, got {self.num_classes!r}")
        if self.task is Task.BINARY and self.num_classes != 2:
            raise ConfigurationError(f"a binary task needs num_classes == 2, got {self.num_classes}")
        if self.task is Task.MULTICLASS and self.num_classes < 3:
            raise ConfigurationError(
                f"a multiclass task needs num_classes >= 3 (use task 'binary' for two classes), "
                f"got {self.num_classes}"
            )
        if self.task is Task.REGRESSION and self.num_classes != 1:
            raise ConfigurationError(
                f"a regression task has one output: num_classes must be 1, got {self.num_classes}"
            )
        if isinstance(self.hidden_sizes, str | bytes) or not hasattr(self.hidden_sizes, "__iter__"):
            raise ConfigurationError(
                f"hidden_sizes must be a sequence of integers, got {self.hidden_sizes!r}"
            )
        sizes = tuple(self.hidden_sizes)
        if not all(_is_int(size) and size >= 1 for size in sizes):
            raise ConfigurationError(f"hidden_sizes must be positive integers, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(size) for size in sizes))
        if self.kind is ModelKind.SKLEARN_LOGISTIC and self.task is Task.REGRESSION:
            raise ConfigurationError(
                "sklearn_logistic is a classifier; use sklearn_sgd, logistic or mlp for regression"
            )
        if self.kind is ModelKind.CNN:
            if self.image_size is None or not _is_int(self.image_size) or self.image_size < 4:
                raise ConfigurationError(f"a cnn needs image_size, an integer >= 4, got {self.image_size!r}")
            if self.num_features != self.image_size**2:
                raise ConfigurationError(
                    f"a cnn on {self.image_size}x{self.image_size} images needs "
                    f"num_features == {self.image_size**2}, got {self.num_features}"
                )
        elif self.image_size is not None:
            raise ConfigurationError(f"image_size is only used by a cnn, not by {self.kind.value!r}")

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: ``num_classes`` for multiclass, otherwise 1."""
        return self.num_classes if self.task is Task.MULTICLASS else 1

    @property
    def num_parameters(self) -> int:
        """How many numbers the model holds, from the config alone: nothing is built.

        >>> ModelConfig("mlp", "binary", num_features=30, num_classes=2, hidden_sizes=(64,)).num_parameters
        2049
        """
        dense_inputs, convolutions = self.num_features, 0
        if self.kind is ModelKind.CNN:
            assert self.image_size is not None  # checked in __post_init__
            first, second = CNN_CHANNELS
            convolutions = (1 * 9 + 1) * first + (first * 9 + 1) * second
            dense_inputs = second * (self.image_size // 4) ** 2
        hidden = self.hidden_sizes if self.kind in (ModelKind.MLP, ModelKind.CNN) else ()
        widths = (dense_inputs, *hidden, self.num_outputs)
        return convolutions + sum((inputs + 1) * outputs for inputs, outputs in pairwise(widths))

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "task": self.task.value,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "hidden_sizes": list(self.hidden_sizes),
            "image_size": self.image_size,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ModelConfig:
        """Parse the output of :meth:`to_json`; raises ConfigurationError if malformed."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a model config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_CONFIG_FIELDS))
        if unknown:
            raise ConfigurationError(f"unknown model config fields: {unknown}")
        missing = [name for name in ("kind", "task", "num_features", "num_classes") if name not in data]
        if missing:
            raise ConfigurationError(f"model config is missing fields: {missing}")
        hidden = data.get("hidden_sizes", [64])
        if not isinstance(hidden, list | tuple):
            raise ConfigurationError(f"hidden_sizes must be a list of integers, got {hidden!r}")
        return cls(
            kind=data["kind"],  # type: ignore[arg-type]  # validated in __post_init__
            task=data["task"],  # type: ignore[arg-type]
            num_features=data["num_features"],  # type: ignore[arg-type]
            num_classes=data["num_classes"],  # type: ignore[arg-type]
            hidden_sizes=tuple(hidden),
            image_size=data.get("image_size"),  # type: ignore[arg-type]
        )


@runtime_checkable
class ModelAdapter(Protocol):
    """One model behind a framework-neutral interface."""

    def model_spec(self) -> ModelSpec:
        """Names, shapes and dtypes (always F32) of the weights, in canonical order."""
        ...

    def get_weights(self) -> Weights:
        """Float32 copies of the weights, in canonical order."""
        ...

    def set_weights(self, weights: Weights) -> None:
        """Replace every weight; raises InvalidUpdateError if names or shapes do not match."""
        ...

    def fit(self, features: NDArray[Any], labels: NDArray[Any], config: TrainConfig) -> TrainResult:
        """Train locally, starting from the current weights. ``features`` are float rows, or
        texts (an object array of ``str``) for text models."""
        ...

    def predict(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Scores: binary -> P(class 1) of shape (n,); multiclass -> probabilities (n, C);
        regression -> predictions (n,)."""
        ...


# --- helpers shared by the adapters -------------------------------------------------


def validate_weights(spec: ModelSpec, weights: Mapping[str, Any]) -> Weights:
    """Check ``weights`` against ``spec`` and return float32 copies in canonical order.

    Raises InvalidUpdateError for missing/unexpected names, wrong shapes or non-float
    arrays, and NonFiniteValueError for NaN or infinity.
    """
    if not isinstance(weights, Mapping):
        raise InvalidUpdateError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    expected = spec.names
    missing = [name for name in expected if name not in weights]
    unexpected = sorted(str(name) for name in weights if name not in expected)
    if missing or unexpected:
        raise InvalidUpdateError(
            f"weights do not match the model: missing tensors {missing}, unexpected tensors {unexpected}"
        )
    checked: Weights = {}
    for tensor in spec.tensors:
        array = np.asarray(weights[tensor.name])
        if not np.issubdtype(array.dtype, np.floating):
            raise InvalidUpdateError(
                f"tensor {tensor.name!r}: expected floating point values, got dtype {array.dtype}"
            )
        if tuple(array.shape) != tensor.shape:
            raise InvalidUpdateError(
                f"tensor {tensor.name!r}: expected shape {tensor.shape}, got {tuple(array.shape)}"
            )
        converted = np.array(array, dtype=np.float32, order="C", copy=True)
        if not np.all(np.isfinite(converted)):
            raise NonFiniteValueError(f"tensor {tensor.name!r} holds NaN or infinite values")
        checked[tensor.name] = converted
    return checked


def validate_features(
    config: ModelConfig, features: Any, *, allow_empty: bool = False
) -> NDArray[np.float32]:
    """A C-contiguous float32 copy of ``features`` of shape (n, num_features)."""
    array = np.asarray(features)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise DataSchemaError(f"features must be real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != config.num_features:
        raise DataSchemaError(
            f"features must have shape (n, {config.num_features}), got {tuple(array.shape)}"
        )
    if array.shape[0] == 0 and not allow_empty:
        raise DataSchemaError("no training examples: features has 0 rows")
    converted = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(converted)):
        raise DataSchemaError("features hold NaN or infinite values (or values too large for float32)")
    return converted


def validate_labels(config: ModelConfig, labels: Any, num_rows: int) -> NDArray[Any]:
    """Labels as int64 class indices (classification) or float64 targets (regression)."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != num_rows:
        raise DataSchemaError(f"labels must have shape ({num_rows},), got {tuple(array.shape)}")
    if config.task is Task.REGRESSION:
        if array.dtype == np.bool_ or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        ):
            raise DataSchemaError(f"regression labels must be real numbers, got dtype {array.dtype}")
        targets = array.astype(np.float64)
        if not np.all(np.isfinite(targets)):
            raise DataSchemaError("regression labels hold NaN or infinite values")
        return targets
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataSchemaError("class labels must be whole numbers")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataSchemaError(f"class labels must be integers, got dtype {array.dtype}")
    classes = array.astype(np.int64)
    if classes.size and (classes.min() < 0 or classes.max() >= config.num_classes):
        raise DataSchemaError(
            f"class labels must lie in 0..{config.num_classes - 1}, "
            f"got values in {int(classes.min())}..{int(classes.max())}"
        )
    return classes


def class_weights(labels: NDArray[Any], num_classes: int) -> NDArray[np.float64]:
    """Each class's weight under :attr:`TrainConfig.class_weighting`: ``n / (k * n_c)``, with
    ``n`` labels, ``k`` classes among them and ``n_c`` of class ``c`` (scikit-learn's
    "balanced"), so every class present carries the same total weight; 1 for a class absent.

    >>> class_weights(np.array([0, 0, 0, 1]), 3).tolist()
    [0.6666666666666666, 2.0, 1.0]
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def check_class_weighting(task: Task, config: TrainConfig) -> None:
    """Refuse class weighting for a task without classes."""
    if config.class_weighting and task is Task.REGRESSION:
        raise ConfigurationError("class_weighting weighs classes; a regression model has none")


def example_weights(
    task: Task, labels: NDArray[Any], num_classes: int, config: TrainConfig
) -> NDArray[np.float64] | None:
    """Each training example's weight, or None when every example weighs 1."""
    if not config.class_weighting:
        return None
    check_class_weighting(task, config)
    return class_weights(labels, num_classes)[np.asarray(labels, dtype=np.int64)]


def training_metrics(task: Task, scores: NDArray[np.float64], labels: NDArray[Any]) -> dict[str, float]:
    """Aggregate metrics of ``scores`` (as returned by ``predict``) against ``labels``.

    ``loss`` is the log loss (classification) or the mean squared error (regression);
    classification also reports ``accuracy``.
    """
    eps = float(np.finfo(np.float32).eps)
    if task is Task.REGRESSION:
        return {"loss": float(np.mean((scores - labels) ** 2))}
    if task is Task.BINARY:
        p = np.clip(scores, eps, 1.0 - eps)
        loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1.0 - p))
        accuracy = np.mean((scores >= 0.5) == (labels == 1))
        return {"loss": float(loss), "accuracy": float(accuracy)}
    picked = scores[np.arange(labels.shape[0]), labels]
    loss = -np.mean(np.log(np.clip(picked, eps, 1.0)))
    accuracy = np.mean(np.argmax(scores, axis=1) == labels)
    return {"loss": float(loss), "accuracy": float(accuracy)}
