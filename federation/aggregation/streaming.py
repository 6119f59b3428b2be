"""Bounded-memory aggregation over updates held in memory or in stored safetensors files.

Every rule here walks the flattened parameter vector in chunks. For each chunk it reads
that chunk of every update into a small buffer, so the memory used is the output model
plus about ``num_threads * 3 * chunk_elements`` elements, whatever the number of silos
(the rules that stack all updates use chunks of ``chunk_elements / num_updates``). The
weighted rules fold the updates into one accumulator; the coordinate-wise
rules (median, trimmed mean) and the distances of Krum see one chunk of all updates at a
time. Chunks are shared among a few threads: the reads and the numpy kernels release the
GIL, so two cores read at close to memory speed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from federation.aggregation import maths
from federation.errors import ConfigurationError, NonFiniteValueError
from federation.types import ClientUpdate, ModelSpec, TensorSpec, Weights
from federation.wire import TensorFile, check_weights

#: 256 Ki elements (1 MiB of float32): the buffers stay in cache, and the chunks are large
#: enough that two threads rarely wait for each other's GIL hand-offs (64 Ki elements
#: made two threads slower than one; see bench/aggregate_bench.py).
DEFAULT_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class StoredUpdate:
    """An update whose tensors lie in a safetensors file, read lazily. With ``sha256`` (the
    file's digest), a reader that loads the whole file checks it first."""

    path: Path
    num_examples: int
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.num_examples <= 0:
            raise ConfigurationError(f"num_examples must be positive, got {self.num_examples}")


#: What the aggregation rules accept: updates in memory or in stored files.
UpdateLike = ClientUpdate | StoredUpdate


class SliceReader(Protocol):
    """Reads a slice of one flattened tensor of one update into a caller's buffer."""

    def read_into(self, name: str, start: int, out: NDArray[np.floating]) -> None: ...


class _MemoryReader:
    def __init__(self, weights: Weights, spec: ModelSpec) -> None:
        check_weights(weights, spec)
        self._flat = {
            t.name: np.ascontiguousarray(weights[t.name], t.numpy_dtype).reshape(-1) for t in spec.tensors
        }

    def read_into(self, name: str, start: int, out: NDArray[np.floating]) -> None:
        out[...] = self._flat[name][start : start + out.size]


@contextmanager
def open_readers(updates: Sequence[UpdateLike], spec: ModelSpec) -> Iterator[list[SliceReader]]:
    """Slice readers for ``updates``; stored files are header-checked and closed on exit."""
    with ExitStack() as stack:
        readers: list[SliceReader] = []
        for update in updates:
            if isinstance(update, StoredUpdate):
                readers.append(stack.enter_context(TensorFile(update.path, spec=spec)))
            else:
                readers.append(_MemoryReader(update.weights, spec))
        yield readers


@dataclass(frozen=True)
class _Chunk:
    tensor: TensorSpec
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def _chunks(spec: ModelSpec, chunk_elements: int) -> list[_Chunk]:
    return [
        _Chunk(tensor, start, min(start + chunk_elements, tensor.numel))
        for tensor in spec.tensors
        for start in range(0, tensor.numel, chunk_elements)
    ]


def _run_in_threads(
    chunks: list[_Chunk], work: Callable[[list[_Chunk]], None], num_threads: int | None
) -> None:
    """Split ``chunks`` into contiguous runs, one per thread, and wait for all of them."""
    threads = max(1, min(num_threads or min(2, os.cpu_count() or 1), len(chunks)))
    if threads == 1:
        work(chunks)
        return
    bounds = np.linspace(0, len(chunks), threads + 1).astype(int)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, chunks[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
        for future in futures:
            future.result()


def _flat_outputs(spec: ModelSpec) -> tuple[Weights, dict[str, NDArray[np.floating]]]:
    outputs = {t.name: np.empty(t.shape, dtype=t.numpy_dtype) for t in spec.tensors}
    return outputs, {name: array.reshape(-1) for name, array in outputs.items()}


def weighted_mean(
    updates: Sequence[UpdateLike],
    weights: Sequence[float],
    spec: ModelSpec,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    num_threads: int | None = None,
) -> Weights:
    """``sum(w_i * update_i) / sum(w_i)``, folding one update at a time into each chunk.

    Raises :class:`NonFiniteValueError` naming the first update that holds NaN or inf.
    """
    normalized = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    outputs, flat = _flat_outputs(spec)
    with open_readers(updates, spec) as readers:
        if len(readers) != len(normalized):
            raise ConfigurationError(f"{len(readers)} updates but {len(normalized)} weights")

        def work(chunks: list[_Chunk]) -> None:
            buffers = _Buffers(chunk_elements)
            for chunk in chunks:
                _fold_chunk(
                    readers, normalized, chunk, flat[chunk.tensor.name][chunk.start : chunk.stop], buffers
                )

        _run_in_threads(_chunks(spec, chunk_elements), work, num_threads)
    return outputs


class _Buffers:
    """Per-thread scratch space, allocated once per dtype."""

    def __init__(self, chunk_elements: int) -> None:
        self.chunk_elements = chunk_elements
        self._by_dtype: dict[np.dtype, tuple[NDArray[np.floating], NDArray[np.floating]]] = {}

    def pair(self, dtype: np.dtype, size: int) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        if dtype not in self._by_dtype:
            self._by_dtype[dtype] = (
                np.empty(self.chunk_elements, dtype=dtype),
                np.empty(self.chunk_elements, dtype=dtype),
            )
        read, scratch = self._by_dtype[dtype]
        return read[:size], scratch[:size]


def _fold_chunk(
    readers: Sequence[SliceReader],
    weights: NDArray[np.float64],
    chunk: _Chunk,
    accumulator: NDArray[np.floating],
    buffers: _Buffers,
) -> None:
    read, scratch = buffers.pair(accumulator.dtype, chunk.size)
    # The first update is read straight into the accumulator and scaled: no zero fill.
    readers[0].read_into(chunk.tensor.name, chunk.start, accumulator)
    accumulator *= float(weights[0])
    for reader, weight in zip(readers[1:], weights[1:], strict=True):
        reader.read_into(chunk.tensor.name, chunk.start, read)
        maths.accumulate_weighted(accumulator, read, float(weight), scratch=scratch)
    # A NaN or inf in any update (all weights are positive) leaves a NaN or inf here, so one
    # check of the sum stands for a check of every input.
    if not np.isfinite(accumulator).all():
        _raise_for_non_finite(readers, chunk, read)


def _raise_for_non_finite(readers: Sequence[SliceReader], chunk: _Chunk, read: NDArray[np.floating]) -> None:
    for index, reader in enumerate(readers):
        reader.read_into(chunk.tensor.name, chunk.start, read)
        if not np.isfinite(read).all():
            raise NonFiniteValueError(
                f"update {index}: tensor {chunk.tensor.name!r} holds NaN or infinite values"
            )
    raise NonFiniteValueError(f"tensor {chunk.tensor.name!r}: the weighted sum overflowed")


def coordinate_wise(
    updates: Sequence[UpdateLike],
    spec: ModelSpec,
    reduce: Callable[[NDArray[np.floating]], NDArray[np.floating]],
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    num_threads: int | None = None,
) -> Weights:
    """Apply ``reduce`` (stacked ``(num_updates, m)`` -> ``(m,)``) chunk by chunk."""
    outputs, flat = _flat_outputs(spec)
    stacked_chunk = _stacked_chunk_elements(chunk_elements, len(updates))
    with open_readers(updates, spec) as readers:

        def work(chunks: list[_Chunk]) -> None:
            stacks: dict[np.dtype, NDArray[np.floating]] = {}
            for chunk in chunks:
                stacked = _read_stacked(readers, chunk, stacks, stacked_chunk)
                flat[chunk.tensor.name][chunk.start : chunk.stop] = reduce(stacked)

        _run_in_threads(_chunks(spec, stacked_chunk), work, num_threads)
    return outputs


def _stacked_chunk_elements(chunk_elements: int, num_updates: int) -> int:
    """Chunk length for rules that hold one chunk of every update at once."""
    return max(1, min(chunk_elements, max(4096, chunk_elements // max(1, num_updates))))


def _read_stacked(
    readers: Sequence[SliceReader],
    chunk: _Chunk,
    stacks: dict[np.dtype, NDArray[np.floating]],
    chunk_elements: int,
) -> NDArray[np.floating]:
    dtype = chunk.tensor.numpy_dtype
    if dtype not in stacks:
        stacks[dtype] = np.empty((len(readers), chunk_elements), dtype=dtype)
    stacked = stacks[dtype][:, : chunk.size]
    for row, reader in enumerate(readers):
        reader.read_into(chunk.tensor.name, chunk.start, stacked[row])
    finite_rows = np.isfinite(stacked).all(axis=1)
    if not finite_rows.all():
        bad = int(np.flatnonzero(~finite_rows)[0])
        raise NonFiniteValueError(f"update {bad}: tensor {chunk.tensor.name!r} holds NaN or infinite values")
    return stacked


def pairwise_squared_distances(
    updates: Sequence[UpdateLike],
    spec: ModelSpec,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    num_threads: int | None = None,
) -> NDArray[np.float64]:
    """The ``(n, n)`` matrix of squared Euclidean distances between whole updates."""
    partials: list[NDArray[np.float64]] = []
    stacked_chunk = _stacked_chunk_elements(chunk_elements, len(updates))
    with open_readers(updates, spec) as readers:

        def work(chunks: list[_Chunk]) -> None:
            total = np.zeros((len(readers), len(readers)), dtype=np.float64)
            stacks: dict[np.dtype, NDArray[np.floating]] = {}
            for chunk in chunks:
                total += maths.pairwise_squared_distances(
                    _read_stacked(readers, chunk, stacks, stacked_chunk)
                )
            partials.append(total)  # list.append is atomic under the GIL

        _run_in_threads(_chunks(spec, stacked_chunk), work, num_threads)
    return np.sum(partials, axis=0) if partials else np.zeros((len(updates), len(updates)))
