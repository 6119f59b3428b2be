"""What privacy costs in accuracy: client- and sample-level DP at ε 1, 3, 8, secure aggregation.

    python bench/privacy_figures.py    # prints the markdown table and JSON, writes
                                       # docs/figures/privacy-accuracy-epsilon.png
    python bench/privacy_figures.py --seeds 1 --rounds 2 --out /tmp/figures   # a quick check

Breast cancer, 3 silos IID, logistic regression, FedAvg, 10 rounds (``--rounds``; the simulator's defaults
otherwise: client SGD, learning rate 0.1, batch 32, one local epoch per round), δ 1e-5.
The noise multiplier is derived so the whole run spends at most the budget
(``federation.privacy.accounting``):

* client level (DP-FedAvg): each silo clips its model delta to L2 norm 0.1 (about the
  median delta norm of a run without DP, the heuristic of McMahan et al. 2018); the server
  adds Gaussian noise to the unweighted mean. One Gaussian mechanism per round, q = 1.
* sample level (DP-SGD with Opacus): each example's gradient clipped to 1.0, Poisson
  batches of expected size 32, noise on every step; every silo gets its own budget ε.
* secure aggregation (Bonawitz et al. 2017, ``federation.privacy.secure_fedavg``): every
  round runs the real protocol between the 3 silos (threshold 2, no dropouts), so the server
  sees only the sum of the updates; once without DP (it should equal the run without DP to
  the float32 rounding) and once with client-level DP at ε 3, where each silo clips its own
  delta and the server adds the noise to the sum (it should equal plain client-level DP at
  ε 3: the same clipping and the same seeded noise). Keys and masks come from a seeded
  stream so the runs repeat; a real site uses os.urandom.

Each cell is the final federated test accuracy, mean ± standard deviation over the seeds.
The clipping norms were chosen once, not tuned per budget. Every run is seeded, so the
table repeats exactly on the same library versions. The last line is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np

from federation.aggregation.strategies import FedAvg
from federation.privacy.settings import DifferentialPrivacy, DPLevel
from federation.simulation import SimulationConfig, SimulationReport, run_simulation

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
SEEDS = (0, 1, 2, 3, 4)
EPSILONS = (1.0, 3.0, 8.0)
ROUNDS = 10
#: The budget of the secure aggregation + client-level DP row.
SECURE_EPSILON = 3.0
DELTA = 1e-5
CLIPPING_NORMS = {DPLevel.CLIENT: 0.1, DPLevel.SAMPLE: 1.0}
LABELS = {
    DPLevel.CLIENT: "client level (DP-FedAvg, C 0.1)",
    DPLevel.SAMPLE: "sample level (DP-SGD, C 1.0)",
}

BASE = SimulationConfig(
    strategy=FedAvg(), dataset="breast_cancer", num_silos=3, rounds=ROUNDS, baselines=False, delta=DELTA
)
SECURE_LABEL = f"secure aggregation ({BASE.num_sites} sites, threshold {BASE.secure_threshold})"


@dataclass(frozen=True)
class Cell:
    """One measured setting: the final accuracy of each seed, the largest epsilon any run
    spent and the mean noise multiplier (None without DP)."""

    accuracy: list[float]
    epsilon_spent: float | None = None
    noise_multiplier: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracy))

    def to_json(self) -> dict[str, object]:
        return {
            "accuracy_mean": round(self.mean, 4),
            "accuracy_std": round(self.std, 4),
            "accuracy": [round(a, 4) for a in self.accuracy],
            "epsilon_spent": self.epsilon_spent,
            "noise_multiplier": self.noise_multiplier,
        }


def summarize(reports: list[SimulationReport]) -> Cell:
    accuracy = [r.federated["accuracy"] for r in reports]
    privacy = [r.privacy for r in reports if r.privacy is not None]
    if not privacy:
        return Cell(accuracy)
    return Cell(
        accuracy,
        epsilon_spent=round(max(p.epsilon for p in privacy), 4),
        noise_multiplier=round(float(np.mean([np.mean(p.noise_multipliers) for p in privacy])), 4),
    )


def run_cell(
    base: SimulationConfig,
    seeds: tuple[int, ...],
    level: DPLevel | None,
    epsilon: float | None,
    *,
    secure_aggregation: bool = False,
) -> Cell:
    dp = None if level is None else DifferentialPrivacy(level, CLIPPING_NORMS[level])
    config = replace(
        base, differential_privacy=dp, target_epsilon=epsilon, secure_aggregation=secure_aggregation
    )
    return summarize([run_simulation(replace(config, seed=seed)) for seed in seeds])


@dataclass(frozen=True)
class Measurements:
    """Every cell of the table: without any privacy, each DP level at every budget of
    :data:`EPSILONS`, and secure aggregation without DP and with client-level DP."""

    no_dp: Cell
    by_level: dict[DPLevel, list[Cell]]
    secure: Cell
    secure_client_dp: Cell

    @property
    def num_cells(self) -> int:
        return 3 + sum(len(cells) for cells in self.by_level.values())


def measure(base: SimulationConfig, seeds: tuple[int, ...]) -> Measurements:
    by_level = {level: [run_cell(base, seeds, level, epsilon) for epsilon in EPSILONS] for level in DPLevel}
    return Measurements(
        no_dp=run_cell(base, seeds, None, None),
        by_level=by_level,
        secure=run_cell(base, seeds, None, None, secure_aggregation=True),
        secure_client_dp=run_cell(base, seeds, DPLevel.CLIENT, SECURE_EPSILON, secure_aggregation=True),
    )


def _dp_row(label: str, epsilon: float, cell: Cell) -> str:
    return (
        f"| {label} | {epsilon:g} | {cell.epsilon_spent:.4f} | {cell.noise_multiplier:.3f} "
        f"| {cell.mean:.4f} ± {cell.std:.4f} |"
    )


def markdown_table(figures: Measurements) -> str:
    no_dp, secure = figures.no_dp, figures.secure
    lines = [
        "| privacy | ε budget | ε spent | noise multiplier | test accuracy |",
        "|---|---|---|---|---|",
        f"| none | – | – | – | {no_dp.mean:.4f} ± {no_dp.std:.4f} |",
    ]
    for level, cells in figures.by_level.items():
        lines += [
            _dp_row(LABELS[level], epsilon, cell) for epsilon, cell in zip(EPSILONS, cells, strict=True)
        ]
    lines.append(f"| {SECURE_LABEL}, no DP | – | – | – | {secure.mean:.4f} ± {secure.std:.4f} |")
    label = f"{SECURE_LABEL} + {LABELS[DPLevel.CLIENT]}"
    lines.append(_dp_row(label, SECURE_EPSILON, figures.secure_client_dp))
    return "\n".join(lines)


def plot(figures: Measurements, num_seeds: int, rounds: int, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for (level, cells), marker in zip(figures.by_level.items(), ("o", "s"), strict=True):
        means = [cell.mean for cell in cells]
        stds = [cell.std for cell in cells]
        axes.errorbar(EPSILONS, means, yerr=stds, marker=marker, capsize=3, label=LABELS[level])
    axes.axhline(figures.no_dp.mean, color="grey", linewidth=3, alpha=0.5, linestyle="--", label="no DP")
    # Drawn over the no-DP line, which it meets when secure aggregation changes nothing.
    axes.axhline(figures.secure.mean, color="tab:green", linestyle=":", label=f"{SECURE_LABEL}, no DP")
    secure_dp = figures.secure_client_dp
    axes.errorbar(
        [secure_dp.epsilon_spent or SECURE_EPSILON],
        [secure_dp.mean],
        yerr=[secure_dp.std],
        marker="*",
        markersize=16,
        markerfacecolor="none",
        color="tab:green",
        capsize=5,
        linestyle="none",
        label=f"secure aggregation + client level, ε {SECURE_EPSILON:g}",
    )
    axes.set(
        xscale="log",
        xlabel=f"ε spent over the whole run (δ {DELTA:g})",
        ylabel=f"final test accuracy (mean ± std, {num_seeds} seeds)",
        ylim=(0.35, 1.0),
    )
    axes.set_xticks(EPSILONS, [f"{epsilon:g}" for epsilon in EPSILONS])
    axes.minorticks_off()
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(f"Breast cancer, 3 silos IID, logistic regression, {rounds} rounds", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def to_json(figures: Measurements, seeds: tuple[int, ...], rounds: int) -> dict[str, object]:
    levels = {level.value: [cell.to_json() for cell in cells] for level, cells in figures.by_level.items()}
    secure = {
        "sites": BASE.num_sites,
        "threshold": BASE.secure_threshold,
        "no_dp": figures.secure.to_json(),
        "client": {"epsilon": SECURE_EPSILON, **figures.secure_client_dp.to_json()},
    }
    return {
        "seeds": list(seeds),
        "rounds": rounds,
        "delta": DELTA,
        "epsilons": list(EPSILONS),
        "no_dp": figures.no_dp.to_json(),
        **levels,
        "secure_aggregation": secure,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES)
    parser.add_argument(
        "--seeds", type=int, default=len(SEEDS), help="how many of the seeds 0, 1, ... to run"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"federated rounds (default {ROUNDS})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = tuple(range(args.seeds))
    started = time.perf_counter()
    figures = measure(replace(BASE, rounds=args.rounds), seeds)
    print(f"Final federated test accuracy after {args.rounds} rounds, mean ± std over seeds {list(seeds)}.\n")
    print(markdown_table(figures))
    path = args.out / "privacy-accuracy-epsilon.png"
    plot(figures, len(seeds), args.rounds, path)
    seconds = time.perf_counter() - started
    print(f"\n{figures.num_cells * len(seeds)} runs in {seconds:.1f} s; plot written to {path}")
    print(json.dumps({"privacy_accuracy": to_json(figures, seeds, args.rounds)}))


if __name__ == "__main__":
    main()
