"""Secure aggregation's cost against plaintext FedAvg: client and server time, bytes sent.

Runs whole rounds of :mod:`federation.privacy.secagg` in one process for ``--sites``
sites with float32 updates of each size in ``--sizes``: once with every site surviving
and once with one site dropping after the key sharing (the server then also rebuilds
that site's mask key and removes its pairwise masks). Client time per site is key
agreement, secret sharing, packing, encoding and masking, and the unmasking answer.
Bytes per site are raw payload bytes (base64 in JSON would add a third): public keys,
share bundles, the masked uint64 vector and the unmasking shares, against one float32
safetensors update. Checks that the secure mean equals plaintext FedAvg within the bound.

    python bench/secagg_bench.py                        # 5 sites, 1M and 10M parameters
    python bench/secagg_bench.py --sizes 100000 --sites 7
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.aggregation import maths
from federation.privacy.secagg import (
    SECRET_BYTES,
    SHARE_BYTES,
    AdvertisedKeys,
    SecAggClient,
    SecAggConfig,
    error_bound,
    minimum_threshold,
    pack_weighted,
    unmask_sum,
    unpack_weighted_sum,
)
from federation.wire import serialize_weights


@dataclass
class RoundFigures:
    client_seconds: dict[int, float]
    server_seconds: float
    bytes_sent: dict[int, int]
    mean: NDArray[np.float64]


class Stopwatch:
    """Seconds spent by each site, summed over the round's steps."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = defaultdict(float)

    @contextmanager
    def site(self, site: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[site] += time.perf_counter() - start


def share_all(
    clients: Mapping[int, SecAggClient],
    roster: Mapping[int, AdvertisedKeys],
    watch: Stopwatch,
    sent: dict[int, int],
) -> dict[int, dict[int, bytes]]:
    """Each site's inbound share bundles, ``{receiver: {sender: bundle}}``."""
    inbound: dict[int, dict[int, bytes]] = defaultdict(dict)
    for sender, client in clients.items():
        with watch.site(sender):
            bundles = client.share_keys(roster)
        for receiver, bundle in bundles.items():
            inbound[receiver][sender] = bundle
            sent[sender] += len(bundle)
    return inbound


def secure_round(
    updates: Mapping[int, NDArray[np.float32]], counts: Mapping[int, int], dropped: Collection[int]
) -> RoundFigures:
    """One round, timed per site; ``dropped`` sites share keys and then vanish."""
    dimension = next(iter(updates.values())).size + 1
    config = SecAggConfig(b"bench;round=1", minimum_threshold(len(updates)), dimension)
    clients = {site: SecAggClient(site_id=site, config=config) for site in sorted(updates)}
    watch, sent, roster, masked = Stopwatch(), dict.fromkeys(clients, 0), {}, {}
    for site, client in clients.items():
        with watch.site(site):
            roster[site] = client.advertise_keys()
        sent[site] += 2 * SECRET_BYTES
    inbound = share_all(clients, roster, watch, sent)
    for site in (s for s in clients if s not in dropped):
        with watch.site(site):
            masked[site] = clients[site].masked_input(
                pack_weighted(updates[site], counts[site]), inbound[site]
            )
        sent[site] += masked[site].nbytes
    answers = {}
    for site in masked:
        with watch.site(site):
            answers[site] = clients[site].unmasking_shares(
                survivors=list(masked), dropped=dropped, inbound=inbound[site]
            )
        sent[site] += (len(answers[site].self_mask_shares) + len(answers[site].mask_key_shares)) * (
            SHARE_BYTES + 8
        )
    start = time.perf_counter()
    total = unmask_sum(config, roster, masked, answers, dropped)
    server_seconds = time.perf_counter() - start
    vector_sum, weight_sum = unpack_weighted_sum(total)
    return RoundFigures(dict(watch.seconds), server_seconds, sent, vector_sum / weight_sum)


def plaintext_fedavg(
    updates: Mapping[int, NDArray[np.float32]], counts: Mapping[int, int], sites: Collection[int]
) -> tuple[float, NDArray[np.float64]]:
    start = time.perf_counter()
    mean = maths.weighted_mean([updates[s] for s in sites], [counts[s] for s in sites])
    return time.perf_counter() - start, mean


def measure(num_params: int, num_sites: int) -> dict[str, float | int]:
    rng = np.random.default_rng(0)
    sites = list(range(1, num_sites + 1))
    updates = {site: rng.standard_normal(num_params, dtype=np.float32) * 0.01 for site in sites}
    counts = {site: int(rng.integers(100, 5000)) for site in sites}
    full = secure_round(updates, counts, dropped=())
    dropout = secure_round(updates, counts, dropped=(sites[-1],))
    plaintext_seconds, plaintext_mean = plaintext_fedavg(updates, counts, sites)
    for figures, survivors in ((full, sites), (dropout, sites[:-1])):
        reference = maths.weighted_mean([updates[s] for s in survivors], [counts[s] for s in survivors])
        weight_sum = sum(counts[s] for s in survivors)
        worst = float(np.max(np.abs(figures.mean - reference)))
        assert worst <= error_bound(len(survivors)) / weight_sum + 1e-12, f"secure mean off by {worst:.3e}"
    plaintext_bytes = len(serialize_weights({"update": updates[sites[0]]}))
    return {
        "params": num_params,
        "sites": num_sites,
        "client_seconds_per_site": float(np.mean(list(full.client_seconds.values()))),
        "server_seconds": full.server_seconds,
        "server_seconds_one_dropout": dropout.server_seconds,
        "plaintext_fedavg_seconds": plaintext_seconds,
        "bytes_per_site": int(np.mean(list(full.bytes_sent.values()))),
        "plaintext_bytes_per_site": plaintext_bytes,
        "max_abs_error_vs_plaintext": float(np.max(np.abs(full.mean - plaintext_mean))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--sites", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(size, args.sites) for size in args.sizes]
    threshold = minimum_threshold(args.sites)
    print(f"secure aggregation, {args.sites} sites, threshold {threshold}, float32 updates\n")
    print(
        "| params | client s/site | server s | server s, 1 dropout | plaintext FedAvg s "
        "| MB sent/site | plaintext MB/site | bytes ratio | max error vs plaintext |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['params']:,} | {row['client_seconds_per_site']:.3f} | {row['server_seconds']:.3f} "
            f"| {row['server_seconds_one_dropout']:.3f} | {row['plaintext_fedavg_seconds']:.4f} "
            f"| {row['bytes_per_site'] / 1e6:.2f} | {row['plaintext_bytes_per_site'] / 1e6:.2f} "
            f"| {row['bytes_per_site'] / row['plaintext_bytes_per_site']:.2f} "
            f"| {row['max_abs_error_vs_plaintext']:.1e} |"
        )
    print(json.dumps({"secagg": rows}))


if __name__ == "__main__":
    main()
