"""scikit-learn adapters: learning on real data, exact coef/intercept, fixed shapes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.utils.class_weight import compute_class_weight

from federation.errors import ConfigurationError
from federation.models import ModelConfig, ModelKind, SklearnAdapter, TrainConfig
from federation.types import Task

SKLEARN_KINDS = [ModelKind.SKLEARN_SGD, ModelKind.SKLEARN_LOGISTIC]


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.argmax(scores, axis=1) if scores.ndim == 2 else (scores >= 0.5).astype(int)
    return float(np.mean(predicted == labels))


@pytest.mark.parametrize("kind", SKLEARN_KINDS, ids=lambda k: k.value)
def test_learns_breast_cancer(breast_cancer, kind: ModelKind) -> None:
    adapter = SklearnAdapter(ModelConfig(kind, Task.BINARY, 30, 2))
    result = adapter.fit(
        breast_cancer.x_train, breast_cancer.y_train, TrainConfig(epochs=5, learning_rate=0.01)
    )
    assert accuracy(adapter.predict(breast_cancer.x_test), breast_cancer.y_test) > 0.9
    assert result.metrics["accuracy"] > 0.9


@pytest.mark.parametrize("kind", SKLEARN_KINDS, ids=lambda k: k.value)
def test_learns_digits(digits, kind: ModelKind) -> None:
    adapter = SklearnAdapter(ModelConfig(kind, Task.MULTICLASS, 64, 10))
    adapter.fit(digits.x_train, digits.y_train, TrainConfig(epochs=10, learning_rate=0.01))
    assert accuracy(adapter.predict(digits.x_test), digits.y_test) > 0.85


def test_sgd_regression_reduces_mse_on_diabetes(diabetes) -> None:
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_SGD, Task.REGRESSION, 10, 1))
    before = float(np.mean((adapter.predict(diabetes.x_test) - diabetes.y_test) ** 2))
    result = adapter.fit(diabetes.x_train, diabetes.y_train, TrainConfig(epochs=5, learning_rate=0.01))
    after = float(np.mean((adapter.predict(diabetes.x_test) - diabetes.y_test) ** 2))
    assert after < 0.8 * before
    assert result.metrics["loss"] < 0.75


@pytest.mark.parametrize(
    ("kind", "task", "classes", "rows"),
    [
        (ModelKind.SKLEARN_SGD, Task.BINARY, 2, 1),
        (ModelKind.SKLEARN_SGD, Task.MULTICLASS, 5, 5),
        (ModelKind.SKLEARN_SGD, Task.REGRESSION, 1, 1),
        (ModelKind.SKLEARN_LOGISTIC, Task.BINARY, 2, 1),
        (ModelKind.SKLEARN_LOGISTIC, Task.MULTICLASS, 5, 5),
    ],
)
def test_weights_start_at_zero_with_shapes_from_the_config(
    kind: ModelKind, task: Task, classes: int, rows: int
) -> None:
    adapter = SklearnAdapter(ModelConfig(kind, task, 7, classes))
    weights = adapter.get_weights()
    assert list(weights) == ["coef", "intercept"]
    assert weights["coef"].shape == (rows, 7)
    assert weights["intercept"].shape == (rows,)
    assert not any(np.any(array) for array in weights.values())
    scores = adapter.predict(np.ones((3, 7), np.float32))
    if task is Task.BINARY:
        np.testing.assert_array_equal(scores, 0.5)
    elif task is Task.MULTICLASS:
        np.testing.assert_allclose(scores, 1 / classes)
    else:
        np.testing.assert_array_equal(scores, 0.0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_logistic_weights_are_exactly_sklearns_coef_and_intercept(digits) -> None:
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_LOGISTIC, Task.MULTICLASS, 64, 10))
    adapter.fit(digits.x_train, digits.y_train, TrainConfig(epochs=30))
    # lbfgs from zeros is LogisticRegression's own default start.
    reference = LogisticRegression(max_iter=30).fit(digits.x_train.astype(np.float64), digits.y_train)
    weights = adapter.get_weights()
    np.testing.assert_array_equal(weights["coef"], reference.coef_.astype(np.float32))
    np.testing.assert_array_equal(weights["intercept"], reference.intercept_.astype(np.float32))


def test_sgd_weights_are_exactly_sklearns_coef_and_intercept(breast_cancer) -> None:
    x, y = breast_cancer.x_train.astype(np.float64), breast_cancer.y_train
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_SGD, Task.BINARY, 30, 2))
    adapter.fit(breast_cancer.x_train, y, TrainConfig(epochs=1, learning_rate=0.02, seed=5))
    reference = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.02, shuffle=False)
    order = np.random.default_rng(5).permutation(x.shape[0])
    reference.partial_fit(x[order], y[order], classes=np.arange(2))
    weights = adapter.get_weights()
    np.testing.assert_array_equal(weights["coef"], reference.coef_.astype(np.float32))
    np.testing.assert_array_equal(weights["intercept"], reference.intercept_.astype(np.float32))


def _imbalanced(data) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Every benign row (label 1) and a sixth of the malignant ones: about 11 to 1."""
    keep = (data.y_train == 1) | (np.arange(len(data.y_train)) % 6 == 0)
    return data.x_train[keep], data.y_train[keep]


