"""The figures of a local federation's run: the final model on rows no site ever saw,
against pooled and local-only training from the same initial model; round latencies; and
the privacy the job ran with. :func:`figures` and :func:`privacy_figures` make the JSON
object that ``deploy/run_local.py`` prints last."""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime
from typing import Any

import numpy as np

from federation.data import Dataset, Standardizer
from federation.metrics import compute_metrics
from federation.models import ModelConfig, TrainConfig, build_model
from federation.types import ModelSpec, Weights
from federation.wire import deserialize_weights

#: A JSON object as the REST API answers it.
Json = dict[str, Any]


def evaluate(config: ModelConfig, weights: Weights, data: Dataset) -> float:
    model = build_model(config, seed=0)
    model.set_weights(weights)
    return compute_metrics(data.task, data.labels, model.predict(data.features))["accuracy"]


def baselines(
    config: ModelConfig, initial: Weights, shares: list[Dataset], test: Dataset, args: argparse.Namespace
) -> tuple[float, list[float]]:
    """Pooled training and each site alone, from the same initial model, as many epochs."""
    train = TrainConfig(
        epochs=args.rounds * args.local_epochs,
        batch_size=32,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )

    def alone(data: Dataset) -> float:
        model = build_model(config, seed=0)
        model.set_weights(initial)
        model.fit(data.features, data.labels, train)
        return compute_metrics(test.task, test.labels, model.predict(test.features))["accuracy"]

    return alone(Dataset.concatenate(shares)), [alone(share) for share in shares]


def round_latencies(progress: Json) -> list[float]:
    """Seconds from a round's last update to the next round being available to agents.

    With secure aggregation the last update is the last masked one, so this includes the
    round's unmask phase (one more poll and answer from every site) before aggregation.
    """
    rounds = {r["number"]: r for r in progress["rounds"]}
    latencies = []
    for number, round_ in rounds.items():
        following = rounds.get(number + 1)
        if round_["kind"] == "train" and following and round_["last_update_at"]:
            opened = datetime.fromisoformat(following["opened_at"])
            latencies.append((opened - datetime.fromisoformat(round_["last_update_at"])).total_seconds())
    return latencies


def privacy_figures(job: Json, versions: list[Json]) -> dict[str, object]:
    """The privacy settings the job ran with (client-level noise resolved), what it spent,
    and how many of its models came out of a secure-aggregation round (their provenance)."""
    secure = [v for v in versions if "secure_aggregation_sites" in v["provenance"].get("details", {})]
    return {
        "privacy": job["privacy"],
        "epsilon_spent": job["epsilon_spent"],
        "training_stopped_after": job["training_stopped_after"],
        "secure_aggregation_rounds": len(secure),
    }


def scaled_dataset(dataset: Dataset, study: Json) -> Dataset:
    """The data set scaled as the study says (the scaling the sites agreed)."""
    scaling = study["feature_scaling"]
    scaler = Standardizer(mean=np.array(scaling["mean"]), std=np.array(scaling["std"]))
    return dataset.with_features(scaler.transform(dataset.features))


def figures(
    dataset: Dataset,
    shares: list[np.ndarray],
    test_rows: np.ndarray,
    study: Json,
    final_blob: bytes,
    initial_blob: bytes,
    progress: Json,
    args: argparse.Namespace,
    started: float,
) -> dict[str, object]:
    config = ModelConfig.from_json(study["model"])
    scaled = scaled_dataset(dataset, study)
    spec = ModelSpec.from_weights(build_model(config, seed=0).get_weights())
    test = scaled.subset(test_rows)
    initial = deserialize_weights(initial_blob, spec=spec)
    centralized, local = baselines(config, initial, [scaled.subset(rows) for rows in shares], test, args)
    federated = evaluate(config, deserialize_weights(final_blob, spec=spec), test)
    return {
        "federated_accuracy": round(federated, 4),
        "centralized_accuracy": round(centralized, 4),
        "local_accuracy": [round(value, 4) for value in local],
        "rounds": sum(1 for r in progress["rounds"] if r["kind"] == "train" and r["state"] == "closed"),
        "sites": args.sites,
        "test_rows": len(test_rows),
        **timing_figures(progress),
        "seconds": round(time.monotonic() - started, 1),
    }


def timing_figures(progress: Json) -> dict[str, float | None]:
    """The median round latency (ms), the median round duration (s) and round 1's."""
    latencies = round_latencies(progress)
    durations = [r["duration_seconds"] for r in progress["rounds"] if r["kind"] == "train" and r["closed_at"]]
    return {
        "round_latency_median_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "round_seconds_median": round(statistics.median(durations), 2) if durations else None,
        # Round 1 against the rest: the agents get ready at start, not in the first round.
        "first_round_seconds": round(durations[0], 2) if durations else None,
    }
