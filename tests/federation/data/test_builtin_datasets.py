import numpy as np
import pytest

from federation.data import BUILTIN_DATASETS, load_builtin
from federation.errors import ConfigurationError
from federation.types import Task


@pytest.mark.parametrize(
    ("name", "shape", "task", "num_classes"),
    [
        ("breast_cancer", (569, 30), Task.BINARY, 2),
        ("diabetes", (442, 10), Task.REGRESSION, 1),
        ("digits", (1797, 64), Task.MULTICLASS, 10),
    ],
)
def test_builtin_shapes(name: str, shape: tuple[int, int], task: Task, num_classes: int) -> None:
    data = load_builtin(name)
    assert data.features.shape == shape
    assert data.features.dtype == np.float32
    assert data.task is task
    assert data.num_classes == num_classes
    assert len(data.feature_names) == shape[1]
    if task is Task.REGRESSION:
        assert data.labels.dtype == np.float32
    else:
        assert data.labels.dtype == np.int64
        assert sorted(np.unique(data.labels).tolist()) == list(range(num_classes))


def test_digits_are_scaled_to_unit_interval() -> None:
    features = load_builtin("digits").features
    assert features.min() == 0.0
    assert features.max() == 1.0


def test_unknown_builtin_lists_choices() -> None:
    assert BUILTIN_DATASETS == ("breast_cancer", "diabetes", "digits")
    with pytest.raises(ConfigurationError, match="breast_cancer, diabetes, digits"):
        load_builtin("mnist")
