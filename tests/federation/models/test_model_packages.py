"""Model packages: the example package (examples/model-packages/) built and installed into a
folder of its own, found through its entry point, pinned by a digest of its files (a changed
file is refused, naming both digests), and its model put through the same interface checks
as the built-in kinds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from federation.data import load_builtin
from federation.errors import ConfigurationError, InvalidUpdateError
from federation.models import ModelConfig, build_model
from federation.models.base import ModelAdapter, TrainConfig
from federation.models.packages import installed_model_packages, load_model

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "model-packages" / "fedhealth-example-models"
PACKAGE = "fedhealth-example-models"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package built from a copy of its folder (the build writes beside its
    sources) and installed into a folder of its own (offline: no index, the virtual
    environment's setuptools)."""
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site-packages")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    command += ["--no-build-isolation", "--target", str(target), str(source)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return target


@pytest.fixture
def importable(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(installed))
    return installed


def test_the_package_is_found_through_its_entry_point(installed: Path) -> None:
    [package] = installed_model_packages(paths=[str(installed)])
    assert (package.name, package.version, package.models) == (PACKAGE, "0.1.0", ("digits_cnn",))
    assert len(package.digest) == 64
    assert installed_model_packages(paths=[str(installed)])[0].digest == package.digest  # stable


def test_a_changed_file_changes_the_digest_and_is_refused(installed: Path, tmp_path: Path) -> None:
    [original] = installed_model_packages(paths=[str(installed)])
    copy = tmp_path / "copy"
    shutil.copytree(installed, copy)
    module = copy / "fedhealth_example_models" / "digits_cnn.py"
    module.write_text(module.read_text() + "\n# changed after approval\n")
    [changed] = installed_model_packages(paths=[str(copy)])
    assert changed.digest != original.digest
    with pytest.raises(ConfigurationError) as refused:
        load_model(PACKAGE, "digits_cnn", digest=original.digest, paths=[str(copy)])
    assert changed.digest in str(refused.value)
    assert original.digest in str(refused.value)


def test_what_is_not_installed_or_not_registered_is_refused(installed: Path) -> None:
    [package] = installed_model_packages(paths=[str(installed)])
    with pytest.raises(ConfigurationError, match="not installed"):
        load_model("someone-elses-models", "digits_cnn", digest=package.digest, paths=[str(installed)])
    with pytest.raises(ConfigurationError, match="registers no model 'resnet'"):
        load_model(PACKAGE, "resnet", digest=package.digest, paths=[str(installed)])


def check_interface(adapter: ModelAdapter, features: np.ndarray, labels: np.ndarray, classes: int) -> None:
    """What every model, built in or packaged, must do."""
    spec, weights = adapter.model_spec(), adapter.get_weights()
    assert [t.name for t in spec.tensors] == list(weights)
    assert all(
        tuple(weights[t.name].shape) == t.shape and weights[t.name].dtype == np.float32 for t in spec.tensors
    )
    shifted = {name: tensor + 0.25 for name, tensor in weights.items()}
    adapter.set_weights(shifted)
    assert all(np.array_equal(adapter.get_weights()[n], shifted[n]) for n in shifted)
    adapter.set_weights(weights)
    with pytest.raises(InvalidUpdateError):
        adapter.set_weights({name: tensor[..., :1] for name, tensor in weights.items()})
    before = (adapter.predict(features).argmax(axis=1) == labels).mean()
    result = adapter.fit(features, labels, TrainConfig(epochs=20, batch_size=16, learning_rate=0.1, seed=0))
    after = (adapter.predict(features).argmax(axis=1) == labels).mean()
    assert result.num_examples == len(labels)
    assert after > max(before, 2.0 / classes)
    scores = adapter.predict(features)
    assert scores.shape == (len(labels), classes)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_builtin("digits")
    return data.features[:600], data.labels[:600]  # already scaled to [0, 1]


def test_the_packaged_cnn_meets_the_interface(importable: Path) -> None:
    [package] = installed_model_packages(paths=[str(importable)])
    factory = load_model(PACKAGE, "digits_cnn", digest=package.digest, paths=[str(importable)])
    features, labels = digits()
    check_interface(factory({"num_classes": 10, "seed": 1}), features, labels, classes=10)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["logistic", "mlp", "cnn"])
def test_the_built_in_kinds_meet_the_same_interface(kind: str) -> None:
    features, labels = digits()
    config = ModelConfig(
        kind=kind, task="multiclass", num_features=64, num_classes=10, image_size=8 if kind == "cnn" else None
    )
    check_interface(build_model(config, seed=1), features, labels, classes=10)


def test_the_agent_lists_what_is_installed(installed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from silo_agent.cli import main

    assert main(["models", "list", "--path", str(installed)]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    listed = json.loads(line)
    [package] = installed_model_packages(paths=[str(installed)])
    assert listed == {"name": PACKAGE, "version": "0.1.0", "digest": package.digest, "models": ["digits_cnn"]}
