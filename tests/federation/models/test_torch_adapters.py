"""Torch adapters: learning on real data, FedProx, determinism without global state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from federation.errors import ConfigurationError
from federation.models import ModelConfig, ModelKind, TorchAdapter, TrainConfig
from federation.types import Task


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.argmax(scores, axis=1) if scores.ndim == 2 else (scores >= 0.5).astype(int)
    return float(np.mean(predicted == labels))


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_logistic_learns_breast_cancer(breast_cancer) -> None:
    data = breast_cancer
    adapter = TorchAdapter(ModelConfig(ModelKind.LOGISTIC, Task.BINARY, 30, 2), seed=0)
    chance = accuracy(adapter.predict(data.x_test), data.y_test)
    result = adapter.fit(data.x_train, data.y_train, TrainConfig(epochs=5, batch_size=32, learning_rate=0.1))
    test_accuracy = accuracy(adapter.predict(data.x_test), data.y_test)
    assert test_accuracy > 0.9
    assert test_accuracy > chance
    assert result.metrics["accuracy"] > 0.9


@pytest.mark.parametrize(
    ("kind", "image_size", "epochs", "learning_rate"),
    [(ModelKind.MLP, None, 5, 0.05), (ModelKind.CNN, 8, 8, 0.1)],
    ids=["mlp", "cnn"],
)
def test_mlp_and_cnn_learn_digits(
    digits, kind: ModelKind, image_size: int | None, epochs: int, learning_rate: float
) -> None:
    config = ModelConfig(kind, Task.MULTICLASS, 64, 10, hidden_sizes=(64,), image_size=image_size)
    adapter = TorchAdapter(config, seed=0)
    result = adapter.fit(
        digits.x_train, digits.y_train, TrainConfig(epochs=epochs, batch_size=32, learning_rate=learning_rate)
    )
    assert accuracy(adapter.predict(digits.x_test), digits.y_test) > 0.85
    assert result.metrics["loss"] < np.log(10)  # better than uniform guessing


@pytest.mark.parametrize("kind", [ModelKind.LOGISTIC, ModelKind.MLP], ids=lambda k: k.value)
def test_regression_reduces_mse_on_diabetes(diabetes, kind: ModelKind) -> None:
    adapter = TorchAdapter(ModelConfig(kind, Task.REGRESSION, 10, 1, hidden_sizes=(16,)), seed=0)
    before = float(np.mean((adapter.predict(diabetes.x_test) - diabetes.y_test) ** 2))
    result = adapter.fit(
        diabetes.x_train, diabetes.y_train, TrainConfig(epochs=5, batch_size=16, learning_rate=0.01)
    )
    after = float(np.mean((adapter.predict(diabetes.x_test) - diabetes.y_test) ** 2))
    assert after < 0.8 * before
    assert after < 0.75  # the target is standardized: 1.0 is "predict the mean"
    assert result.metrics["loss"] == pytest.approx(
        np.mean((adapter.predict(diabetes.x_train) - diabetes.y_train) ** 2), rel=1e-6
    )


@pytest.mark.parametrize("kind", [ModelKind.LOGISTIC, ModelKind.MLP], ids=lambda k: k.value)
def test_fedprox_keeps_weights_closer_to_the_global_model(breast_cancer, kind: ModelKind) -> None:
    config = ModelConfig(kind, Task.BINARY, 30, 2, hidden_sizes=(16,))
    start = TorchAdapter(config, seed=3).get_weights()
    moved = {}
    for mu in (0.0, 1.0, 10.0):
        adapter = TorchAdapter(config, seed=0)
        adapter.set_weights(start)
        adapter.fit(
            breast_cancer.x_train,
            breast_cancer.y_train,
            TrainConfig(epochs=3, batch_size=32, learning_rate=0.05, proximal_mu=mu),
        )
        moved[mu] = distance(adapter.get_weights(), start)
    assert moved[0.0] > 0
    assert moved[1.0] < moved[0.0]
    assert moved[10.0] < 0.5 * moved[1.0]


def test_fedprox_gradient_matches_the_paper() -> None:
    """Full-batch steps: the first one starts at w_global, where the proximal gradient is
    zero; the second one adds exactly lr * mu * (w - w_global) to the plain SGD step."""
    config = ModelConfig(ModelKind.LOGISTIC, Task.REGRESSION, 2, 1)
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([1.0, -1.0])
    lr, mu = 0.1, 0.5
    plain = TorchAdapter(config, seed=1)
    prox = TorchAdapter(config, seed=1)
    start = plain.get_weights()
    plain.fit(x, y, TrainConfig(epochs=1, batch_size=2, learning_rate=lr))
    prox.fit(x, y, TrainConfig(epochs=1, batch_size=2, learning_rate=lr, proximal_mu=mu))
    # One step from w_global: the proximal gradient mu * (w - w_global) is zero there.
    for name in start:
        np.testing.assert_array_equal(prox.get_weights()[name], plain.get_weights()[name])

    # A second epoch, starting from the moved weights but with the anchor at `start`, must
    # differ from plain SGD by exactly -lr * mu * (w1 - w_global).
    manual = TorchAdapter(config, seed=1)
    manual.set_weights(plain.get_weights())
    module = manual.module
    w1 = {k: torch.from_numpy(v) for k, v in plain.get_weights().items()}
    w0 = {k: torch.from_numpy(v) for k, v in start.items()}
    out = module(torch.from_numpy(x))[:, 0]
    loss = torch.nn.functional.mse_loss(out, torch.from_numpy(y.astype(np.float32)))
    loss.backward()
    expected = {
        name: (w1[name] - lr * (param.grad + mu * (w1[name] - w0[name]))).detach().numpy()
        for name, param in module.named_parameters()
    }
    prox2 = TorchAdapter(config, seed=1)
    prox2.set_weights(start)
    prox2.fit(x, y, TrainConfig(epochs=2, batch_size=2, learning_rate=lr, proximal_mu=mu))
    for name, value in prox2.get_weights().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)


def test_adapter_seed_fixes_initial_weights() -> None:
    config = ModelConfig(ModelKind.MLP, Task.MULTICLASS, 8, 3, hidden_sizes=(5,))
    a, b, c = TorchAdapter(config, seed=7), TorchAdapter(config, seed=7), TorchAdapter(config, seed=8)
    for name in a.get_weights():
        np.testing.assert_array_equal(a.get_weights()[name], b.get_weights()[name])
    assert any(not np.array_equal(a.get_weights()[n], c.get_weights()[n]) for n in a.get_weights())


def test_global_torch_state_is_left_alone(digits) -> None:
    rng_state = torch.random.get_rng_state().clone()
    threads = torch.get_num_threads()
    config = ModelConfig(ModelKind.CNN, Task.MULTICLASS, 64, 10, hidden_sizes=(16,), image_size=8)
    adapter = TorchAdapter(config, seed=1)
    adapter.fit(digits.x_train[:200], digits.y_train[:200], TrainConfig(epochs=1, seed=3))
    adapter.predict(digits.x_test[:10])
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads

    # ... and therefore training is unaffected by what others do with the global RNG.
    torch.manual_seed(12345)
    again = TorchAdapter(config, seed=1)
    again.fit(digits.x_train[:200], digits.y_train[:200], TrainConfig(epochs=1, seed=3))
    for name, value in adapter.get_weights().items():
        assert value.tobytes() == again.get_weights()[name].tobytes()


def test_divergence_is_reported_and_weights_are_restored(diabetes) -> None:
    adapter = TorchAdapter(ModelConfig(ModelKind.MLP, Task.REGRESSION, 10, 1), seed=0)
    start = adapter.get_weights()
    with pytest.raises(ConfigurationError, match="diverged"):
        adapter.fit(diabetes.x_train * 1e3, diabetes.y_train * 1e3, TrainConfig(epochs=2, learning_rate=10.0))
    for name, value in adapter.get_weights().items():
        np.testing.assert_array_equal(value, start[name])


@pytest.mark.parametrize("kind", [ModelKind.LOGISTIC, ModelKind.MLP], ids=lambda k: k.value)
def test_class_weighting_equals_repeating_the_rare_class(digits, kind: ModelKind) -> None:
    """Classes 0, 1, 2 in the ratio 1 : 2 : 4 get balanced weights in the ratio 4 : 2 : 1, so one
    full-batch step on the weighted rows is the step on the rows repeated 4, 2 and 1 times."""
    rows = [np.flatnonzero(digits.y_train == c)[: 10 * 2**c] for c in range(3)]
    x = np.concatenate([digits.x_train[r] for r in rows])
    y = np.concatenate([digits.y_train[r] for r in rows])
    repeated = np.concatenate([np.repeat(r, 4 // 2**c) for c, r in enumerate(rows)])
    config = ModelConfig(kind, Task.MULTICLASS, 64, 10, hidden_sizes=(8,) if kind is ModelKind.MLP else ())
    weighted, reference = TorchAdapter(config, seed=3), TorchAdapter(config, seed=3)
    weighted.fit(x, y, TrainConfig(epochs=1, batch_size=len(y), learning_rate=0.1, class_weighting=True))
    reference.fit(
        digits.x_train[repeated],
        digits.y_train[repeated],
        TrainConfig(epochs=1, batch_size=len(repeated), learning_rate=0.1),
    )
    for name, value in reference.get_weights().items():
        np.testing.assert_allclose(weighted.get_weights()[name], value, rtol=1e-5, atol=1e-6)
