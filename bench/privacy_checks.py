"""The privacy checks as figures: what the tests assert, measured and printed.

* secure aggregation against plaintext FedAvg (5 sites, 0, 1 and 2 dropping after masking
  keys were shared), against the stated error bound;
* how much a stored masked vector correlates with its site's update;
* a round with fewer survivors than the threshold;
* our epsilon against dp-accounting's RDP accountant used directly, and Opacus's;
* the measured standard deviation of DP-FedAvg's noise against the intended one.

    python bench/privacy_checks.py              # prints a table, then one JSON line
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
from dp_accounting import dp_event, rdp
from opacus.accountants import RDPAccountant

from federation.aggregation.strategies import FedAvg
from federation.errors import SecureAggregationError
from federation.privacy import accounting, dp, secagg
from federation.privacy.secure_fedavg import secure_round
from federation.types import ClientUpdate

DELTA = 1e-5
NUM_EXAMPLES = (120, 80, 45, 200, 60)
MECHANISMS = (  # (noise multiplier, sampling rate, steps)
    (1.0, 1.0, 50),
    (4.7, 1.0, 10),
    (1.1, 0.2, 50),
    (2.4, 0.0667, 150),
    (0.9, 0.01, 1000),
)


def _updates(dimension: int, rng: np.random.Generator) -> tuple[dict, list[ClientUpdate]]:  # type: ignore[type-arg]
    # float64 models, so the comparison shows the protocol's own error, not float32 rounding.
    start = {"w": rng.normal(0, 1, dimension)}
    updates = [
        ClientUpdate({"w": start["w"] + rng.normal(0, 0.1, dimension)}, num_examples=n) for n in NUM_EXAMPLES
    ]
    return start, updates


def secure_against_plaintext(dimension: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    start, updates = _updates(dimension, rng)
    rows: list[dict[str, float]] = []
    for dropped in (0, 1, 2):
        gone = set(range(1, dropped + 1))
        result = secure_round(start, updates, strategy=FedAvg(), threshold=3, dropped_before_masking=gone)
        survivors = [u for site, u in enumerate(updates, start=1) if site not in gone]
        plain = FedAvg().aggregate(start, survivors).weights["w"]
        error = float(np.max(np.abs(result.weights["w"] - plain)))
        bound = secagg.error_bound(len(survivors)) / sum(u.num_examples for u in survivors)
        rows.append({"dropped": dropped, "max_error": error, "bound": bound})
    return rows


def masked_correlation(dimension: int) -> dict[str, float]:
    config = secagg.SecAggConfig(round_context=b"bench", threshold=3, dimension=dimension + 1)
    clients = {site: secagg.SecAggClient(site_id=site, config=config) for site in range(1, 6)}
    roster = {site: client.advertise_keys() for site, client in clients.items()}
    bundles = {site: client.share_keys(roster) for site, client in clients.items()}
    rng = np.random.default_rng(1)
    worst = 0.0
    for site, client in clients.items():
        vector = secagg.pack_weighted(rng.normal(0, 1, dimension), 50.0)
        inbound = {sender: bundle[site] for sender, bundle in bundles.items() if sender != site}
        masked = client.masked_input(vector, inbound)
        correlation = np.corrcoef(masked[:-1].view(np.int64).astype(np.float64), vector[:-1])[0, 1]
        worst = max(worst, abs(float(correlation)))
    return {"max_abs_correlation": worst, "noise_level_4_over_sqrt_d": 4 / np.sqrt(dimension)}


def too_few_survivors() -> str:
    rng = np.random.default_rng(2)
    start, updates = _updates(1000, rng)
    try:
        secure_round(start, updates, strategy=FedAvg(), threshold=3, dropped_before_masking={1, 2, 3})
    except SecureAggregationError as error:
        return str(error)
    raise AssertionError("three of five dropping with threshold 3 must fail the round")


def _direct(noise: float, rate: float, steps: int) -> float:
    accountant = rdp.RdpAccountant()
    gaussian = dp_event.GaussianDpEvent(noise)
    event = gaussian if rate == 1.0 else dp_event.PoissonSampledDpEvent(rate, gaussian)
    accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(DELTA))


def epsilons() -> list[dict[str, float]]:
    rows = []
    for noise, rate, steps in MECHANISMS:
        ours = accounting.events_epsilon([accounting.PrivacyEvent(noise, rate, steps)], delta=DELTA)
        opacus = RDPAccountant()
        opacus.history = [(noise, rate, steps)]
        rows.append(
            {
                "noise_multiplier": noise,
                "sampling_rate": rate,
                "steps": steps,
                "ours": ours,
                "dp_accounting": _direct(noise, rate, steps),
                "opacus": float(opacus.get_epsilon(DELTA)),
            }
        )
    return rows


def noise_std(num_values: int) -> dict[str, float]:
    """DP-FedAvg on 4 sites whose deltas are all zero: what moves is the noise alone."""
    start = {"w": np.zeros(num_values, np.float32)}
    updates = [start] * 4
    noisy, details = dp.dp_fedavg(
        start, updates, noise_multiplier=1.1, clipping_norm=0.5, rng=dp.secure_generator()
    )
    return {"intended": float(details["noise_std"]), "measured": float(np.std(noisy["w"].astype(np.float64)))}


def main() -> None:
    # dp-accounting logs each fractional RDP order it leaves out; the result stays a bound.
    logging.getLogger("absl").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dimension", type=int, default=100_000, help="parameters per update")
    args = parser.parse_args()
    figures = {
        "secure_vs_plaintext": secure_against_plaintext(args.dimension),
        "correlation": masked_correlation(args.dimension),
        "too_few_survivors": too_few_survivors(),
        "epsilon": epsilons(),
        "noise_std": noise_std(1_000_000),
    }
    print_tables(figures)
    print(json.dumps(figures))


def print_tables(figures: dict) -> None:  # type: ignore[type-arg]
    print("| sites dropped after sharing | max error against plaintext FedAvg | stated bound |")
    print("|---|---|---|")
    for row in figures["secure_vs_plaintext"]:
        print(f"| {row['dropped']} of 5 | {row['max_error']:.2e} | {row['bound']:.2e} |")
    correlation = figures["correlation"]
    print(
        f"\nmasked vector against its update: max |r| {correlation['max_abs_correlation']:.4f} "
        f"(4/sqrt(d) = {correlation['noise_level_4_over_sqrt_d']:.4f})"
    )
    print(f"3 of 5 dropped, threshold 3: {figures['too_few_survivors']}\n")
    print("| noise | sampling rate | steps | ours | dp-accounting | Opacus | ours / dp-accounting |")
    print("|---|---|---|---|---|---|---|")
    for row in figures["epsilon"]:
        print(
            f"| {row['noise_multiplier']} | {row['sampling_rate']} | {row['steps']} | {row['ours']:.4f} "
            f"| {row['dp_accounting']:.4f} | {row['opacus']:.4f} | {row['ours'] / row['dp_accounting']:.5f} |"
        )
    std = figures["noise_std"]
    ratio = std["measured"] / std["intended"]
    print(
        f"\nDP-FedAvg noise std: intended {std['intended']:.5f}, "
        f"measured {std['measured']:.5f} ({ratio:.4f}x)"
    )


if __name__ == "__main__":
    main()