def test_class_weighted_logistic_is_sklearns_balanced_logistic(breast_cancer) -> None:
    x, y = _imbalanced(breast_cancer)
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_LOGISTIC, Task.BINARY, 30, 2))
    adapter.fit(x, y, TrainConfig(epochs=30, class_weighting=True))
    reference = LogisticRegression(max_iter=30, class_weight="balanced").fit(x.astype(np.float64), y)
    weights = adapter.get_weights()
    np.testing.assert_allclose(weights["coef"], reference.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights["intercept"], reference.intercept_, rtol=1e-5, atol=1e-6)


def test_class_weighted_sgd_is_sgd_with_sklearns_balanced_class_weights(breast_cancer) -> None:
    x, y = _imbalanced(breast_cancer)
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_SGD, Task.BINARY, 30, 2))
    adapter.fit(x, y, TrainConfig(epochs=1, learning_rate=0.02, seed=5, class_weighting=True))
    balanced = compute_class_weight("balanced", classes=np.arange(2), y=y)
    reference = SGDClassifier(
        loss="log_loss",
        learning_rate="constant",
        eta0=0.02,
        shuffle=False,
        class_weight=dict(enumerate(balanced)),
    )
    order = np.random.default_rng(5).permutation(x.shape[0])
    reference.partial_fit(x[order].astype(np.float64), y[order], classes=np.arange(2))
    weights = adapter.get_weights()
    np.testing.assert_allclose(weights["coef"], reference.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights["intercept"], reference.intercept_, rtol=1e-5, atol=1e-6)


def test_training_continues_from_the_weights_that_were_set(breast_cancer) -> None:
    config = ModelConfig(ModelKind.SKLEARN_SGD, Task.BINARY, 30, 2)
    x, y = breast_cancer.x_train, breast_cancer.y_train
    two_rounds = SklearnAdapter(config)
    two_rounds.fit(x, y, TrainConfig(epochs=1, seed=1))
    handed_over = SklearnAdapter(config)
    handed_over.set_weights(two_rounds.get_weights())
    two_rounds.fit(x, y, TrainConfig(epochs=1, seed=2))
    handed_over.fit(x, y, TrainConfig(epochs=1, seed=2))
    for name, value in two_rounds.get_weights().items():
        assert value.tobytes() == handed_over.get_weights()[name].tobytes()


def test_logistic_silo_missing_most_classes_still_fits_its_data(digits) -> None:
    """A silo that only has classes 0..2 trains the global 10-class model and fits its data."""
    present = digits.y_train < 3
    x, y = digits.x_train[present], digits.y_train[present]
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_LOGISTIC, Task.MULTICLASS, 64, 10))
    adapter.fit(x, y, TrainConfig(epochs=50))
    weights = adapter.get_weights()
    assert weights["coef"].shape == (10, 64)
    # Absent classes are never predicted for data like the local data.
    assert set(np.argmax(adapter.predict(x), axis=1)) <= {0, 1, 2}
    assert accuracy(adapter.predict(x), y) > 0.95


def test_fedprox_is_refused_with_a_clear_message(breast_cancer) -> None:
    adapter = SklearnAdapter(ModelConfig(ModelKind.SKLEARN_SGD, Task.BINARY, 30, 2))
    with pytest.raises(ConfigurationError, match="FedProx needs a torch model"):
        adapter.fit(breast_cancer.x_train, breast_cancer.y_train, TrainConfig(proximal_mu=0.01))
    assert not np.any(adapter.get_weights()["coef"])
