"""Pretrained transformers with LoRA adapters: the packaged MiniLM and SmolLM2, a few steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from federation.errors import ConfigurationError, DataSchemaError
from federation.models.base import TrainConfig
from federation.models.lora import BaseModelFamily, LoraSettings, TextModelConfig
from federation.models.pins import PINNED_DIR, builtin_pin, locate_builtin

pytestmark = pytest.mark.llm

torch = pytest.importorskip("torch")
text_models = pytest.importorskip("federation.models.text_models")

TEXTS = [
    "crushing chest pain on exertion, palpitations, BP 165/95",
    "chest tightness and an irregular pulse, known atrial fibrillation",
    "productive cough for three weeks, wheeze, SpO2 91% on air",
    "shortness of breath at night, asthma since childhood, wheeze",
    "sudden weakness of the left arm and slurred speech this morning",
    "recurrent headaches with visual aura, numbness of the face",
] * 4
LABELS = np.array([0, 0, 1, 1, 2, 2] * 4)
CLASSES = ("cardiology", "pulmonology", "neurology")


def _config(**lora: object) -> TextModelConfig:
    return TextModelConfig(
        kind="lora_encoder",
        task="multiclass",
        num_classes=3,
        class_names=CLASSES,
        base_model=builtin_pin("all-MiniLM-L6-v2"),
        lora=LoraSettings(**lora),  # type: ignore[arg-type]
        max_tokens=32,
    )


def _train(config: TrainConfig | None = None) -> TrainConfig:
    return config or TrainConfig(epochs=6, batch_size=8, learning_rate=2e-3, seed=1)


def test_only_adapters_and_head_travel_and_they_match_the_pin() -> None:
    config = _config()
    adapter = text_models.LoraTextAdapter(config, seed=0)
    weights = adapter.get_weights()
    assert list(weights) == list(config.model_spec().names)
    assert all(".lora_" in name or name.startswith("classifier.") for name in weights)
    assert sum(array.size for array in weights.values()) == config.num_parameters
    # Round trip: what set_weights takes, get_weights gives back exactly.
    changed = {name: array + 0.5 for name, array in weights.items()}
    adapter.set_weights(changed)
    for name, array in adapter.get_weights().items():
        np.testing.assert_array_equal(array, changed[name])


def test_a_few_steps_learn_separable_notes_and_repeat_by_seed() -> None:
    adapter = text_models.LoraTextAdapter(_config(), seed=0)
    before = (adapter.predict(TEXTS).argmax(axis=1) == LABELS).mean()
    result = adapter.fit(np.asarray(TEXTS, dtype=object), LABELS, _train())
    after = (adapter.predict(TEXTS).argmax(axis=1) == LABELS).mean()
    assert after >= 0.9 > before
    assert result.num_examples == len(TEXTS)
    assert result.metrics["steps"] == 18
    trained = adapter.get_weights()
    again = text_models.LoraTextAdapter(_config(), seed=0)  # the same model, reset to the start
    again.fit(np.asarray(TEXTS, dtype=object), LABELS, _train())
    for name, array in again.get_weights().items():
        np.testing.assert_allclose(array, trained[name], rtol=1e-5, atol=1e-6)


def test_predictions_do_not_draw_dropout_before_any_training() -> None:
    adapter = text_models.LoraTextAdapter(_config(dropout=0.5), seed=0)
    first, second = adapter.predict(TEXTS[:4]), adapter.predict(TEXTS[:4])
    np.testing.assert_array_equal(first, second)


def test_two_adapters_keep_their_own_weights_on_one_loaded_model() -> None:
    first = text_models.LoraTextAdapter(_config(), seed=0)
    first.fit(TEXTS, LABELS, TrainConfig(epochs=1, batch_size=8, learning_rate=3e-3))
    trained, scores = first.get_weights(), first.predict(TEXTS[:4])
    second = text_models.LoraTextAdapter(_config(), seed=1)  # shares the network, other weights
    assert any(not np.array_equal(second.get_weights()[n], trained[n]) for n in trained)
    for name, array in first.get_weights().items():
        np.testing.assert_array_equal(array, trained[name])
    np.testing.assert_allclose(first.predict(TEXTS[:4]), scores, rtol=1e-6)


def test_class_weighting_lifts_the_rare_class() -> None:
    """Eight notes of two classes and two of the third: weighted, the rare class counts as
    much as the others and comes out more probable on its own notes than unweighted."""
    rare = np.flatnonzero(LABELS == 1)[:2]
    rows = np.concatenate([np.flatnonzero(LABELS != 1), rare])
    texts, labels = [TEXTS[i] for i in rows], LABELS[rows]
    probabilities = []
    for weighting in (False, True):
        adapter = text_models.LoraTextAdapter(_config(), seed=0)
        train = TrainConfig(batch_size=6, learning_rate=2e-3, max_steps=6, class_weighting=weighting)
        adapter.fit(texts, labels, train)
        probabilities.append(float(adapter.predict([TEXTS[i] for i in rare])[:, 1].mean()))
    unweighted, weighted = probabilities
    assert weighted > unweighted + 0.1, (unweighted, weighted)


@pytest.mark.parametrize("steps", [3, 9])  # 24 rows at batch 4: 6 steps a pass
def test_max_steps_fixes_a_rounds_steps_even_past_one_pass(steps: int) -> None:
    adapter = text_models.LoraTextAdapter(_config(), seed=0)
    result = adapter.fit(
        TEXTS, LABELS, TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, max_steps=steps)
    )
    assert result.metrics["steps"] == steps


def test_ffa_lora_never_moves_a() -> None:
    adapter = text_models.LoraTextAdapter(_config(aggregation="ffa"), seed=0)
    start = adapter.get_weights()
    adapter.fit(TEXTS, LABELS, TrainConfig(epochs=1, batch_size=8, learning_rate=1e-2))
    end = adapter.get_weights()
    for name in start:
        if name.endswith(".lora_A.weight"):
            np.testing.assert_array_equal(end[name], start[name])
        elif name.endswith(".lora_B.weight"):
            assert np.abs(end[name]).sum() > 0


def test_binary_predictions_are_probabilities_of_class_one() -> None:
    config = TextModelConfig(
        kind="lora_encoder",
        task="binary",
        num_classes=2,
        class_names=("other", "cardiology"),
        base_model=builtin_pin("all-MiniLM-L6-v2"),
        max_tokens=32,
    )
    adapter = text_models.LoraTextAdapter(config, seed=0)
    labels = (LABELS == 0).astype(np.int64)
    adapter.fit(TEXTS, labels, TrainConfig(epochs=8, batch_size=8, learning_rate=3e-3))
    scores = adapter.predict(TEXTS)
    assert scores.shape == (len(TEXTS),)
    assert np.all((scores >= 0) & (scores <= 1))
    assert ((scores >= 0.5) == (labels == 1)).mean() >= 0.9


def test_bad_texts_and_labels_are_refused() -> None:
    adapter = text_models.LoraTextAdapter(_config(), seed=0)
    with pytest.raises(DataSchemaError, match="text 1 is empty"):
        adapter.fit(["fine", "  "], np.array([0, 1]), _train())
    with pytest.raises(DataSchemaError, match=r"0\.\.2"):
        adapter.fit(["fine", "also fine"], np.array([0, 3]), _train())


def test_dp_sgd_on_the_adapters_spends_what_opacus_accounts_and_repeats_by_seed() -> None:
    config = TrainConfig(
        epochs=2, batch_size=6, learning_rate=3e-3, dp_noise_multiplier=0.8, dp_clipping_norm=1.0, dp_seed=5
    )
    adapter = text_models.LoraTextAdapter(_config(aggregation="ffa"), seed=0)
    start = adapter.get_weights()
    result = adapter.fit(TEXTS, LABELS, config)
    spend = result.privacy_spend
    assert spend is not None
    # Poisson sampling at rate batch / n for epochs * n / batch steps (Opacus's schedule).
    assert (spend.noise_multiplier, spend.sampling_rate, spend.steps) == (0.8, 6 / 24, 8)
    assert result.metrics["dp_steps"] == 8
    trained = adapter.get_weights()
    for name in start:
        if name.endswith(".lora_A.weight"):  # FFA-LoRA: A frozen under DP-SGD too
            np.testing.assert_array_equal(trained[name], start[name])
    again = text_models.LoraTextAdapter(_config(aggregation="ffa"), seed=0)
    again.fit(TEXTS, LABELS, config)
    for name, array in again.get_weights().items():
        np.testing.assert_allclose(array, trained[name], rtol=1e-5, atol=1e-6)
    # Without the seed the noise comes from the OS: another run differs.
    fresh = text_models.LoraTextAdapter(_config(aggregation="ffa"), seed=0)
    fresh.fit(
        TEXTS,
        LABELS,
        TrainConfig(
            epochs=2, batch_size=6, learning_rate=3e-3, dp_noise_multiplier=0.8, dp_clipping_norm=1.0
        ),
    )
    assert any(not np.allclose(array, trained[name]) for name, array in fresh.get_weights().items())


def test_dp_sgd_takes_its_noisy_step_on_empty_poisson_batches() -> None:
    # Batch 1 of 24 texts: each step samples every text with probability 1/24, so about a
    # third of the 24 steps draw no text at all; each still counts.
    adapter = text_models.LoraTextAdapter(_config(), seed=0)
    config = TrainConfig(
        epochs=1, batch_size=1, learning_rate=1e-3, dp_noise_multiplier=1.0, dp_clipping_norm=1.0, dp_seed=3
    )
    spend = adapter.fit(TEXTS, LABELS, config).privacy_spend
    assert spend is not None
    assert (spend.steps, spend.sampling_rate) == (24, 1 / 24)


@pytest.mark.parametrize("steps", [2, 8])  # 6 Poisson batches a pass
def test_dp_sgd_takes_max_steps_even_past_one_pass_and_counts_them(steps: int) -> None:
    adapter = text_models.LoraTextAdapter(_config(), seed=0)
    config = TrainConfig(
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        dp_noise_multiplier=1.0,
        dp_clipping_norm=1.0,
        max_steps=steps,
    )
    spend = adapter.fit(TEXTS, LABELS, config).privacy_spend
    assert spend is not None
    assert spend.steps == steps


@pytest.mark.parametrize(
    ("name", "family", "gguf"),
    [
        ("all-MiniLM-L6-v2", BaseModelFamily.ENCODER, None),
        ("SmolLM2-135M-Instruct", BaseModelFamily.CAUSAL_LM, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ],
)
def test_shipped_pins_match_the_installed_packages(
    name: str, family: BaseModelFamily, gguf: str | None
) -> None:
    pin = text_models.pin_base_model(name, locate_builtin(name), family, gguf_file=gguf)
    shipped = json.loads((PINNED_DIR / f"{name}.json").read_text())
    assert pin.to_json() == shipped


@pytest.mark.slow
def test_smollm_scores_answers_learns_and_reports_perplexity(tmp_path: Path) -> None:
    config = TextModelConfig(
        kind="lora_causal_lm",
        task="multiclass",
        num_classes=3,
        class_names=CLASSES,
        base_model=builtin_pin("SmolLM2-135M-Instruct"),
        lora=LoraSettings(target_modules=("q_proj", "v_proj")),
        max_tokens=32,
    )
    adapter = text_models.LoraTextAdapter(config, seed=0, cache_dir=tmp_path)
    assert any((tmp_path / "dequantized").iterdir())  # the float weights are kept for next time
    before = adapter.perplexity(TEXTS[:6])
    # Scored per real token: a batch's perplexity is its texts' taken alone, weighted by how
    # many tokens each predicts (the padding of the shorter text counts for nothing).
    texts = [TEXTS[0], TEXTS[4] + " and a long history of migraine"]
    predicted = [
        len(adapter.tokenizer(text, truncation=True, max_length=32)["input_ids"]) - 1 for text in texts
    ]
    alone = [np.log(adapter.perplexity([text])) for text in texts]
    expected = float(np.exp(np.dot(predicted, alone) / sum(predicted)))
    assert adapter.perplexity(texts) == pytest.approx(expected, rel=0.02)
    adapter.fit(TEXTS, LABELS, TrainConfig(epochs=2, batch_size=8, learning_rate=2e-3, seed=0))
    scores = adapter.predict(TEXTS)
    assert scores.shape == (len(TEXTS), 3)
    assert np.allclose(scores.sum(axis=1), 1.0)
    assert (scores.argmax(axis=1) == LABELS).mean() >= 0.6
    after = adapter.perplexity(TEXTS[:6])
    dp_sgd = TrainConfig(dp_noise_multiplier=1.0, dp_clipping_norm=1.0)
    with pytest.raises(ConfigurationError, match="causal language model"):
        adapter.fit(TEXTS, LABELS, dp_sgd)
    # Exported, the merged model loads as a plain causal language model.
    from transformers import AutoModelForCausalLM

    from federation.models.export import export_merged
    from federation.wire import serialize_weights

    export_merged(config, serialize_weights(adapter.get_weights()), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    assert sum(p.numel() for p in merged.parameters()) == config.base_model.num_parameters
    assert math.isfinite(before)
    assert math.isfinite(after)
    assert after > 1


def test_export_merges_the_adapters_into_a_model_transformers_loads(tmp_path: Path) -> None:
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    from federation.models.export import main as export_main
    from federation.wire import serialize_weights

    config = _config()
    adapter = text_models.LoraTextAdapter(config, seed=0)
    adapter.fit(TEXTS, LABELS, TrainConfig(epochs=2, batch_size=8, learning_rate=3e-3, seed=2))
    expected = adapter.predict(TEXTS[:6])
    (tmp_path / "model.json").write_text(json.dumps(config.to_json()))
    (tmp_path / "version.safetensors").write_bytes(serialize_weights(adapter.get_weights()))
    out = tmp_path / "merged"
    argv = ["--model", str(tmp_path / "model.json"), "--adapters", str(tmp_path / "version.safetensors")]
    assert export_main([*argv, "--out", str(out)]) == 0
    # A plain transformers user: the merged encoder, mean pooling and the head file.
    encoder = AutoModel.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert not any("lora" in name for name, _ in encoder.named_parameters())
    head = load_file(str(out / "classifier.safetensors"))
    encoded = tokenizer(TEXTS[:6], truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    pooled = ((states * mask).sum(1) / mask.sum(1)).numpy()
    logits = pooled @ head["weight"].T + head["bias"]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert json.loads((out / "fedhealth_head.json").read_text())["classes"] == list(CLASSES)
