"""The simulation figures of the README: runs them, prints markdown, draws the plots.

    python bench/figures.py            # writes docs/figures/*.png, prints the tables

Every run is seeded, so the figures repeat exactly on the same library versions.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np

from federation.aggregation.strategies import FedAdam, FedAvg, FedProx, Strategy
from federation.data import PartitionKind
from federation.models import ModelKind
from federation.simulation import SimulationConfig, SimulationReport, run_simulation

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


SEEDS = (0, 1, 2, 3, 4)


def over_seeds(config: SimulationConfig) -> list[SimulationReport]:
    """The same experiment with several seeds (data split, partition, model init)."""
    return [run_simulation(replace(config, seed=seed)) for seed in SEEDS]


def breast_cancer_iid() -> list[SimulationReport]:
    return over_seeds(SimulationConfig(strategy=FedAvg(), dataset="breast_cancer", num_silos=3, rounds=10))


def breast_cancer_label_skew() -> dict[str, list[SimulationReport]]:
    strategies: dict[str, Strategy] = {
        "FedAvg": FedAvg(),
        "FedProx (mu 0.1)": FedProx(proximal_mu=0.1),
        "FedAdam (eta 0.1, tau 1e-3)": FedAdam(server_learning_rate=0.1),
    }
    base = SimulationConfig(
        strategy=FedAvg(),
        dataset="breast_cancer",
        num_silos=5,
        partition=PartitionKind.DIRICHLET,
        alpha=0.5,
        rounds=10,
    )
    return {label: over_seeds(replace(base, strategy=strategy)) for label, strategy in strategies.items()}


def digits_classic() -> list[SimulationReport]:
    """The classic federated-averaging tutorial, offline: digits instead of EMNIST."""
    return over_seeds(
        SimulationConfig(
            strategy=FedAvg(server_learning_rate=1.0),
            model_kind=ModelKind.LOGISTIC,  # one dense softmax layer
            dataset="digits",
            num_silos=10,
            rounds=10,
            local_epochs=5,
            batch_size=20,
            learning_rate=0.02,
            standardize=False,  # pixels are already scaled to [0, 1]
        )
    )


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def comparison_row(label: str, reports: list[SimulationReport]) -> str:
    federated = [r.federated["accuracy"] for r in reports]
    centralized = [r.centralized["accuracy"] for r in reports]
    local = [m["accuracy"] for r in reports for m in r.local]
    loss = [r.federated["log_loss"] for r in reports]
    return (
        f"| {label} | {_mean_std(federated)} | {_mean_std(centralized)} | {_mean_std(local)} "
        f"(min {min(local):.4f}) | {np.mean(loss):.4f} |"
    )


def per_round_mean(reports: list[SimulationReport], metric: str) -> list[float]:
    return [
        float(np.mean([r.rounds[i].metrics[metric] for r in reports])) for i in range(len(reports[0].rounds))
    ]


def plot_rounds(reports: dict[str, list[SimulationReport]], title: str, path: Path) -> None:
    figure, (accuracy, loss) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120)
    for label, runs in reports.items():
        rounds = [r.round for r in runs[0].rounds]
        accuracy.plot(rounds, per_round_mean(runs, "accuracy"), marker="o", label=label)
        loss.plot(rounds, per_round_mean(runs, "log_loss"), marker="o", label=label)
    first = next(iter(reports.values()))
    accuracy.axhline(
        np.mean([r.centralized["accuracy"] for r in first]),
        color="grey",
        linestyle="--",
        label="centralized (pooled)",
    )
    loss.axhline(
        np.mean([r.centralized["log_loss"] for r in first]),
        color="grey",
        linestyle="--",
        label="centralized (pooled)",
    )
    accuracy.set(xlabel="round", ylabel=f"test accuracy (mean of {len(SEEDS)} seeds)")
    loss.set(xlabel="round", ylabel="test log loss", yscale="log")
    for axes in (accuracy, loss):
        axes.grid(alpha=0.3)
    accuracy.legend(loc="lower right", fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    header = "| run | federated | centralized | each silo alone | federated log loss |\n|---|---|---|---|---|"
    print(f"Test accuracy, mean ± std over seeds {list(SEEDS)}.\n")

    iid = breast_cancer_iid()
    print("Breast cancer, 3 silos IID, logistic regression, FedAvg, 10 rounds\n")
    print(header)
    print(comparison_row("FedAvg", iid))
    gaps = [100 * (r.centralized["accuracy"] - r.federated["accuracy"]) for r in iid]
    print(f"\nGap to centralized, points: {', '.join(f'{g:.2f}' for g in gaps)} (largest {max(gaps):.2f}).\n")

    skew = breast_cancer_label_skew()
    print("Breast cancer, 5 silos, Dirichlet(0.5) label skew, logistic regression, 10 rounds\n")
    print(f"Silo sizes with seed 0: {next(iter(skew.values()))[0].silo_sizes}\n")
    print(header)
    for label, reports in skew.items():
        print(comparison_row(label, reports))
    plot_rounds(
        skew, "Breast cancer, 5 silos, Dirichlet(0.5) label skew", args.out / "breast_cancer_label_skew.png"
    )

    digits = digits_classic()
    print(
        "\nDigits, 10 silos IID, one softmax layer, client SGD lr 0.02 (5 epochs, batch 20), server lr 1.0\n"
    )
    accuracy = per_round_mean(digits, "accuracy")
    print("| round | " + " | ".join(str(i + 1) for i in range(len(accuracy))) + " |")
    print("|---" * (len(accuracy) + 1) + "|")
    print("| accuracy | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |\n")
    print(header)
    print(comparison_row("FedAvg", digits))
    plot_rounds({"FedAvg": digits}, "Digits, 10 silos, one softmax layer", args.out / "digits_fedavg.png")
    print(f"\nPlots written to {args.out.name}/")


if __name__ == "__main__":
    main()
