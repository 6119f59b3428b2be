"""The ModelAdapter contract, checked for every model kind and task it supports."""

from __future__ import annotations

import numpy as np
import pytest

from federation.errors import ConfigurationError, DataSchemaError, InvalidUpdateError, NonFiniteValueError
from federation.models import ModelAdapter, ModelConfig, ModelKind, TrainConfig, TrainResult, build_model
from federation.types import ModelSpec, Task

NUM_FEATURES = 16  # a 4x4 image for the cnn
NUM_CLASSES = {Task.BINARY: 2, Task.MULTICLASS: 4, Task.REGRESSION: 1}

CASES = [
    (kind, task)
    for kind in ModelKind
    for task in Task
    if not (kind is ModelKind.SKLEARN_LOGISTIC and task is Task.REGRESSION)
]
CASE_IDS = [f"{kind.value}-{task.value}" for kind, task in CASES]
CLASSIFICATION_CASES = [case for case in CASES if case[1] is not Task.REGRESSION]

EXPECTED_NAMES = {
    ModelKind.LOGISTIC: ["linear.weight", "linear.bias"],
    ModelKind.MLP: ["hidden.0.weight", "hidden.0.bias", "output.weight", "output.bias"],
    ModelKind.CNN: [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "hidden.0.weight",
        "hidden.0.bias",
        "output.weight",
        "output.bias",
    ],
    ModelKind.SKLEARN_SGD: ["coef", "intercept"],
    ModelKind.SKLEARN_LOGISTIC: ["coef", "intercept"],
}


def make_config(kind: ModelKind, task: Task) -> ModelConfig:
    return ModelConfig(
        kind=kind,
        task=task,
        num_features=NUM_FEATURES,
        num_classes=NUM_CLASSES[task],
        hidden_sizes=(8,),
        image_size=4 if kind is ModelKind.CNN else None,
    )


