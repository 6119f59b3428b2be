"""Aggregation throughput and memory: streaming from stored files against all in memory.

Writes ``--updates`` safetensors files of ``--params`` float32 parameters each, then
times each aggregation rule reading them back, and measures its peak Python-heap memory
(numpy allocations included) in a separate, traced run. The file bytes are in the page
cache after the first read, so the figures are for aggregation, not for the disk.

    python bench/aggregate_bench.py                 # 10 updates x 10M parameters
    python bench/aggregate_bench.py --params 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from federation.aggregation import maths, streaming
from federation.aggregation.strategies import CoordinateMedian, FedAvg, MultiKrum, TrimmedMean
from federation.aggregation.streaming import StoredUpdate
from federation.types import ModelSpec, TensorSpec, Weights
from federation.wire import serialize_weights


# Two tensors, so the bench crosses a tensor boundary like a real model does.
def make_spec(num_params: int) -> ModelSpec:
    head = min(1000, num_params // 10)
    return ModelSpec((TensorSpec("body.weight", (num_params - head,)), TensorSpec("head.weight", (head,))))


def write_updates(folder: Path, spec: ModelSpec, num_updates: int) -> list[StoredUpdate]:
    rng = np.random.default_rng(0)
    updates = []
    for index in range(num_updates):
        weights = {t.name: rng.standard_normal(t.shape, dtype=np.float32) for t in spec.tensors}
        path = folder / f"update-{index}.safetensors"
        path.write_bytes(serialize_weights(weights, spec=spec))
        updates.append(StoredUpdate(path, num_examples=int(rng.integers(100, 1000))))
    return updates


def in_memory_fedavg(updates: Sequence[StoredUpdate], spec: ModelSpec) -> Weights:
    """The textbook way: load every update, check it, then average the stack."""
    loaded = [load_file(u.path) for u in updates]
    for weights in loaded:
        for array in weights.values():
            if not np.isfinite(array).all():
                raise ValueError("non-finite update")
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    return {
        t.name: np.average(np.stack([w[t.name] for w in loaded]), axis=0, weights=counts).astype(np.float32)
        for t in spec.tensors
    }


def time_runs(run: Callable[[], Weights], repeats: int) -> tuple[float, Weights]:
    result = run()  # warm-up: page cache, thread pool, allocator
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def peak_heap_bytes(run: Callable[[], Weights]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-robust", action="store_true", help="only the weighted mean")
    args = parser.parse_args()

    spec = make_spec(args.params)
    global_weights = spec.zeros()
    model_bytes = spec.nbytes
    update_bytes = model_bytes * args.updates
    with tempfile.TemporaryDirectory() as folder:
        updates = write_updates(Path(folder), spec, args.updates)
        counts = [u.num_examples for u in updates]
        weights = maths.normalized_weights(counts).tolist()
        runs: dict[str, Callable[[], Weights]] = {
            "fedavg streaming (files)": lambda: FedAvg().aggregate(global_weights, updates).weights,
            "fedavg streaming, 1 thread": lambda: streaming.weighted_mean(
                updates, weights, spec, num_threads=1
            ),
            "fedavg all in memory": lambda: in_memory_fedavg(updates, spec),
        }
        if not args.skip_robust:
            runs["median streaming"] = lambda: CoordinateMedian().aggregate(global_weights, updates).weights
            runs["trimmed mean 0.1 streaming"] = (
                lambda: TrimmedMean(beta=0.1).aggregate(global_weights, updates).weights
            )
            byzantine = max(0, min(2, (args.updates - 3) // 2))  # Krum needs n >= 2f + 3
            selected = max(1, min(5, args.updates - byzantine))
            krum = MultiKrum(num_byzantine=byzantine, num_selected=selected)
            runs[f"multi-krum f={byzantine} m={selected} streaming"] = lambda: krum.aggregate(
                global_weights, updates
            ).weights
        print(
            f"{args.updates} updates x {args.params:,} float32 parameters "
            f"({update_bytes / 1e9:.2f} GB of updates; one model is {model_bytes / 1e6:.0f} MB)"
        )
        print(f"{'rule':32} {'seconds':>9} {'GB/s':>7} {'peak MB':>9} {'models':>7}")
        reference: Weights | None = None
        for label, run in runs.items():
            seconds, result = time_runs(run, args.repeats)
            peak = peak_heap_bytes(run)
            print(
                f"{label:32} {seconds:9.4f} {update_bytes / seconds / 1e9:7.2f} "
                f"{peak / 1e6:9.1f} {peak / model_bytes:7.2f}"
            )
            if label.startswith("fedavg"):
                reference = reference or result
                worst = max(
                    float(np.max(np.abs(result[n] - reference[n])) / np.max(np.abs(reference[n])))
                    for n in spec.names
                )
                assert worst < 1e-6, f"{label} differs from the streaming result by {worst:.2e} relative"


if __name__ == "__main__":
    main()
