"""Small public data sets for simulations and tests.

They ship inside scikit-learn (``sklearn.datasets``), so loading them never touches the
network. They stand in for hospital data when the simulator splits one data set into
synthetic silos with :mod:`federation.data.partition`. scikit-learn is imported only when
a data set is loaded, so importing :mod:`federation.data` (as the control plane does for
the schema) does not load it.

* ``breast_cancer``: Wisconsin diagnostic breast cancer, 569 x 30, binary
  (class 1 = benign, class 0 = malignant, as scikit-learn encodes it).
* ``diabetes``: diabetes progression, 442 x 10, regression (features as scikit-learn
  ships them: mean-centred and scaled).
* ``digits``: 8x8 handwritten digits, 1797 x 64, 10 classes; pixel intensities 0..16
  are divided by 16 so features lie in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from federation.data.schema import Dataset
from federation.errors import ConfigurationError
from federation.types import Task

#: Names accepted by :func:`load_builtin`.
BUILTIN_DATASETS: tuple[str, ...] = ("breast_cancer", "diabetes", "digits")


def load_builtin(name: str) -> Dataset:
    """Load one of :data:`BUILTIN_DATASETS` as a :class:`Dataset`."""
    loader = _LOADERS.get(name)
    if loader is None:
        raise ConfigurationError(
            f"unknown built-in dataset {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}"
        )
    return loader()


def _breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset(
        features=np.asarray(bunch.data, dtype=np.float32),
        labels=np.asarray(bunch.target, dtype=np.int64),
        task=Task.BINARY,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        num_classes=2,
    )


def _diabetes() -> Dataset:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    return Dataset(
        features=np.asarray(bunch.data, dtype=np.float32),
        labels=np.asarray(bunch.target, dtype=np.float32),
        task=Task.REGRESSION,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        num_classes=1,
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset(
        features=np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0),
        labels=np.asarray(bunch.target, dtype=np.int64),
        task=Task.MULTICLASS,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        num_classes=10,
    )


_LOADERS: dict[str, Callable[[], Dataset]] = {
    "breast_cancer": _breast_cancer,
    "diabetes": _diabetes,
    "digits": _digits,
}
