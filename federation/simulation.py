"""A whole federation in one process: N silos, any strategy and model, seeded.

The silos hold disjoint parts of one data set (or one CSV file each). Every round each
silo starts from the global model, trains locally and contributes one update; the
strategy aggregates them. At the end the federated model is compared with centralized
training on the pooled data and with each silo training alone, all on one held-out test
set and with the same number of local epochs. A run with the same seed repeats exactly.

To measure robust aggregation, the first ``num_malicious`` silos can be made malicious:
they train honestly on their own data, then an attack from :mod:`federation.attacks`
replaces what they send, every round, before the strategy aggregates.

The command-line front end is :mod:`federation.simulate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federation.aggregation.strategies import FedProx, Strategy
from federation.attacks import AttackKind, attack, little_is_enough_z
from federation.data import (
    DataSchema,
    Dataset,
    PartitionKind,
    Standardizer,
    combine_moments,
    load_builtin,
    load_csv,
    local_moments,
    partition,
)
from federation.errors import ConfigurationError
from federation.metrics import combine_metrics, compute_metrics
from federation.models import ModelAdapter, ModelConfig, ModelKind, TrainConfig, build_model
from federation.types import ClientUpdate, Weights


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides a simulated federation; the seed makes it repeatable."""

    strategy: Strategy
    model_kind: ModelKind = ModelKind.LOGISTIC
    dataset: str | None = "breast_cancer"
    csv_files: tuple[Path, ...] = ()
    schema: DataSchema | None = None
    num_silos: int = 3
    partition: PartitionKind = PartitionKind.IID
    alpha: float = 0.5
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    hidden_sizes: tuple[int, ...] = (64,)
    test_fraction: float = 0.2
    standardize: bool = True
    baselines: bool = True
    seed: int = 0
    attack: AttackKind = AttackKind.NONE
    #: The first ``num_malicious`` silos are malicious (0 without an attack).
    num_malicious: int = 0
    #: The attack's scale ``s``; ``None`` is the attack's default (sign flip 1, scaled 10).
    attack_scale: float | None = None
    #: The shift of "a little is enough" in standard deviations; ``None`` is the paper's.
    attack_z: float | None = None

    def __post_init__(self) -> None:
        if (self.dataset is None) == (not self.csv_files):
            raise ConfigurationError("give either a built-in data set or CSV files (one per silo), not both")
        if self.csv_files and self.schema is None:
            raise ConfigurationError("CSV files need a data schema")
        if self.rounds < 1 or self.num_silos < 1:
            raise ConfigurationError("rounds and silos must be at least 1")
        if not 0 < self.test_fraction < 1:
            raise ConfigurationError("test_fraction must lie in (0, 1)")
        self._check_attack()

    def _check_attack(self) -> None:
        silos = len(self.csv_files) or self.num_silos
        if self.attack is AttackKind.NONE:
            if self.num_malicious:
                raise ConfigurationError("malicious silos need an attack; without one every silo is honest")
            return
        if not 1 <= self.num_malicious <= silos:
            raise ConfigurationError(
                f"an attack needs 1 to {silos} malicious silos, got {self.num_malicious}"
            )
        if self.attack_scale is not None and not 0 < self.attack_scale < float("inf"):
            raise ConfigurationError(f"attack_scale must be positive, got {self.attack_scale}")
        if self.attack is AttackKind.LITTLE_IS_ENOUGH:
            if self.num_malicious == silos:
                raise ConfigurationError("'a little is enough' needs at least one honest silo")
            if self.attack_z is None:
                little_is_enough_z(silos, self.num_malicious)  # raises when undefined
            elif not 0 <= self.attack_z < float("inf"):
                raise ConfigurationError(f"attack_z must be non-negative, got {self.attack_z}")

    @property
    def malicious_silos(self) -> list[int]:
        """The malicious silos' indices (0-based): the first ``num_malicious``."""
        return list(range(self.num_malicious))


@dataclass(frozen=True)
class RoundRecord:
    """What one round did: the global model's test metrics and its duration."""

    round: int
    metrics: dict[str, float]
    train_metrics: dict[str, float]
    seconds: float


@dataclass
class SimulationReport:
    config: SimulationConfig
    silo_sizes: list[int]
    rounds: list[RoundRecord] = field(default_factory=list)
    federated: dict[str, float] = field(default_factory=dict)
    centralized: dict[str, float] = field(default_factory=dict)
    local: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        """The figures a person compares, as one JSON-ready object."""
        key = "accuracy" if "accuracy" in self.federated else "r2"
        local = [round(m[key], 4) for m in self.local]
        return {
            "metric": key,
            "federated": round(self.federated[key], 4),
            "centralized": round(self.centralized[key], 4) if self.centralized else None,
            "local_mean": round(float(np.mean(local)), 4) if local else None,
            "local": local,
            "per_round": [round(r.metrics[key], 4) for r in self.rounds],
            "silo_sizes": self.silo_sizes,
            "rounds": len(self.rounds),
            "strategy": self.config.strategy.name.value,
            "attack": self.config.attack.value,
            # 1-based, like the comparison table's "silo 1".
            "malicious_silos": [index + 1 for index in self.config.malicious_silos],
            "seconds": round(self.seconds, 2),
        }


#: Called after every round with (round record, total rounds).
ProgressCallback = Callable[[RoundRecord, int], None]


def _model_config(config: SimulationConfig, train: Dataset) -> ModelConfig:
    image_size = round(train.features.shape[1] ** 0.5) if config.model_kind is ModelKind.CNN else None
    return ModelConfig(
        kind=config.model_kind,
        task=train.task,
        num_features=train.features.shape[1],
        num_classes=train.num_classes,
        hidden_sizes=config.hidden_sizes,
        image_size=image_size,
    )


