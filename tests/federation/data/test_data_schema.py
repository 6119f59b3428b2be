import numpy as np
import pytest

from federation.data import DataSchema, Dataset, FeatureKind, FeatureSpec
from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task


def make_schema() -> DataSchema:
    return DataSchema(
        features=(
            FeatureSpec("age", FeatureKind.NUMERIC, value_range=(0.0, 120.0)),
            FeatureSpec("sex", FeatureKind.CATEGORICAL, ("female", "male", "other")),
            FeatureSpec("smoker", FeatureKind.BOOLEAN),
        ),
        label="outcome",
        task=Task.BINARY,
        classes=("survived", "died"),
        site_column="hospital",
    )


def test_encoded_feature_names_follow_declared_order() -> None:
    assert make_schema().encoded_feature_names() == (
        "age",
        "sex=female",
        "sex=male",
        "sex=other",
        "smoker",
    )


def test_json_round_trip() -> None:
    schema = make_schema()
    data = schema.to_json()
    assert data["task"] == "binary"
    assert data["features"][1] == {
        "name": "sex",
        "kind": "categorical",
        "categories": ["female", "male", "other"],
    }
    assert DataSchema.from_json(data) == schema
    assert schema.num_classes == 2


def test_from_json_accepts_minimal_regression_schema() -> None:
    schema = DataSchema.from_json({"features": [{"name": "x"}], "label": "y", "task": "regression"})
    assert schema.features == (FeatureSpec("x", FeatureKind.NUMERIC),)
    assert schema.classes is None
    assert schema.num_classes == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"label": "y", "task": "binary", "classes": ["a", "b"]}, "missing 'features'"),
        ({"features": [{"name": "x"}], "label": "y", "task": "ranking"}, "'task' must be one of"),
        ({"features": [{"name": "x"}], "label": "y", "task": "binary"}, "must declare its classes"),
        (
            {"features": [{"name": "x"}], "label": "y", "task": "binary", "classes": ["a", "b", "c"]},
            "exactly 2 classes",
        ),
        (
            {"features": [{"name": "x"}], "label": "y", "task": "regression", "classes": ["a"]},
            "must not declare classes",
        ),
        ({"features": [{"name": "x", "kind": "text"}], "label": "y", "task": "regression"}, "kind 'text'"),
        (
            {"features": [{"name": "x", "kind": "categorical"}], "label": "y", "task": "regression"},
            "declares no categories",
        ),
        (
            {"features": [{"name": "x"}, {"name": "x"}], "label": "y", "task": "regression"},
            "more than once: x",
        ),
        ({"features": [{"name": "y"}], "label": "y", "task": "regression"}, "also declared as a feature"),
        (
            {"features": [{"name": "x"}], "label": "y", "task": "regression", "colour": 1},
            "unknown schema key",
        ),
        (
            {"features": [{"name": "x", "value_range": [3, 1]}], "label": "y", "task": "regression"},
            "low < high",
        ),
        (
            {
                "features": [{"name": "x", "kind": "boolean", "categories": ["a"]}],
                "label": "y",
                "task": "regression",
            },
            "only categorical",
        ),
        ({"features": "x", "label": "y", "task": "regression"}, "'features' must be a list"),
    ],
)
def test_from_json_rejects_bad_schemas(data: object, message: str) -> None:
    with pytest.raises(DataSchemaError, match=message):
        DataSchema.from_json(data)


def make_dataset(n: int = 20) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        features=rng.normal(size=(n, 3)).astype(np.float32),
        labels=np.arange(n) % 2,
        task=Task.BINARY,
        feature_names=("a", "b", "c"),
        num_classes=2,
        sites=np.array([f"s{i % 4}" for i in range(n)]),
    )


def test_dataset_canonical_dtypes_and_subset() -> None:
    data = make_dataset()
    assert data.features.dtype == np.float32
    assert data.labels.dtype == np.int64
    assert len(data) == 20
    part = data.subset(np.array([3, 1]))
    assert len(part) == 2
    np.testing.assert_array_equal(part.features, data.features[[3, 1]])
    np.testing.assert_array_equal(part.labels, [1, 1])
    assert part.sites is not None
    assert list(part.sites) == ["s3", "s1"]


def test_dataset_rejects_inconsistent_shapes_and_labels() -> None:
    with pytest.raises(DataSchemaError, match="feature names"):
        Dataset(np.zeros((2, 3), np.float32), np.zeros(2), Task.BINARY, ("a",), 2)
    with pytest.raises(DataSchemaError, match="labels must have shape"):
        Dataset(np.zeros((2, 1), np.float32), np.zeros(3), Task.BINARY, ("a",), 2)
    with pytest.raises(DataSchemaError, match=r"\[0, 2\)"):
        Dataset(np.zeros((2, 1), np.float32), np.array([0, 2]), Task.BINARY, ("a",), 2)
    with pytest.raises(DataSchemaError, match="integer class indices"):
        Dataset(np.zeros((2, 1), np.float32), np.array([0.5, 1.0]), Task.BINARY, ("a",), 2)
    with pytest.raises(DataSchemaError, match="num_classes 1"):
        Dataset(np.zeros((2, 1), np.float32), np.zeros(2), Task.REGRESSION, ("a",), 3)


def test_stratified_split_keeps_class_balance() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    data = Dataset(np.arange(100, dtype=np.float32).reshape(100, 1), labels, Task.BINARY, ("x",), 2)
    train, test = data.train_test_split(0.25, np.random.default_rng(1), stratify=True)
    assert (len(train), len(test)) == (75, 25)
    assert np.bincount(test.labels).tolist() == [20, 5]
    assert np.bincount(train.labels).tolist() == [60, 15]
    rows = np.concatenate([train.features[:, 0], test.features[:, 0]])
    assert sorted(rows.tolist()) == list(range(100))


def test_split_is_reproducible_and_non_empty() -> None:
    data = make_dataset(7)
    first = data.train_test_split(0.01, np.random.default_rng(5), stratify=False)
    second = data.train_test_split(0.01, np.random.default_rng(5), stratify=False)
    assert len(first[1]) == 1
    np.testing.assert_array_equal(first[1].features, second[1].features)
    with pytest.raises(ConfigurationError, match="between 0 and 1"):
        data.train_test_split(1.0, np.random.default_rng(0), stratify=False)
