"""TrainConfig, TrainResult, ModelConfig and build_model."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight

from federation.errors import ConfigurationError
from federation.models import (
    ModelAdapter,
    ModelConfig,
    ModelKind,
    SklearnAdapter,
    TorchAdapter,
    TrainConfig,
    TrainResult,
    build_model,
)
from federation.models.base import class_weights, example_weights
from federation.types import Task


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"epochs": 1.5},
        {"epochs": True},
        {"batch_size": 0},
        {"learning_rate": 0.0},
        {"learning_rate": -0.1},
        {"learning_rate": float("nan")},
        {"learning_rate": float("inf")},
        {"proximal_mu": -1.0},
        {"proximal_mu": float("nan")},
        {"seed": -1},
        {"seed": 2**32},
        {"seed": "7"},
        {"max_steps": 0},
        {"max_steps": 2.5},
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_max_steps_fixes_the_steps_so_epochs_stay_one() -> None:
    with pytest.raises(ConfigurationError, match="leave epochs at 1"):
        TrainConfig(epochs=3, max_steps=10)
    assert list(islice(TrainConfig(epochs=1, max_steps=10).passes(), 50)) == list(range(50))
    assert list(TrainConfig(epochs=3).passes()) == [0, 1, 2]


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=60))
def test_class_weights_are_scikit_learns_balanced_weights(labels: list[int]) -> None:
    y = np.array(labels)
    present = np.unique(y)
    reference = compute_class_weight("balanced", classes=present, y=y)
    weights = class_weights(y, 5)
    np.testing.assert_allclose(weights[present], reference, rtol=1e-12)
    assert np.all(weights[np.setdiff1d(np.arange(5), present)] == 1.0)
    # Every class present carries the same total weight.
    totals = [weights[c] * np.sum(y == c) for c in present]
    np.testing.assert_allclose(totals, len(y) / len(present))


def test_class_weighting_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ConfigurationError, match="class_weighting cannot be combined with DP-SGD"):
        TrainConfig(class_weighting=True, dp_noise_multiplier=1.0, dp_clipping_norm=1.0)
    with pytest.raises(ConfigurationError, match="class_weighting must be true or false"):
        TrainConfig(class_weighting="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="a regression model has none"):
        example_weights(Task.REGRESSION, np.array([1.5, 2.0]), 1, TrainConfig(class_weighting=True))
    assert example_weights(Task.BINARY, np.array([0, 1]), 2, TrainConfig()) is None


def test_train_config_defaults() -> None:
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.learning_rate, config.proximal_mu, config.seed) == (
        1,
        32,
        0.01,
        0.0,
        0,
    )


def test_train_result_validates() -> None:
    assert TrainResult(3, {"loss": 0.5}).metrics == {"loss": 0.5}
    with pytest.raises(ConfigurationError):
        TrainResult(0, {})
    with pytest.raises(ConfigurationError):
        TrainResult(3, {"loss": "low"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "forest", "task": "binary", "num_features": 3, "num_classes": 2}, "unknown model kind"),
        ({"kind": "mlp", "task": "ranking", "num_features": 3, "num_classes": 2}, "unknown task"),
        ({"kind": "mlp", "task": "binary", "num_features": 0, "num_classes": 2}, "num_features"),
        ({"kind": "mlp", "task": "binary", "num_features": 3, "num_classes": 3}, "binary"),
        ({"kind": "mlp", "task": "multiclass", "num_features": 3, "num_classes": 2}, "multiclass"),
        ({"kind": "mlp", "task": "regression", "num_features": 3, "num_classes": 2}, "regression"),
        (
            {"kind": "mlp", "task": "binary", "num_features": 3, "num_classes": 2, "hidden_sizes": (4, 0)},
            "hidden_sizes",
        ),
        (
            {"kind": "sklearn_logistic", "task": "regression", "num_features": 3, "num_classes": 1},
            "classifier",
        ),
        ({"kind": "cnn", "task": "multiclass", "num_features": 64, "num_classes": 10}, "image_size"),
        (
            {"kind": "cnn", "task": "multiclass", "num_features": 60, "num_classes": 10, "image_size": 8},
            "num_features == 64",
        ),
        (
            {"kind": "mlp", "task": "binary", "num_features": 64, "num_classes": 2, "image_size": 8},
            "only used by a cnn",
        ),
    ],
)
def test_model_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(ModelKind.LOGISTIC, Task.BINARY, 30, 2),
        ModelConfig(ModelKind.MLP, Task.REGRESSION, 10, 1, hidden_sizes=(32, 16)),
        ModelConfig(ModelKind.CNN, Task.MULTICLASS, 64, 10, hidden_sizes=(), image_size=8),
        ModelConfig(ModelKind.SKLEARN_SGD, Task.MULTICLASS, 5, 3),
        ModelConfig(ModelKind.SKLEARN_LOGISTIC, Task.BINARY, 5, 2),
    ],
    ids=lambda c: c.kind.value,
)
def test_model_config_json_round_trip(config: ModelConfig) -> None:
    text = json.dumps(config.to_json())
    restored = ModelConfig.from_json(json.loads(text))
    assert restored == config
    assert isinstance(restored.kind, ModelKind)
    assert isinstance(restored.task, Task)
    assert isinstance(restored.hidden_sizes, tuple)


def test_model_config_from_json_rejects_malformed_input() -> None:
    good = ModelConfig(ModelKind.MLP, Task.BINARY, 4, 2).to_json()
    with pytest.raises(ConfigurationError, match="unknown model config fields"):
        ModelConfig.from_json({**good, "hiden_sizes": [3]})
    with pytest.raises(ConfigurationError, match="missing"):
        ModelConfig.from_json({k: v for k, v in good.items() if k != "task"})
    with pytest.raises(ConfigurationError, match="hidden_sizes"):
        ModelConfig.from_json({**good, "hidden_sizes": 8})
    with pytest.raises(ConfigurationError, match="num_features"):
        ModelConfig.from_json({**good, "num_features": "4"})
    with pytest.raises(ConfigurationError, match="JSON object"):
        ModelConfig.from_json([good])  # type: ignore[arg-type]


def test_model_config_accepts_strings_and_defaults_hidden_sizes() -> None:
    config = ModelConfig("mlp", "multiclass", 4, 3)  # type: ignore[arg-type]
    assert config.kind is ModelKind.MLP
    assert config.task is Task.MULTICLASS
    assert config.hidden_sizes == (64,)
    assert config.num_outputs == 3
    assert ModelConfig(ModelKind.MLP, Task.BINARY, 4, 2).num_outputs == 1


@pytest.mark.parametrize("kind", list(ModelKind), ids=lambda k: k.value)
def test_build_model_picks_the_adapter(kind: ModelKind) -> None:
    config = ModelConfig(kind, Task.BINARY, 16, 2, image_size=4 if kind is ModelKind.CNN else None)
    adapter = build_model(config)
    assert isinstance(adapter, ModelAdapter)
    assert isinstance(adapter, TorchAdapter if kind.uses_torch else SklearnAdapter)


def test_build_model_rejects_non_configs_and_adapters_reject_wrong_kinds() -> None:
    with pytest.raises(ConfigurationError):
        build_model({"kind": "mlp"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TorchAdapter(ModelConfig(ModelKind.SKLEARN_SGD, Task.BINARY, 4, 2))
    with pytest.raises(ConfigurationError):
        SklearnAdapter(ModelConfig(ModelKind.MLP, Task.BINARY, 4, 2))


def test_importing_the_config_types_loads_neither_torch_nor_sklearn() -> None:
    code = (
        "import sys, federation.models as m; "
        "m.ModelConfig('mlp', 'binary', 3, 2).to_json(); "
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(list(ModelKind)),
    task=st.sampled_from(list(Task)),
    num_features=st.integers(1, 40),
    num_classes=st.integers(3, 6),
    hidden_sizes=st.lists(st.integers(1, 20), min_size=0, max_size=3),
    image_size=st.integers(4, 9),
)
def test_num_parameters_counts_what_the_built_model_holds(
    kind: ModelKind,
    task: Task,
    num_features: int,
    num_classes: int,
    hidden_sizes: list[int],
    image_size: int,
) -> None:
    """The count from the config alone equals the size of the weights torch or sklearn builds."""
    assume(not (kind is ModelKind.SKLEARN_LOGISTIC and task is Task.REGRESSION))
    classes = {Task.BINARY: 2, Task.MULTICLASS: num_classes, Task.REGRESSION: 1}[task]
    cnn = kind is ModelKind.CNN
    config = ModelConfig(
        kind,
        task,
        num_features=image_size**2 if cnn else num_features,
        num_classes=classes,
        hidden_sizes=tuple(hidden_sizes),
        image_size=image_size if cnn else None,
    )
    built = build_model(config, seed=0).get_weights()
    assert config.num_parameters == sum(array.size for array in built.values())
