"""Model bundles: written by the control plane, read and applied at a hospital. Predictions
are checked against the logistic model's formula applied by hand to the scaled features."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from federation.bundle import BundleContents, read_bundle, write_bundle
from federation.data import load_builtin
from federation.errors import ConfigurationError
from federation.models import ModelConfig, ModelKind, TrainConfig, build_model
from federation.predict import main as predict_main
from federation.types import Task
from federation.wire import serialize_weights

DATA = load_builtin("breast_cancer")
NAMES = list(DATA.feature_names)
SCHEMA = {
    "features": [{"name": name, "kind": "numeric"} for name in NAMES],
    "label": "diagnosis",
    "task": "binary",
    "classes": ["malignant", "benign"],
}


def _trained() -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    mean, std = DATA.features.mean(axis=0), DATA.features.std(axis=0)
    model = build_model(ModelConfig(ModelKind.LOGISTIC, Task.BINARY, len(NAMES), 2), seed=0)
    model.fit((DATA.features - mean) / std, DATA.labels, TrainConfig(epochs=3, learning_rate=0.1))
    return model.get_weights(), {"mean": mean.tolist(), "std": std.tolist()}


def _contents(weights: dict[str, np.ndarray], scaling: dict[str, list[float]]) -> BundleContents:
    blob = serialize_weights(weights)
    return BundleContents(
        weights=blob,
        study={
            "name": "Breast cancer",
            "description": "Three hospitals.",
            "model": ModelConfig(ModelKind.LOGISTIC, Task.BINARY, len(NAMES), 2).to_json(),
            "data_schema": SCHEMA,
            "feature_scaling": scaling,
            "strategy": "fedavg",
            "privacy": {"secure_aggregation": True},
            "training": {"epochs": 1},
        },
        job={"id": 4, "num_rounds": 3, "rounds_done": 3, "sites": 3, "state": "completed"},
        version={"number": 3, "sha256": hashlib.sha256(blob).hexdigest(), "made_by_round": 3},
        provenance={"updates": [{"institution": "Hospital A"}, {"institution": "Hospital B"}]},
        metrics={"accuracy": 0.97},
        rounds=[{"number": 1, "received": 3, "metrics": {"accuracy": 0.9}}],
    )


def test_a_bundle_reads_back_with_its_card_and_class_map(tmp_path: Path) -> None:
    weights, scaling = _trained()
    path = tmp_path / "bundle.zip"
    path.write_bytes(write_bundle(_contents(weights, scaling)))
    bundle = read_bundle(path)
    assert bundle.manifest["classes"] == {"0": "malignant", "1": "benign"}
    assert bundle.manifest["feature_scaling"] == scaling
    assert "- 3 sites trained on their own rows; no row left a site" in bundle.card
    assert "- accuracy: 0.9700" in bundle.card
    assert "- updates combined into this version: 2" in bundle.card
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == {
            "model.safetensors",
            "model.json",
            "provenance.json",
            "metrics.json",
            "MODEL_CARD.md",
        }
        assert json.loads(archive.read("metrics.json"))["rounds"][0]["metrics"] == {"accuracy": 0.9}


def test_damaged_or_foreign_files_are_refused(tmp_path: Path) -> None:
    weights, scaling = _trained()
    good = write_bundle(_contents(weights, scaling))
    damaged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:-1] + b"\x01" if name == "model.safetensors" else data)
    (tmp_path / "damaged.zip").write_bytes(damaged.getvalue())
    with pytest.raises(ConfigurationError, match="do not match their SHA-256"):
        read_bundle(tmp_path / "damaged.zip")
    (tmp_path / "other.zip").write_bytes(b"PK not really")
    with pytest.raises(ConfigurationError, match="not a model bundle"):
        read_bundle(tmp_path / "other.zip")
    contents = _contents(weights, scaling)
    with pytest.raises(ConfigurationError, match="do not match the version's digest"):
        write_bundle(BundleContents(**{**contents.__dict__, "weights": contents.weights + b" "}))


def test_predictions_are_the_logistic_formula_on_scaled_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, scaling = _trained()
    (tmp_path / "bundle.zip").write_bytes(write_bundle(_contents(weights, scaling)))
    rows = DATA.features[:25]
    with (tmp_path / "patients.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(NAMES)  # no label column: these patients are to be predicted
        writer.writerows([[repr(float(v)) for v in row] for row in rows])
    output = tmp_path / "predictions.csv"
    assert (
        predict_main([str(tmp_path / "bundle.zip"), str(tmp_path / "patients.csv"), "--output", str(output)])
        == 0
    )
    predicted = list(csv.DictReader(output.open()))
    scaled = (rows - np.array(scaling["mean"])) / np.array(scaling["std"])
    coefficients, bias = weights["linear.weight"].astype(np.float64).ravel(), float(weights["linear.bias"][0])
    logits = scaled.astype(np.float64) @ coefficients + bias
    expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose([float(r["p_benign"]) for r in predicted], expected, atol=1e-5)
    assert [r["predicted_diagnosis"] for r in predicted] == [
        "benign" if p > 0.5 else "malignant" for p in expected
    ]
    assert "25 rows predicted" in capsys.readouterr().err
