import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from federation.data import (
    Dataset,
    PartitionKind,
    load_builtin,
    partition,
    partition_by_site,
    partition_dirichlet_labels,
    partition_iid,
    partition_quantity_skew,
)
from federation.errors import ConfigurationError
from federation.types import Task


def assert_valid_partition(parts: list[NDArray[np.intp]], num_rows: int, num_silos: int) -> None:
    assert len(parts) == num_silos
    for part in parts:
        assert part.dtype == np.intp
        assert part.ndim == 1
        assert len(part) > 0
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates within a silo
    merged = np.concatenate(parts)
    assert len(merged) == num_rows  # disjoint ...
    assert np.array_equal(np.sort(merged), np.arange(num_rows))  # ... and covering


@st.composite
def rows_and_silos(draw: st.DrawFn) -> tuple[int, int]:
    num_rows = draw(st.integers(1, 400))
    return num_rows, draw(st.integers(1, min(num_rows, 40)))


@settings(max_examples=60, deadline=None)
@given(rows_and_silos(), st.integers(0, 2**32))
def test_iid_partition_is_valid_and_balanced(sizes: tuple[int, int], seed: int) -> None:
    num_rows, num_silos = sizes
    parts = partition_iid(num_rows, num_silos, np.random.default_rng(seed))
    assert_valid_partition(parts, num_rows, num_silos)
    lengths = [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1


@settings(max_examples=60, deadline=None)
@given(rows_and_silos(), st.floats(0.01, 100.0), st.integers(0, 2**32))
def test_quantity_skew_partition_is_valid(sizes: tuple[int, int], alpha: float, seed: int) -> None:
    num_rows, num_silos = sizes
    parts = partition_quantity_skew(num_rows, num_silos, alpha, np.random.default_rng(seed))
    assert_valid_partition(parts, num_rows, num_silos)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.integers(1, 60), min_size=2, max_size=5),
    st.floats(1.0, 100.0),
    st.integers(0, 2**32),
)
def test_dirichlet_partition_is_valid(
    num_silos: int, class_sizes: list[int], alpha: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(class_sizes)), class_sizes))
    num_rows = len(labels)
    if num_rows < 30 * num_silos:  # keep every draw comfortably feasible
        labels = np.concatenate([labels, np.zeros(30 * num_silos - num_rows, dtype=labels.dtype)])
        num_rows = len(labels)
    parts = partition_dirichlet_labels(labels, num_silos, alpha, rng)
    assert_valid_partition(parts, num_rows, num_silos)
    assert min(len(p) for p in parts) >= min(10, num_rows // num_silos)


def label_proportions(
    labels: NDArray[np.int64], parts: list[NDArray[np.intp]], num_classes: int
) -> NDArray[np.float64]:
    return np.array([np.bincount(labels[p], minlength=num_classes) / len(p) for p in parts])


def test_dirichlet_alpha_controls_label_skew() -> None:
    digits = load_builtin("digits")
    overall = np.bincount(digits.labels) / len(digits)

    near_iid = partition_dirichlet_labels(digits.labels, 5, 1000.0, np.random.default_rng(0))
    proportions = label_proportions(digits.labels, near_iid, 10)
    assert np.max(np.abs(proportions - overall)) < 0.08
    assert np.mean(proportions.max(axis=1)) < 0.15

    skewed = partition_dirichlet_labels(digits.labels, 5, 0.1, np.random.default_rng(0))
    proportions = label_proportions(digits.labels, skewed, 10)
    # dominant class of a silo: about 0.1 under IID, far larger under strong skew
    assert np.mean(proportions.max(axis=1)) > 0.3
    assert np.max(np.abs(proportions - overall)) > 0.2
    assert min(len(p) for p in skewed) >= 10


@pytest.mark.parametrize("kind", ["iid", "quantity_skew", "dirichlet"])
def test_same_seed_same_partition(kind: str) -> None:
    labels = np.arange(300) % 3

    def make(seed: int) -> list[NDArray[np.intp]]:
        rng = np.random.default_rng(seed)
        if kind == "iid":
            return partition_iid(300, 4, rng)
        if kind == "quantity_skew":
            return partition_quantity_skew(300, 4, 0.5, rng)
        return partition_dirichlet_labels(labels, 4, 0.5, rng)

    first, second, other = make(7), make(7), make(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_quantity_skew_small_alpha_gives_unequal_sizes() -> None:
    parts = partition_quantity_skew(1000, 5, 0.1, np.random.default_rng(0))
    lengths = sorted(len(p) for p in parts)
    assert lengths[-1] > 400
    assert lengths[0] < 100


def test_impossible_partitions_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigurationError, match="only 3 row"):
        partition_iid(3, 4, rng)
    with pytest.raises(ConfigurationError, match="num_silos"):
        partition_quantity_skew(3, 0, 1.0, rng)
    with pytest.raises(ConfigurationError, match="alpha"):
        partition_quantity_skew(10, 2, 0.0, rng)
    with pytest.raises(ConfigurationError, match=r"min_size must lie in \[1, 5\]"):
        partition_dirichlet_labels(np.arange(10) % 2, 2, 1.0, rng, min_size=6)
    # two classes cannot be spread over 10 silos of >= 10 rows with alpha this small
    with pytest.raises(ConfigurationError, match="larger alpha"):
        partition_dirichlet_labels(np.arange(200) % 2, 10, 0.01, rng, max_attempts=50)


def test_partition_by_site_sorts_names() -> None:
    sites = np.array(["st-mary", "county", "st-mary", "aalborg", "county"])
    parts, names = partition_by_site(sites)
    assert names == ["aalborg", "county", "st-mary"]
    assert [p.tolist() for p in parts] == [[3], [1, 4], [0, 2]]
    assert_valid_partition(parts, 5, 3)


def make_dataset(task: Task = Task.BINARY) -> Dataset:
    n = 60
    return Dataset(
        features=np.zeros((n, 2), np.float32),
        labels=np.arange(n) % 2,
        task=task,
        feature_names=("a", "b"),
        num_classes=1 if task is Task.REGRESSION else 2,
        sites=np.array(["b", "a", "c"] * 20),
    )


@pytest.mark.parametrize("kind", list(PartitionKind))
def test_dispatcher_handles_every_kind(kind: PartitionKind) -> None:
    parts = partition(make_dataset(), kind, 3, np.random.default_rng(0), alpha=1.0)
    assert_valid_partition(parts, 60, 3)


def test_dispatcher_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigurationError, match="unknown partition kind"):
        partition(make_dataset(), "random", 3, rng)
    with pytest.raises(ConfigurationError, match="3 sites"):
        partition(make_dataset(), PartitionKind.SITE, 2, rng)
    with pytest.raises(ConfigurationError, match="class labels"):
        partition(make_dataset(Task.REGRESSION), PartitionKind.DIRICHLET, 3, rng)
    assert partition(make_dataset(), "site", 3, rng)[0].tolist() == list(range(1, 60, 3))