def make_data(task: Task, n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with a learnable signal in the first columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    if task is Task.REGRESSION:
        return x, x[:, 0] - 0.5 * x[:, 1] + 0.1 * rng.normal(size=n)
    if task is Task.BINARY:
        return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, np.argmax(x[:, :4], axis=1)


def trained(kind: ModelKind, task: Task, seed: int = 0) -> tuple[ModelAdapter, np.ndarray]:
    """An adapter with non-trivial weights (sklearn starts from zeros) and probe features."""
    adapter = build_model(make_config(kind, task), seed=seed)
    x, y = make_data(task)
    adapter.fit(x, y, TrainConfig(epochs=2, batch_size=16, learning_rate=0.05))
    return adapter, make_data(task, n=20, seed=1)[0]


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_is_a_model_adapter_with_stable_names_and_spec(kind: ModelKind, task: Task) -> None:
    adapter = build_model(make_config(kind, task))
    assert isinstance(adapter, ModelAdapter)
    weights = adapter.get_weights()
    assert list(weights) == EXPECTED_NAMES[kind]
    assert ModelSpec.from_weights(weights) == adapter.model_spec()
    assert all(array.dtype == np.float32 for array in weights.values())
    assert all(t.dtype == "F32" for t in adapter.model_spec().tensors)


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_round_trip_keeps_predictions_identical(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    before = adapter.predict(probe)
    weights = adapter.get_weights()

    adapter.set_weights(weights)
    np.testing.assert_array_equal(adapter.predict(probe), before)

    other = build_model(make_config(kind, task), seed=99)
    other.set_weights(weights)
    np.testing.assert_array_equal(other.predict(probe), before)
    assert {k: v.tobytes() for k, v in other.get_weights().items()} == {
        k: v.tobytes() for k, v in weights.items()
    }


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_weights_are_copies_both_ways(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    before = adapter.predict(probe)
    original = adapter.get_weights()

    leaked = adapter.get_weights()
    for array in leaked.values():
        array += 1.0
    np.testing.assert_array_equal(adapter.predict(probe), before)

    sent = {name: array.copy() for name, array in original.items()}
    adapter.set_weights(sent)
    for array in sent.values():
        array[...] = 7.0
    np.testing.assert_array_equal(adapter.predict(probe), before)
    for name, array in adapter.get_weights().items():
        np.testing.assert_array_equal(array, original[name])


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_set_weights_rejects_mismatches_and_keeps_the_model(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    before = adapter.predict(probe)
    good = adapter.get_weights()
    first = next(iter(good))

    renamed = {("renamed" if name == first else name): array for name, array in good.items()}
    with pytest.raises(InvalidUpdateError, match="renamed"):
        adapter.set_weights(renamed)

    missing = dict(good)
    del missing[first]
    with pytest.raises(InvalidUpdateError, match="missing"):
        adapter.set_weights(missing)

    extra = {**good, "surplus": np.zeros(3, np.float32)}
    with pytest.raises(InvalidUpdateError, match="surplus"):
        adapter.set_weights(extra)

    reshaped = {**good, first: np.zeros((*good[first].shape, 1), np.float32)}
    with pytest.raises(InvalidUpdateError, match="shape"):
        adapter.set_weights(reshaped)

    integers = {**good, first: np.zeros(good[first].shape, np.int32)}
    with pytest.raises(InvalidUpdateError, match="floating"):
        adapter.set_weights(integers)

    nan = {**good, first: np.full(good[first].shape, np.nan, np.float32)}
    with pytest.raises(NonFiniteValueError):
        adapter.set_weights(nan)

    np.testing.assert_array_equal(adapter.predict(probe), before)


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_set_weights_accepts_other_float_dtypes_and_any_order(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    weights = adapter.get_weights()
    shuffled = {name: weights[name].astype(np.float64) for name in reversed(list(weights))}
    other = build_model(make_config(kind, task), seed=5)
    other.set_weights(shuffled)
    np.testing.assert_array_equal(other.predict(probe), adapter.predict(probe))
    assert list(other.get_weights()) == EXPECTED_NAMES[kind]


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_predict_shapes(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    scores = adapter.predict(probe)
    if task is Task.MULTICLASS:
        assert scores.shape == (probe.shape[0], NUM_CLASSES[task])
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
        assert np.all((scores >= 0) & (scores <= 1))
    else:
        assert scores.shape == (probe.shape[0],)
    if task is Task.BINARY:
        assert np.all((scores >= 0) & (scores <= 1))
    assert adapter.predict(probe[:0]).shape[0] == 0


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_fit_reports_examples_and_metrics(kind: ModelKind, task: Task) -> None:
    adapter = build_model(make_config(kind, task))
    x, y = make_data(task)
    result = adapter.fit(x, y, TrainConfig(epochs=1, batch_size=16))
    assert isinstance(result, TrainResult)
    assert result.num_examples == x.shape[0]
    assert np.isfinite(result.metrics["loss"])
    assert ("accuracy" in result.metrics) == (task is not Task.REGRESSION)


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_same_seed_gives_bit_identical_weights(kind: ModelKind, task: Task) -> None:
    x, y = make_data(task)
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=0.05, seed=11)
    results = []
    for _ in range(2):
        adapter = build_model(make_config(kind, task), seed=4)
        adapter.fit(x, y, config)
        results.append(adapter.get_weights())
    for name in results[0]:
        assert results[0][name].tobytes() == results[1][name].tobytes(), name


# sklearn_logistic trains full-batch with lbfgs, which uses no randomness at all.
@pytest.mark.parametrize(
    ("kind", "task"),
    [case for case in CASES if case[0] is not ModelKind.SKLEARN_LOGISTIC],
    ids=[i for i, case in zip(CASE_IDS, CASES, strict=True) if case[0] is not ModelKind.SKLEARN_LOGISTIC],
)
def test_different_training_seeds_differ(kind: ModelKind, task: Task) -> None:
    x, y = make_data(task)
    start = build_model(make_config(kind, task), seed=4).get_weights()
    results = []
    for seed in (1, 2):
        adapter = build_model(make_config(kind, task))
        adapter.set_weights(start)
        adapter.fit(x, y, TrainConfig(epochs=1, batch_size=8, learning_rate=0.05, seed=seed))
        results.append(adapter.get_weights())
    assert any(not np.array_equal(results[0][name], results[1][name]) for name in results[0])


@pytest.mark.parametrize(
    ("kind", "task"), CLASSIFICATION_CASES, ids=[i for i in CASE_IDS if "regression" not in i]
)
def test_silo_with_a_single_local_class_trains_and_keeps_global_shapes(kind: ModelKind, task: Task) -> None:
    adapter = build_model(make_config(kind, task), seed=2)
    spec = adapter.model_spec()
    x, _ = make_data(task)
    only = 1  # the one class this silo has
    before = adapter.predict(x)
    result = adapter.fit(
        x, np.full(x.shape[0], only), TrainConfig(epochs=3, batch_size=16, learning_rate=0.1)
    )
    after = adapter.predict(x)

    assert result.num_examples == x.shape[0]
    assert adapter.model_spec() == spec
    assert ModelSpec.from_weights(adapter.get_weights()) == spec
    assert after.shape == before.shape
    # The model moved towards the only class it saw.
    if task is Task.BINARY:
        assert after.mean() > before.mean()
    else:
        assert after[:, only].mean() > before[:, only].mean()


@pytest.mark.parametrize(("kind", "task"), CASES, ids=CASE_IDS)
def test_bad_data_is_rejected_without_changing_the_model(kind: ModelKind, task: Task) -> None:
    adapter, probe = trained(kind, task)
    before = adapter.get_weights()
    x, y = make_data(task)
    with pytest.raises(DataSchemaError, match="shape"):
        adapter.fit(x[:, :-1], y, TrainConfig())
    with pytest.raises(DataSchemaError, match="labels"):
        adapter.fit(x, y[:-1], TrainConfig())
    with pytest.raises(DataSchemaError, match="0 rows"):
        adapter.fit(x[:0], y[:0], TrainConfig())
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    with pytest.raises(DataSchemaError, match="NaN"):
        adapter.fit(bad_x, y, TrainConfig())
    if task is not Task.REGRESSION:
        with pytest.raises(DataSchemaError, match=r"0\.\.(1|3)"):
            adapter.fit(x, np.full(x.shape[0], NUM_CLASSES[task]), TrainConfig())
        with pytest.raises(DataSchemaError, match="whole numbers"):
            adapter.fit(x, np.full(x.shape[0], 0.5), TrainConfig())
    with pytest.raises(DataSchemaError):
        adapter.predict(probe[:, :3])
    for name, array in adapter.get_weights().items():
        np.testing.assert_array_equal(array, before[name])


def test_sklearn_rejects_fedprox() -> None:
    for kind in (ModelKind.SKLEARN_SGD, ModelKind.SKLEARN_LOGISTIC):
        adapter = build_model(make_config(kind, Task.BINARY))
        x, y = make_data(Task.BINARY)
        with pytest.raises(ConfigurationError, match="FedProx needs a torch model"):
            adapter.fit(x, y, TrainConfig(proximal_mu=0.1))
