"""Split one data set into synthetic silos for simulations.

Real studies never partition: each hospital holds its own rows. The simulator, however,
needs to mimic how hospitals differ, so it splits a public data set with one of these
partitioners. Each returns one sorted ``intp`` index array per silo; the arrays are
disjoint, together cover every row, and none is empty (if that is impossible the
partitioner raises :class:`~federation.errors.ConfigurationError`). All randomness comes
from the explicit ``rng``, so the same seed gives the same partition.

* :func:`partition_iid`: uniformly random, (almost) equal sizes.
* :func:`partition_dirichlet_labels`: label skew; each class is spread over the silos
  with proportions drawn from ``Dir(alpha)``. Small ``alpha`` (e.g. 0.1) gives silos
  dominated by few classes, large ``alpha`` (e.g. 100) approaches IID.
* :func:`partition_quantity_skew`: silo sizes drawn from ``Dir(alpha)``, labels IID.
* :func:`partition_by_site`: one silo per value of the data's site column.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from federation.data.schema import Dataset
from federation.errors import ConfigurationError
from federation.types import Task

#: The default ``min_size`` of :func:`partition_dirichlet_labels` (capped at n // silos).
DEFAULT_MIN_SIZE = 10
#: How many times :func:`partition_dirichlet_labels` redraws before giving up.
DEFAULT_MAX_ATTEMPTS = 1000


class PartitionKind(enum.StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"
    QUANTITY_SKEW = "quantity_skew"
    SITE = "site"


def partition_iid(num_rows: int, num_silos: int, rng: np.random.Generator) -> list[NDArray[np.intp]]:
    """Shuffle the rows and deal them into ``num_silos`` parts whose sizes differ by at most one."""
    _check_counts(num_rows, num_silos)
    return [np.sort(part) for part in np.array_split(rng.permutation(num_rows).astype(np.intp), num_silos)]


def partition_dirichlet_labels(
    labels: ArrayLike,
    num_silos: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[NDArray[np.intp]]:
    """Label-skewed partition: per class, silo shares are drawn from ``Dir(alpha)``.

    This is the scheme of Hsu, Qi and Brown, "Measuring the effects of non-identical
    data distribution for federated visual classification" (2019), as also used by
    Yurochkin et al., "Bayesian nonparametric federated learning of neural networks"
    (ICML 2019). For each class (in random order) a proportion vector
    ``p ~ Dir(alpha * 1)`` over the silos is drawn and the class's rows are dealt out
    by a multinomial draw with ``p``. As in Yurochkin et al.'s partitioning, a silo that
    already holds its fair share ``n / num_silos`` of rows gets no further rows (its
    proportion is zeroed and ``p`` renormalized), which keeps silo sizes from
    running away.

    The whole draw is repeated, up to ``max_attempts`` times, until every silo holds at
    least ``min_size`` rows. ``min_size`` defaults to ``min(10, n // num_silos)``; an
    explicit value must lie in ``[1, n // num_silos]``. If no attempt succeeds a
    :class:`~federation.errors.ConfigurationError` suggests a larger ``alpha`` or a
    smaller ``min_size``.
    """
    values = np.asarray(labels)
    if values.ndim != 1:
        raise ConfigurationError(f"labels must be a 1-D array, got shape {values.shape}")
    num_rows = int(values.shape[0])
    _check_counts(num_rows, num_silos)
    _check_alpha(alpha)
    fair_share = num_rows // num_silos
    if min_size is None:
        min_size = min(DEFAULT_MIN_SIZE, fair_share)
    elif not 1 <= min_size <= fair_share:
        raise ConfigurationError(
            f"min_size must lie in [1, {fair_share}] for {num_rows} rows over {num_silos} silos, "
            f"got {min_size}"
        )
    if max_attempts < 1:
        raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")

    _, class_of_row = np.unique(values, return_inverse=True)
    class_of_row = class_of_row.reshape(-1)
    class_sizes = np.bincount(class_of_row)
    counts = _draw_label_counts(class_sizes, num_silos, alpha, min_size, max_attempts, rng)
    if counts is None:
        raise ConfigurationError(
            f"could not give each of {num_silos} silos at least {min_size} rows in {max_attempts} "
            f"Dirichlet draws with alpha={alpha} ({num_rows} rows, {len(class_sizes)} classes); "
            "use a larger alpha, fewer silos or a smaller min_size"
        )

    parts: list[list[NDArray[np.intp]]] = [[] for _ in range(num_silos)]
    for cls, row_counts in enumerate(counts):
        rows = rng.permutation(np.flatnonzero(class_of_row == cls)).astype(np.intp)
        for silo, chunk in enumerate(np.split(rows, np.cumsum(row_counts)[:-1])):
            parts[silo].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def _draw_label_counts(
    class_sizes: NDArray[np.int64],
    num_silos: int,
    alpha: float,
    min_size: int,
    max_attempts: int,
    rng: np.random.Generator,
) -> NDArray[np.int64] | None:
    """A ``(classes, silos)`` matrix of row counts meeting ``min_size``, or ``None``."""
    fair_share = class_sizes.sum() / num_silos
    concentration = np.full(num_silos, alpha)
    for _ in range(max_attempts):
        counts = np.zeros((len(class_sizes), num_silos), dtype=np.int64)
        silo_sizes = np.zeros(num_silos, dtype=np.int64)
        for cls in rng.permutation(len(class_sizes)):
            shares = _dirichlet(concentration, rng)
            open_shares = np.where(silo_sizes < fair_share, shares, 0.0)
            if open_shares.sum() > 0:
                shares = open_shares / open_shares.sum()
            counts[cls] = rng.multinomial(class_sizes[cls], shares)
            silo_sizes += counts[cls]
        if silo_sizes.min() >= min_size:
            return counts
    return None


def partition_quantity_skew(
    num_rows: int, num_silos: int, alpha: float, rng: np.random.Generator
) -> list[NDArray[np.intp]]:
    """Quantity skew: silo sizes follow ``Dir(alpha)`` (each silo gets at least one row).

    Every silo first gets one row; the remaining ``num_rows - num_silos`` rows are dealt
    by a multinomial draw with proportions ``p ~ Dir(alpha * 1)``. Which rows go where
    is uniformly random, so label proportions stay (approximately) IID.
    """
    _check_counts(num_rows, num_silos)
    _check_alpha(alpha)
    shares = _dirichlet(np.full(num_silos, alpha), rng)
    sizes = 1 + rng.multinomial(num_rows - num_silos, shares)
    rows = rng.permutation(num_rows).astype(np.intp)
    return [np.sort(part) for part in np.split(rows, np.cumsum(sizes)[:-1])]


def partition_by_site(sites: ArrayLike) -> tuple[list[NDArray[np.intp]], list[str]]:
    """One silo per distinct site value, sorted by site name (values compared as strings)."""
    names = np.asarray(sites)
    if names.ndim != 1:
        raise ConfigurationError(f"sites must be a 1-D array, got shape {names.shape}")
    if names.shape[0] == 0:
        raise ConfigurationError("cannot partition zero rows by site")
    unique, site_of_row = np.unique(names.astype(np.str_), return_inverse=True)
    site_of_row = site_of_row.reshape(-1)
    parts = [np.flatnonzero(site_of_row == i).astype(np.intp) for i in range(len(unique))]
    return parts, [str(name) for name in unique]


def partition(
    dataset: Dataset,
    kind: PartitionKind | str,
    num_silos: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
    min_size: int | None = None,
) -> list[NDArray[np.intp]]:
    """Split ``dataset`` into ``num_silos`` index arrays with the partitioner ``kind``.

    ``alpha`` is used by the Dirichlet and quantity-skew partitioners, ``min_size`` by
    the Dirichlet one. ``SITE`` needs ``dataset.sites`` and ``num_silos`` equal to the
    number of distinct sites (silos come sorted by site name). ``DIRICHLET`` needs a
    classification dataset.
    """
    try:
        kind = PartitionKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in PartitionKind)
        raise ConfigurationError(f"unknown partition kind {kind!r}; choose one of: {choices}") from None
    if kind is PartitionKind.IID:
        return partition_iid(len(dataset), num_silos, rng)
    if kind is PartitionKind.DIRICHLET:
        if dataset.task is Task.REGRESSION:
            raise ConfigurationError("Dirichlet label skew needs class labels; use iid or quantity_skew")
        return partition_dirichlet_labels(dataset.labels, num_silos, alpha, rng, min_size=min_size)
    if kind is PartitionKind.QUANTITY_SKEW:
        return partition_quantity_skew(len(dataset), num_silos, alpha, rng)
    if dataset.sites is None:
        raise ConfigurationError("partitioning by site needs a dataset with a site column")
    parts, names = partition_by_site(dataset.sites)
    if len(parts) != num_silos:
        raise ConfigurationError(
            f"the data has {len(parts)} sites ({', '.join(names)}) but {num_silos} silos were requested"
        )
    return parts


def _check_counts(num_rows: int, num_silos: int) -> None:
    if num_silos < 1:
        raise ConfigurationError(f"num_silos must be at least 1, got {num_silos}")
    if num_rows < num_silos:
        raise ConfigurationError(
            f"cannot give each of {num_silos} silos a row: the data has only {num_rows} row(s)"
        )


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigurationError(f"alpha must be a positive finite number, got {alpha}")


def _dirichlet(concentration: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """A ``Dir(concentration)`` draw, guarded against the degenerate all-zero result that
    floating-point underflow can give for tiny concentrations."""
    shares = rng.dirichlet(concentration)
    total = shares.sum()
    if not (np.all(np.isfinite(shares)) and total > 0):
        shares = np.zeros_like(concentration)
        shares[rng.integers(len(concentration))] = 1.0
        total = 1.0
    return np.asarray(shares / total, dtype=np.float64)
