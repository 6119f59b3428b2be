"""The one-process simulator: repeatable, honest baselines, CSV silos, clear errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from federation.aggregation.strategies import FedAvg, FedProx
from federation.data import DataSchema, load_builtin
from federation.errors import ConfigurationError
from federation.models import ModelKind
from federation.simulate import main
from federation.simulation import SimulationConfig, run_simulation


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds"}


def test_a_seeded_run_repeats_exactly_and_another_seed_differs() -> None:
    config = SimulationConfig(
        strategy=FedAvg(), dataset="breast_cancer", num_silos=3, rounds=3, baselines=False
    )
    first, second = run_simulation(config), run_simulation(config)
    assert without_timing(first.summary()) == without_timing(second.summary())
    other = run_simulation(
        SimulationConfig(strategy=FedAvg(), num_silos=3, rounds=3, baselines=False, seed=7)
    )
    assert other.summary()["per_round"] != first.summary()["per_round"]


def test_breast_cancer_fedavg_comes_within_one_and_a_half_points_of_pooled_training() -> None:
    report = run_simulation(
        SimulationConfig(strategy=FedAvg(), dataset="breast_cancer", num_silos=3, rounds=10)
    )
    assert report.federated["accuracy"] >= report.centralized["accuracy"] - 0.015
    assert report.federated["accuracy"] > 0.95
    assert len(report.local) == 3
    assert sum(report.silo_sizes) == round(569 * 0.8)


def test_progress_is_reported_once_per_round() -> None:
    seen: list[tuple[int, int]] = []
    config = SimulationConfig(strategy=FedProx(proximal_mu=0.1), num_silos=2, rounds=4, baselines=False)
    run_simulation(config, progress=lambda record, total: seen.append((record.round, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_cnn_trains_on_digits() -> None:
    config = SimulationConfig(
        strategy=FedAvg(), model_kind=ModelKind.CNN, dataset="digits", num_silos=2, rounds=2, baselines=False
    )
    report = run_simulation(config)
    assert report.federated["accuracy"] > 0.5


def write_site_csv(path: Path, rows: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "diagnosis"])
        for row, label in zip(rows, labels, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), "malignant" if label == 0 else "benign"])


def test_the_command_runs_one_silo_per_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_builtin("breast_cancer")
    names = [f"f{i}" for i in range(data.features.shape[1])]
    halves = np.array_split(np.random.default_rng(0).permutation(len(data)), 2)
    paths = []
    for index, rows in enumerate(halves):
        path = tmp_path / f"site{index}.csv"
        write_site_csv(path, data.features[rows], data.labels[rows], names)
        paths.append(str(path))
    schema = {
        "features": [{"name": n, "kind": "numeric"} for n in names],
        "label": "diagnosis",
        "task": "binary",
        "classes": ["malignant", "benign"],
    }
    DataSchema.from_json(schema)  # the schema itself is valid
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    code = main(["--csv", *paths, "--schema", str(tmp_path / "schema.json"), "--rounds", "3", "--json-only"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert summary["rounds"] == 3
    assert len(summary["silo_sizes"]) == 2
    assert summary["federated"] > 0.9


def test_the_command_prints_a_line_per_round_and_a_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["--silos", "2", "--rounds", "2", "--strategy", "fedadam", "--param", "server_learning_rate=0.05"]
        )
        == 0
    )
    output = capsys.readouterr().out
    assert "round   1/2" in output
    assert "round   2/2" in output
    assert "centralized (pooled)" in output
    assert json.loads(output.strip().splitlines()[-1])["strategy"] == "fedadam"


def test_class_weighting_reaches_every_sites_training(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--dataset",
        "digits",
        "--partition",
        "dirichlet",
        "--alpha",
        "0.3",
        "--rounds",
        "2",
        "--json-only",
    ]
    results = []
    for extra in ([], ["--class-weighting"]):
        assert main([*argv, *extra]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    plain, weighted = results
    assert (plain["class_weighting"], weighted["class_weighting"]) == (False, True)
    assert weighted["per_round"] != plain["per_round"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--csv", "missing.csv", "--schema", "missing.json"], "No such file"),
        (["--strategy", "fedavg", "--param", "beta=0.1"], "no parameters"),
        (["--partition", "dirichlet", "--alpha", "0.01", "--silos", "40"], "alpha"),
        (
            ["--class-weighting", "--model", "mlp", "--dp-level", "sample", "--noise-multiplier", "1"],
            "class_weighting cannot be combined with DP-SGD",
        ),
        (["--class-weighting", "--dataset", "diabetes"], "a regression model has none"),
    ],
)
def test_the_command_explains_bad_input(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--rounds", "1", "--json-only"]) == 2
    assert message in capsys.readouterr().err


def test_config_refuses_both_or_neither_data_source() -> None:
    with pytest.raises(ConfigurationError, match="either"):
        SimulationConfig(strategy=FedAvg(), dataset=None)
