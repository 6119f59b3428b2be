"""Robust aggregation under attack: one malicious silo of five, four rules, five seeds.

    python bench/robustness.py         # prints the markdown table, writes docs/figures/robustness.png

Breast cancer, 5 silos IID, logistic regression, 10 rounds (the simulator's defaults
otherwise: client SGD, learning rate 0.1, batch 32, one local epoch per round). Silo 1
trains honestly, then sends what the attack makes of its update (``federation.attacks``).
Each cell is the final federated test accuracy, mean ± standard deviation over seeds 0
to 4. Every run is seeded, so the table repeats exactly on the same library versions.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import torch
from numpy.typing import NDArray

from federation.aggregation.strategies import CoordinateMedian, FedAvg, Krum, Strategy, TrimmedMean
from federation.attacks import AttackKind, little_is_enough_z
from federation.simulation import SimulationConfig, run_simulation

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
SEEDS = (0, 1, 2, 3, 4)
NUM_SILOS = 5
NUM_MALICIOUS = 1

STRATEGIES: dict[str, Strategy] = {
    "FedAvg": FedAvg(),
    "trimmed mean (beta 0.2)": TrimmedMean(beta=0.2),
    "median": CoordinateMedian(),
    "Krum (f 1)": Krum(num_byzantine=1),
}


@dataclass(frozen=True)
class Scenario:
    label: str
    attack: AttackKind
    scale: float | None = None


SCENARIOS = (
    Scenario("no attack", AttackKind.NONE),
    Scenario("sign flip (s 1)", AttackKind.SIGN_FLIP, 1.0),
    Scenario("scaled update (s 10)", AttackKind.SCALED, 10.0),
    Scenario(
        f"a little is enough (z {little_is_enough_z(NUM_SILOS, NUM_MALICIOUS):.3f})",
        AttackKind.LITTLE_IS_ENOUGH,
    ),
    # Not one of the three attacks asked for: a reversed update boosted as the scaled one is.
    Scenario("sign flip (s 10)", AttackKind.SIGN_FLIP, 10.0),
)

BASE = SimulationConfig(
    strategy=FedAvg(), dataset="breast_cancer", num_silos=NUM_SILOS, rounds=10, baselines=False
)


def final_accuracies(scenario: Scenario, strategy: Strategy) -> list[float]:
    """The final federated test accuracy for every seed."""
    config = replace(
        BASE,
        strategy=strategy,
        attack=scenario.attack,
        num_malicious=0 if scenario.attack is AttackKind.NONE else NUM_MALICIOUS,
        attack_scale=scenario.scale,
    )
    return [run_simulation(replace(config, seed=seed)).federated["accuracy"] for seed in SEEDS]


def measure() -> NDArray[np.float64]:
    """Accuracies indexed ``[scenario, strategy, seed]``."""
    return np.array(
        [[final_accuracies(scenario, strategy) for strategy in STRATEGIES.values()] for scenario in SCENARIOS]
    )


def markdown_table(accuracy: NDArray[np.float64]) -> str:
    lines = [
        "| attack (silo 1 of 5) | " + " | ".join(STRATEGIES) + " |",
        "|---" * (len(STRATEGIES) + 1) + "|",
    ]
    for scenario, row in zip(SCENARIOS, accuracy, strict=True):
        cells = [f"{runs.mean():.4f} ± {runs.std():.4f}" for runs in row]
        lines.append(f"| {scenario.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_heatmap(accuracy: NDArray[np.float64], path: Path) -> None:
    means = accuracy.mean(axis=2)
    figure, axes = plt.subplots(figsize=(8.4, 4.2), dpi=120)
    image = axes.imshow(means, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(STRATEGIES)), [label.replace(" (", "\n(") for label in STRATEGIES])
    axes.set_yticks(range(len(SCENARIOS)), [s.label for s in SCENARIOS])
    for row, scenario_runs in enumerate(accuracy):
        for column, runs in enumerate(scenario_runs):
            axes.text(
                column,
                row,
                f"{runs.mean():.3f}\n± {runs.std():.3f}",
                ha="center",
                va="center",
                fontsize="small",
            )
    figure.colorbar(image, ax=axes, label=f"final test accuracy (mean of {len(SEEDS)} seeds)")
    axes.set_title("Breast cancer, 5 silos IID, 1 malicious, logistic regression, 10 rounds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # The models are tiny: torch's intra-op thread pool only waits for busy cores here (two
    # threads took 3 times as long on a loaded 2-core machine); no operation is big enough
    # to be split, so one thread gives the same numbers.
    torch.set_num_threads(1)
    started = time.perf_counter()
    accuracy = measure()
    print(f"Final federated test accuracy, mean ± std over seeds {list(SEEDS)}.\n")
    print(markdown_table(accuracy))
    plot_heatmap(accuracy, args.out / "robustness.png")
    seconds = time.perf_counter() - started
    print(f"\n{accuracy.size} runs in {seconds:.1f} s; plot written to {args.out.name}/robustness.png")


if __name__ == "__main__":
    main()
