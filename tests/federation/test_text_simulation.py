"""The simulator on text: LoRA adapters through the same round plan as tabular models.

Kept small (a few notes per site, 32 tokens, two or three steps per round): the figures
themselves come from ``bench/llm_figures.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from federation.aggregation.strategies import FedAvg, FedProx
from federation.errors import ConfigurationError
from federation.models import ModelKind
from federation.models.lora import LORA_A_SUFFIX, LORA_B_SUFFIX, AdapterAggregation
from federation.rounds import RoundPlan
from federation.simulate import main
from federation.simulation import SimulationConfig, TextModel, run_simulation

SMALL = SimulationConfig(
    strategy=FedAvg(),
    model_kind=TextModel.MINILM_LORA,
    dataset="clinical_notes",
    num_silos=2,
    rounds=2,
    batch_size=8,
    learning_rate=2e-3,
    max_steps=2,
    max_tokens=32,
    notes_per_site=16,
    test_notes_per_site=6,
    baselines=False,
)


@pytest.mark.llm
def test_the_command_runs_clinical_notes_and_reports_the_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--dataset", "clinical_notes", "--model", "minilm_lora", "--silos", "2", "--rounds", "1"]
    argv += ["--max-steps", "2", "--batch-size", "8", "--learning-rate", "2e-3", "--max-tokens", "32"]
    argv += ["--notes-per-site", "16", "--test-notes-per-site", "6", "--lora-aggregation", "fedit"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "fedit error" in output  # the round's line shows the aggregation error
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["model"] == "minilm_lora"
    assert summary["model_bytes"] / summary["update_bytes"] > 150
    assert summary["bytes_ratio"] == round(summary["model_bytes"] / summary["update_bytes"], 1)
    assert set(summary["macro_f1"]) >= {"federated", "centralized", "local_mean"}
    assert len(summary["macro_f1"]["local"]) == 2
    assert len(summary["per_round_fedit_error"]) == 1
    assert "perplexity_before" not in summary  # an encoder has none


@pytest.mark.llm
@pytest.mark.parametrize("method", list(AdapterAggregation))
def test_each_adapter_method_runs_through_the_round_plan(
    method: AdapterAggregation, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[RoundPlan] = []
    aggregate = RoundPlan.aggregate

    def spy(plan: RoundPlan, *args: object, **kwargs: object) -> object:
        plans.append(plan)
        return aggregate(plan, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RoundPlan, "aggregate", spy)
    config = replace(SMALL, lora_aggregation=method)
    report = run_simulation(config)
    assert [plan.adapters for plan in plans] == [method, method]

    start = config.text_model_config().initial_weights(seed=config.seed)
    a_names = [name for name in start if name.endswith(LORA_A_SUFFIX)]
    b_names = [name for name in start if name.endswith(LORA_B_SUFFIX)]
    moved_a = any(not np.array_equal(report.weights[name], start[name]) for name in a_names)
    assert all(np.abs(report.weights[name]).sum() > 0 for name in b_names)
    errors = [record.aggregation["lora_fedit_error"] for record in report.rounds]
    summary = report.summary()
    assert summary["per_round_fedit_error"] == [round(error, 6) for error in errors]
    if method is AdapterAggregation.FFA:
        assert not moved_a  # A stays where it started, round after round
        assert max(errors) < 1e-6  # with one shared A the mean of the products is exact
    else:
        assert moved_a
        assert min(errors) > 0
    if method is AdapterAggregation.SVD:
        residuals = summary["per_round_svd_residual"]
        assert isinstance(residuals, list)
        assert len(residuals) == 2
        assert all(0 <= residual < 1 for residual in residuals)
    else:
        assert "per_round_svd_residual" not in summary


@pytest.mark.llm
def test_baselines_train_as_many_steps_as_one_site(monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.models.text_models import LoraTextAdapter

    steps: list[int | None] = []
    fit = LoraTextAdapter.fit

    def counting(self: LoraTextAdapter, *args: object, **kwargs: object) -> object:
        result = fit(self, *args, **kwargs)  # type: ignore[arg-type]
        steps.append(int(result.metrics["steps"]))
        return result

    monkeypatch.setattr(LoraTextAdapter, "fit", counting)
    run_simulation(replace(SMALL, rounds=1, max_steps=3, baselines=True))
    # Two sites for one round of 3 steps, then pooled and each site alone for 1 x 3 steps.
    assert steps == [3, 3, 3, 3, 3]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_kind": TextModel.MINILM_LORA, "dataset": "breast_cancer"}, "reads text"),
        ({"model_kind": ModelKind.LOGISTIC, "dataset": "clinical_notes"}, "is a text data set"),
        ({"model_kind": "smollm2_lora", "dataset": "digits"}, "choose a text data set"),
        ({"dataset": "drug_reviews", "num_silos": 7}, "1 to 5 sites"),
        ({"max_steps": 3, "local_epochs": 2}, "local_epochs at 1"),
        ({"strategy": FedProx(proximal_mu=0.1)}, "proximal term"),
        ({"lora_rank": 0}, "rank"),
        ({"max_tokens": 4}, "max_tokens"),
    ],
)
def test_config_refuses_what_text_runs_cannot_do(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        replace(SMALL, **changes)  # type: ignore[arg-type]


def test_max_steps_is_refused_for_tabular_models() -> None:
    with pytest.raises(ConfigurationError, match="max_steps is for text models"):
        SimulationConfig(strategy=FedAvg(), dataset="breast_cancer", max_steps=5)


def test_the_command_refuses_a_tabular_model_on_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", "clinical_notes", "--model", "mlp", "--json-only"]) == 2
    assert "choose a text model (minilm_lora, smollm2_lora)" in capsys.readouterr().err


@pytest.mark.llm
def test_dp_sgd_on_adapters_spends_no_more_than_its_budget_when_rounds_take_several_passes() -> None:
    from federation.privacy.settings import DifferentialPrivacy, DPLevel

    # 16 notes a site in batches of 8: 2 batches an epoch, so 5 steps a round take 3 passes.
    config = replace(
        SMALL,
        max_steps=5,
        lora_aggregation=AdapterAggregation.FFA,
        differential_privacy=DifferentialPrivacy(level=DPLevel.SAMPLE, clipping_norm=1.0),
        target_epsilon=8.0,
    )
    report = run_simulation(config)
    assert report.privacy is not None
    assert 7.5 < report.privacy.epsilon <= 8.0 + 1e-6
