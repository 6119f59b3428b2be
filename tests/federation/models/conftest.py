"""Small real data sets (bundled with scikit-learn, no download) split into train/test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits


@dataclass(frozen=True)
class Split:
    x_train: NDArray[np.float32]
    y_train: NDArray[np.generic]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.generic]


def _split(x: NDArray[np.float64], y: NDArray[np.generic], *, standardize: str | None) -> Split:
    """75/25 split; ``standardize`` is "columns" (per feature), "global" (one mean and std
    for all pixels of an image) or None, always with training statistics only."""
    order = np.random.default_rng(1234).permutation(x.shape[0])
    cut = int(0.75 * x.shape[0])
    train, test = order[:cut], order[cut:]
    x_train, x_test = x[train], x[test]
    if standardize == "columns":
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    elif standardize == "global":
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Split(x_train.astype(np.float32), y[train], x_test.astype(np.float32), y[test])


@pytest.fixture(scope="session")
def breast_cancer() -> Split:
    x, y = load_breast_cancer(return_X_y=True)
    return _split(x, y, standardize="columns")


@pytest.fixture(scope="session")
def digits() -> Split:
    x, y = load_digits(return_X_y=True)
    return _split(x, y, standardize="global")


@pytest.fixture(scope="session")
def diabetes() -> Split:
    x, y = load_diabetes(return_X_y=True)
    split = _split(x, y, standardize="columns")
    mean, std = split.y_train.mean(), split.y_train.std()
    return Split(split.x_train, (split.y_train - mean) / std, split.x_test, (split.y_test - mean) / std)