def load_silos(config: SimulationConfig, rng: np.random.Generator) -> tuple[list[Dataset], Dataset]:
    """The silos' training sets and one pooled test set, standardized as agreed."""
    if config.csv_files:
        assert config.schema is not None
        splits = [
            load_csv(path, config.schema).train_test_split(config.test_fraction, rng)
            for path in config.csv_files
        ]
        silos, tests = [s[0] for s in splits], [s[1] for s in splits]
        test = Dataset.concatenate(tests)
    else:
        assert config.dataset is not None
        train, test = load_builtin(config.dataset).train_test_split(config.test_fraction, rng)
        parts = partition(train, config.partition, config.num_silos, rng, alpha=config.alpha)
        silos = [train.subset(indices) for indices in parts]
    if config.standardize:
        # Only per-silo aggregates (count, sum, sum of squares) leave each silo.
        scaler = Standardizer.from_moments(combine_moments([local_moments(s.features) for s in silos]))
        silos = [s.with_features(scaler.transform(s.features)) for s in silos]
        test = test.with_features(scaler.transform(test.features))
    return silos, test


def _train_config(config: SimulationConfig, *, epochs: int, seed: int, federated: bool = True) -> TrainConfig:
    # FedProx's proximal term anchors local training to the round's global model; the
    # baselines train alone, so they have no anchor.
    mu = config.strategy.proximal_mu if federated and isinstance(config.strategy, FedProx) else 0.0
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        proximal_mu=mu,
        seed=seed,
    )


def _evaluate(model_config: ModelConfig, weights: Weights, data: Dataset, seed: int) -> dict[str, float]:
    model = build_model(model_config, seed=seed)
    model.set_weights(weights)
    return compute_metrics(data.task, data.labels, model.predict(data.features))


def run_simulation(config: SimulationConfig, progress: ProgressCallback | None = None) -> SimulationReport:
    """Run the federation, then (optionally) the centralized and local-only baselines."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    silos, test = load_silos(config, rng)
    model_config = _model_config(config, silos[0])
    report = SimulationReport(config=config, silo_sizes=[len(s) for s in silos])
    worker = build_model(model_config, seed=config.seed)
    global_weights = worker.get_weights()
    initial_weights = {name: array.copy() for name, array in global_weights.items()}
    state: Weights = {}
    # Its own stream, so an attack never shifts the data split or the training.
    attack_rng = np.random.default_rng([config.seed, _ATTACK_STREAM])
    for round_number in range(1, config.rounds + 1):
        round_started = time.perf_counter()
        updates, train_metrics = _local_round(config, worker, global_weights, silos, round_number)
        updates = poison_updates(config, global_weights, updates, attack_rng)
        result = config.strategy.aggregate(global_weights, updates, state=state)
        global_weights, state = result.weights, result.state
        record = RoundRecord(
            round=round_number,
            metrics=_evaluate(model_config, global_weights, test, config.seed),
            train_metrics=train_metrics,
            seconds=time.perf_counter() - round_started,
        )
        report.rounds.append(record)
        if progress:
            progress(record, config.rounds)
    report.federated = report.rounds[-1].metrics
    if config.baselines:
        report.centralized, report.local = _baselines(config, model_config, initial_weights, silos, test)
    report.seconds = time.perf_counter() - started
    return report


#: Mixed into the seed of the attack's random stream.
_ATTACK_STREAM = 0xA77AC


def poison_updates(
    config: SimulationConfig,
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    rng: np.random.Generator,
) -> list[ClientUpdate]:
    """The round's updates with the malicious silos' weights replaced by the attack's.

    Malicious silos keep the example counts and training metrics they reported."""
    if config.attack is AttackKind.NONE:
        return list(updates)
    malicious, honest = updates[: config.num_malicious], updates[config.num_malicious :]
    forged = attack(
        config.attack,
        global_weights,
        [u.weights for u in honest],
        [u.weights for u in malicious],
        rng,
        scale=config.attack_scale,
        z=config.attack_z,
    )
    sent = [
        ClientUpdate(weights, u.num_examples, u.metrics) for weights, u in zip(forged, malicious, strict=True)
    ]
    return sent + list(honest)


def _local_round(
    config: SimulationConfig,
    worker: ModelAdapter,
    global_weights: Weights,
    silos: Sequence[Dataset],
    round_number: int,
) -> tuple[list[ClientUpdate], dict[str, float]]:
    """Every silo trains from the global weights; one update each, aggregates only."""
    updates, reported = [], []
    for index, silo in enumerate(silos):
        worker.set_weights(global_weights)
        seed = config.seed * 1_000_003 + round_number * 1_009 + index
        result = worker.fit(
            silo.features, silo.labels, _train_config(config, epochs=config.local_epochs, seed=seed)
        )
        updates.append(ClientUpdate(worker.get_weights(), result.num_examples, result.metrics))
        reported.append((result.metrics, result.num_examples))
    return updates, combine_metrics(reported)


def _baselines(
    config: SimulationConfig,
    model_config: ModelConfig,
    initial_weights: Weights,
    silos: Sequence[Dataset],
    test: Dataset,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Centralized training on the pooled data, and each silo alone, for as many epochs."""
    epochs = config.rounds * config.local_epochs

    def train_alone(data: Dataset, seed: int) -> dict[str, float]:
        model = build_model(model_config, seed=config.seed)
        model.set_weights(initial_weights)
        model.fit(
            data.features, data.labels, _train_config(config, epochs=epochs, seed=seed, federated=False)
        )
        return compute_metrics(test.task, test.labels, model.predict(test.features))

    centralized = train_alone(Dataset.concatenate(list(silos)), config.seed)
    local = [train_alone(silo, config.seed + 1 + index) for index, silo in enumerate(silos)]
    return centralized, local
