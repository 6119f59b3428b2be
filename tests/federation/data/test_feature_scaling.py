import numpy as np
import pytest

from federation.data import (
    DataSchema,
    FeatureKind,
    FeatureMoments,
    FeatureSpec,
    Standardizer,
    combine_moments,
    local_moments,
)
from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task


def test_combined_moments_equal_pooled_mean_and_std() -> None:
    rng = np.random.default_rng(3)
    sites = [
        rng.normal(loc=5.0, scale=2.0, size=(40, 4)),
        rng.normal(loc=-1.0, scale=0.5, size=(7, 4)),
        rng.uniform(0, 100, size=(120, 4)),
    ]
    combined = combine_moments([local_moments(site) for site in sites])
    pooled = np.concatenate(sites)
    assert combined.count == 167
    standardizer = Standardizer.from_moments(combined)
    np.testing.assert_allclose(standardizer.mean, pooled.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(standardizer.std, pooled.std(axis=0), rtol=1e-8)
    scaled = standardizer.transform(pooled)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-5)


def test_moments_are_aggregates_only() -> None:
    moments = local_moments(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert moments.count == 2
    assert moments.sum.tolist() == [4.0, 6.0]
    assert moments.sum_sq.tolist() == [10.0, 20.0]
    restored = FeatureMoments.from_json(moments.to_json())
    assert restored.count == 2
    np.testing.assert_array_equal(restored.sum, moments.sum)
    np.testing.assert_array_equal(restored.sum_sq, moments.sum_sq)
    with pytest.raises(ConfigurationError, match="malformed"):
        FeatureMoments.from_json({"count": 2, "sum": [1.0]})


def test_constant_feature_gets_unit_scale() -> None:
    standardizer = Standardizer.from_moments(local_moments(np.array([[7.0, 1.0], [7.0, 3.0]])))
    assert standardizer.std.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(standardizer.transform([[7.0, 2.0]]), [[0.0, 0.0]])


def test_standardizer_json_round_trip_and_shape_check() -> None:
    standardizer = Standardizer(mean=np.array([1.0, 2.0]), std=np.array([0.5, 4.0]))
    restored = Standardizer.from_json(standardizer.to_json())
    np.testing.assert_array_equal(restored.mean, standardizer.mean)
    np.testing.assert_array_equal(restored.std, standardizer.std)
    with pytest.raises(DataSchemaError, match=r"\(rows, 2\)"):
        standardizer.transform(np.zeros((3, 3)))
    with pytest.raises(ConfigurationError, match="positive"):
        Standardizer(mean=np.zeros(1), std=np.zeros(1))


def test_combine_rejects_mismatched_or_empty() -> None:
    with pytest.raises(ConfigurationError, match="different numbers of features"):
        combine_moments([local_moments(np.zeros((2, 2))), local_moments(np.zeros((2, 3)))])
    with pytest.raises(ConfigurationError, match="empty"):
        combine_moments([])
    with pytest.raises(DataSchemaError, match="NaN"):
        local_moments(np.array([[np.nan]]))


def test_schema_ranges_map_to_unit_interval() -> None:
    schema = DataSchema(
        features=(
            FeatureSpec("age", value_range=(20.0, 120.0)),
            FeatureSpec("sex", FeatureKind.CATEGORICAL, ("f", "m")),
            FeatureSpec("smoker", FeatureKind.BOOLEAN),
        ),
        label="y",
        task=Task.REGRESSION,
    )
    standardizer = Standardizer.from_schema_ranges(schema)
    np.testing.assert_allclose(
        standardizer.transform([[70.0, 0.0, 1.0, 1.0], [20.0, 1.0, 0.0, 0.0]]),
        [[0.5, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
    )
    unranged = DataSchema((FeatureSpec("age"),), label="y", task=Task.REGRESSION)
    with pytest.raises(ConfigurationError, match="without a declared value_range: age"):
        Standardizer.from_schema_ranges(unranged)
