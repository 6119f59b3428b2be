"""A whole federation in one process: N silos, any strategy and model, seeded.

The silos hold disjoint parts of one data set (or one CSV file each). Every round each
silo starts from the global model, trains locally and contributes one update; the
strategy aggregates them. At the end the federated model is compared with centralized
training on the pooled data and with each silo training alone, all on one held-out test
set and with the same number of local epochs. A run with the same seed repeats exactly.

To measure robust aggregation, the first ``num_malicious`` silos can be made malicious:
they train honestly on their own data, then an attack from :mod:`federation.attacks`
replaces what they send, every round, before the strategy aggregates.

Every round is aggregated by the run's round plan (:class:`federation.rounds.RoundPlan`,
the same the control plane stores with a job), which also checks the options fit together.

With differential privacy (:mod:`federation.privacy`):

* client level (DP-FedAvg): each silo clips its delta (:func:`~federation.privacy.dp.clip_delta`),
  the server averages the clipped deltas unweighted and adds Gaussian noise
  (:func:`~federation.privacy.dp.dp_fedavg`); the noisy mean then goes through the
  strategy as one update (server optimizers are post-processing). The robust rules need
  each update on its own, so they are refused;
* sample level (DP-SGD): each silo trains with Opacus (torch models only), with its own
  noise multiplier when it is derived from the budget (silo sizes differ).

Either way the noise is fixed for the whole run, derived from ``target_epsilon`` when the
DP settings give none, and the report says the epsilon spent (from the RDP accountant of
:mod:`federation.privacy.accounting`). The centralized and local-only baselines train
without DP: they are the reference DP is measured against.

With secure aggregation (Bonawitz et al., CCS 2017; :mod:`federation.privacy.secagg`) each
round runs :func:`~federation.privacy.secure_fedavg.secure_sum`: a real SecAggClient per
silo, the same packing as the platform, and the server learns only the sum of the updates,
which the round plan aggregates.
``secure_dropouts`` silos, drawn afresh each round, drop after sharing their keys; their
updates are not counted. Client-level DP then happens inside the secure round (each silo
clips its own change, the server adds the noise to the sum), so it is not applied a second
time; sample-level DP happens in training and composes unchanged. The robust rules and a
FedAvg weight cap need each update on its own and are refused, as are fewer than 3 silos.
The silos' keys and masks come from a stream seeded by the run's seed so that a run repeats
exactly: a real site draws them from ``os.urandom`` (the default of ``secure_sum``).

Text studies run through the same rounds. With a text data set (:data:`TEXT_DATASETS`:
seeded synthetic referral notes, or real drug reviews split by condition) and a text model
(:class:`TextModel`: MiniLM or SmolLM2 with LoRA adapters), each silo fine-tunes the
adapters of a pretrained model it holds on disk, only the adapters (and an encoder's head)
travel, and the round plan combines them by the LoRA method chosen
(:class:`~federation.models.lora.AdapterAggregation`: FedIT, SVD or FFA-LoRA), reporting
each round's aggregation error. ``max_steps`` fixes each silo's optimizer steps per round;
the baselines then train for as many steps as one silo takes over the whole federation.
The report adds what an update weighs against the full model, macro-F1 beside accuracy
and, for the causal model, the perplexity of the global model before and after.

The command-line front end is :mod:`federation.simulate`.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federation.aggregation.strategies import AggregationResult, Details, FedProx, Strategy
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
from federation.data.clinical_notes import CLINICAL_NOTES_CLASSES, clinical_notes_federation
from federation.data.drug_reviews import DRUG_REVIEW_CLASSES, SITE_LAYOUTS, drug_review_sites
from federation.data.text import TextDataset
from federation.errors import ConfigurationError
from federation.metric_reports import combine_metrics
from federation.metrics import compute_metrics
from federation.models import (
    AnyModelConfig,
    ModelAdapter,
    ModelConfig,
    ModelKind,
    TextModelConfig,
    TrainConfig,
    build_model,
)
from federation.models.lora import AdapterAggregation, LoraSettings, TextModelKind
from federation.models.pins import builtin_pin
from federation.privacy.accounting import (
    PrivacyEvent,
    PrivacyLedgerState,
    sample_level_noise_for_job,
)
from federation.privacy.dp import clip_delta
from federation.privacy.secure_fedavg import secure_sum
from federation.privacy.settings import DEFAULT_DELTA, DifferentialPrivacy, DPLevel, PrivacySettings
from federation.rounds import RoundInputs, RoundPlan
from federation.types import ClientUpdate, Task, Weights
from federation.wire import serialize_weights

#: Text data sets (the tabular ones are :data:`federation.data.BUILTIN_DATASETS`): seeded
#: synthetic referral notes from differently writing sites, and Drugs.com reviews split
#: into sites by condition.
TEXT_DATASETS: tuple[str, ...] = ("clinical_notes", "drug_reviews")
_TEXT_CLASSES: Mapping[str, tuple[str, ...]] = {
    "clinical_notes": CLINICAL_NOTES_CLASSES,
    "drug_reviews": DRUG_REVIEW_CLASSES,
}


class TextModel(enum.StrEnum):
    """The pretrained text models the simulator offers, each with LoRA adapters."""

    #: all-MiniLM-L6-v2 (22.7M parameters), mean-pooled, with a classification head.
    MINILM_LORA = "minilm_lora"
    #: SmolLM2-135M-Instruct, scoring the class names as answers to a question.
    SMOLLM2_LORA = "smollm2_lora"


@dataclass(frozen=True)
class TextModelChoice:
    """What a :class:`TextModel` stands for: the kind, the built-in base model and the
    linear layers that carry adapters."""

    kind: TextModelKind
    base_model: str
    target_modules: tuple[str, ...]


TEXT_MODELS: Mapping[TextModel, TextModelChoice] = {
    TextModel.MINILM_LORA: TextModelChoice(
        TextModelKind.LORA_ENCODER, "all-MiniLM-L6-v2", ("query", "key", "value")
    ),
    TextModel.SMOLLM2_LORA: TextModelChoice(
        TextModelKind.LORA_CAUSAL_LM, "SmolLM2-135M-Instruct", ("q_proj", "k_proj", "v_proj", "o_proj")
    ),
}

#: Any model the simulator trains: a tabular model kind or a text model.
SimulatedModel = ModelKind | TextModel


def parse_model(value: str) -> SimulatedModel:
    """A model kind (``logistic``, ...) or text model (``minilm_lora``, ...) by name."""
    for kind in (ModelKind, TextModel):
        try:
            return kind(value)
        except ValueError:
            continue
    names = [k.value for k in ModelKind] + [t.value for t in TextModel]
    raise ConfigurationError(f"unknown model {value!r}; choose one of {', '.join(names)}")


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides a simulated federation; the seed makes it repeatable."""

    strategy: Strategy
    #: A tabular model kind, or a text model (which needs a text data set).
    model_kind: SimulatedModel = ModelKind.LOGISTIC
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
    #: Differential privacy: level, clipping norm and (optionally) noise multiplier.
    differential_privacy: DifferentialPrivacy | None = None
    #: The whole run's epsilon budget, from which the noise is derived (give this or the
    #: DP settings' noise multiplier, not both).
    target_epsilon: float | None = None
    delta: float = DEFAULT_DELTA
    #: Aggregate every round with secure aggregation: the server sees only the sum.
    secure_aggregation: bool = False
    #: How many silos must answer each phase; ``None`` is a strict majority.
    secure_aggregation_threshold: int | None = None
    #: How many silos (drawn afresh each round) drop after sharing their keys.
    secure_dropouts: int = 0
    #: Weigh each example by the inverse frequency of its class at its silo (the baselines too).
    class_weighting: bool = False
    #: Text models: the adapters' rank and alpha (LoRA scales B·A by alpha / rank).
    lora_rank: int = 8
    lora_alpha: float = 16.0
    #: Text models: how the server combines the sites' adapters.
    lora_aggregation: AdapterAggregation = AdapterAggregation.FEDIT
    #: Text models: each silo's optimizer steps per round, exactly (cycling through its data
    #: as often as that takes; ``local_epochs`` then stays 1). None: ``local_epochs`` decide.
    max_steps: int | None = None
    #: Text models: every text is cut to this many tokens.
    max_tokens: int = 128
    #: Clinical notes: training notes per silo, and test notes per silo in the pooled test set.
    notes_per_site: int = 200
    test_notes_per_site: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kind", parse_model(self.model_kind))
        if (self.dataset is None) == (not self.csv_files):
            raise ConfigurationError("give either a built-in data set or CSV files (one per silo), not both")
        if self.csv_files and self.schema is None:
            raise ConfigurationError("CSV files need a data schema")
        if self.rounds < 1 or self.num_silos < 1:
            raise ConfigurationError("rounds and silos must be at least 1")
        if not 0 < self.test_fraction < 1:
            raise ConfigurationError("test_fraction must lie in (0, 1)")
        self._check_text()
        self._check_attack()
        self._check_privacy()
        self._check_secure_aggregation()
        tabular_kind = self.model_kind if isinstance(self.model_kind, ModelKind) else None
        self._unresolved_plan().check(
            self.num_sites, tabular_kind, proximal_mu=self._proximal_mu, class_weighting=self.class_weighting
        )
        self._check_dropouts()

    @property
    def is_text(self) -> bool:
        """Whether the run fine-tunes a text model (on a text data set)."""
        return isinstance(self.model_kind, TextModel)

    def _check_text(self) -> None:
        text_data = self.dataset in TEXT_DATASETS
        if self.is_text != text_data:
            raise ConfigurationError(_mismatch_reason(self.model_kind, self.dataset))
        if not self.is_text:
            if self.max_steps is not None:
                raise ConfigurationError("max_steps is for text models; tabular models train local_epochs")
            return
        self._check_text_options()
        self.text_model_config()  # checks rank, alpha and max_tokens

    def _check_text_options(self) -> None:
        try:
            object.__setattr__(self, "lora_aggregation", AdapterAggregation(self.lora_aggregation))
        except ValueError:
            choices = ", ".join(a.value for a in AdapterAggregation)
            raise ConfigurationError(f"lora_aggregation must be one of {choices}") from None
        if self.partition is not PartitionKind.IID:
            raise ConfigurationError(
                f"{self.dataset} comes split by site already; the partition options apply to tabular data"
            )
        if self.dataset == "drug_reviews" and self.num_silos not in SITE_LAYOUTS:
            raise ConfigurationError(
                f"the drug reviews split into 1 to {max(SITE_LAYOUTS)} sites by condition, "
                f"not {self.num_silos}"
            )
        if self.notes_per_site < 2 or self.test_notes_per_site < 1:
            raise ConfigurationError("clinical notes need at least 2 notes per silo and 1 test note per silo")
        if self.max_steps is not None and (self.max_steps < 1 or self.local_epochs != 1):
            raise ConfigurationError(
                "max_steps must be at least 1, and fixes a round's steps: leave local_epochs at 1"
            )
        if self._proximal_mu > 0:
            raise ConfigurationError(
                "the text models do not apply FedProx's proximal term in local training: use fedavg "
                "or another rule"
            )

    def text_model_config(self) -> TextModelConfig:
        """The study's text model: the built-in base model, its adapters and the data's classes."""
        classes = _TEXT_CLASSES.get(self.dataset or "")
        if not isinstance(self.model_kind, TextModel) or classes is None:
            raise ConfigurationError("a text model config needs a text model and a text data set")
        choice = TEXT_MODELS[self.model_kind]
        return TextModelConfig(
            kind=choice.kind,
            task=Task.MULTICLASS if len(classes) > 2 else Task.BINARY,
            num_classes=len(classes),
            class_names=classes,
            base_model=builtin_pin(choice.base_model),
            lora=LoraSettings(
                rank=self.lora_rank,
                alpha=self.lora_alpha,
                target_modules=choice.target_modules,
                aggregation=self.lora_aggregation,
            ),
            max_tokens=self.max_tokens,
        )

    def _check_privacy(self) -> None:
        dp = self.differential_privacy
        if not 0 < self.delta < 1e-2:
            raise ConfigurationError(f"delta must lie in (0, 0.01), got {self.delta}")
        if dp is None:
            if self.target_epsilon is not None:
                raise ConfigurationError("a target epsilon needs differential privacy (a DP level)")
            return
        if (dp.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigurationError(
                "differential privacy needs a noise multiplier or a target epsilon (one)"
            )
        if self.target_epsilon is not None and not 0 < self.target_epsilon < float("inf"):
            raise ConfigurationError(f"the target epsilon must be positive, got {self.target_epsilon}")

    def _check_secure_aggregation(self) -> None:
        options = self.secure_aggregation_threshold is not None or self.secure_dropouts
        if options and not self.secure_aggregation:
            raise ConfigurationError("a secure-aggregation threshold or dropouts need secure aggregation")

    def _check_dropouts(self) -> None:
        if not self.secure_aggregation:
            return
        silos, threshold = self.num_sites, self.secure_threshold
        if not 0 <= self.secure_dropouts <= silos - threshold:
            raise ConfigurationError(
                f"with threshold {threshold} of {silos} silos, at most {silos - threshold} may drop out "
                f"each round, got {self.secure_dropouts}"
            )

    @property
    def privacy_settings(self) -> PrivacySettings:
        """The run's privacy settings; without a target epsilon the budget is unbounded."""
        dp = self.differential_privacy
        return PrivacySettings(
            secure_aggregation=self.secure_aggregation,
            secure_aggregation_threshold=self.secure_aggregation_threshold,
            differential_privacy=dp,
            epsilon=None if dp is None else (self.target_epsilon or math.inf),
            delta=self.delta,
        )

    @property
    def _proximal_mu(self) -> float:
        return self.strategy.proximal_mu if isinstance(self.strategy, FedProx) else 0.0

    def _unresolved_plan(self) -> RoundPlan:
        adapters = self.lora_aggregation if self.is_text else None
        return RoundPlan(strategy=self.strategy, privacy=self.privacy_settings, adapters=adapters)

    def round_plan(self) -> RoundPlan:
        """The run's round plan (checked when the config was made), client-level noise resolved."""
        return self._unresolved_plan().resolved(num_rounds=self.rounds)

    @property
    def num_sites(self) -> int:
        """How many silos take part: one per CSV file, else ``num_silos``."""
        return len(self.csv_files) or self.num_silos

    @property
    def secure_threshold(self) -> int:
        """The secure-aggregation threshold in force: the one given, or a strict majority."""
        return self._unresolved_plan().secure_threshold(self.num_sites)

    def _check_attack(self) -> None:
        silos = self.num_sites
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


def _mismatch_reason(model: SimulatedModel, dataset: str | None) -> str:
    if isinstance(model, TextModel):
        source = f"data set {dataset} is" if dataset else "CSV files are"
        return (
            f"the {model.value} model reads text, but {source} tabular: choose a text data set "
            f"({', '.join(TEXT_DATASETS)})"
        )
    return (
        f"{dataset} is a text data set, but {model.value} is a tabular model: choose a text model "
        f"({', '.join(t.value for t in TextModel)})"
    )


#: The round plan's aggregation details a round record keeps (those of LoRA adapters).
ADAPTER_DETAILS = ("lora_fedit_error", "lora_svd_residual")


@dataclass(frozen=True)
class RoundRecord:
    """What one round did: the global model's test metrics and its duration, and for LoRA
    adapters the aggregation's figures (:data:`ADAPTER_DETAILS`, when the plan gave them)."""

    round: int
    metrics: dict[str, float]
    train_metrics: dict[str, float]
    seconds: float
    aggregation: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyReport:
    """What differential privacy cost: ``epsilon`` (at ``delta``) is the run's guarantee,
    the largest of ``epsilon_per_silo`` (at the client level every silo gets the same).
    ``noise_multipliers`` holds one value at the client level (the server's) and one per
    silo at the sample level."""

    level: DPLevel
    clipping_norm: float
    noise_multipliers: list[float]
    delta: float
    epsilon: float
    epsilon_per_silo: list[float]
    target_epsilon: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "level": self.level.value,
            "clipping_norm": self.clipping_norm,
            "noise_multipliers": [round(z, 6) for z in self.noise_multipliers],
            "delta": self.delta,
            "epsilon": round(self.epsilon, 6),
            "epsilon_per_silo": [round(e, 6) for e in self.epsilon_per_silo],
            "target_epsilon": self.target_epsilon,
        }


@dataclass
class TextReport:
    """What a text run adds: the bytes one silo uploads per round (its update as
    safetensors) against the whole model in float32, the global model's test metrics before
    the first round and, for a causal model, its perplexity on the test texts before and
    after."""

    update_bytes: int
    model_bytes: int
    before: dict[str, float]
    perplexity_before: float | None = None
    perplexity_after: float | None = None

    @property
    def bytes_ratio(self) -> float:
        return self.model_bytes / self.update_bytes


@dataclass
class SimulationReport:
    config: SimulationConfig
    silo_sizes: list[int]
    rounds: list[RoundRecord] = field(default_factory=list)
    federated: dict[str, float] = field(default_factory=dict)
    centralized: dict[str, float] = field(default_factory=dict)
    local: list[dict[str, float]] = field(default_factory=list)
    privacy: PrivacyReport | None = None
    seconds: float = 0.0
    #: The final global model (not in :meth:`summary`).
    weights: Weights = field(default_factory=dict)
    #: Text runs only.
    text: TextReport | None = None

    def summary(self) -> dict[str, object]:
        """The figures a person compares, as one JSON-ready object (text runs add
        :meth:`text_summary`'s)."""
        key = "accuracy" if "accuracy" in self.federated else "r2"
        local = [round(m[key], 4) for m in self.local]
        summary = {
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
            "privacy": self.privacy.to_json() if self.privacy else None,
            "secure_aggregation": _secure_json(self.config),
            "class_weighting": self.config.class_weighting,
            "seconds": round(self.seconds, 2),
        }
        return {**summary, **self.text_summary()} if self.text else summary

    def text_summary(self) -> dict[str, object]:
        """Bytes per update against the full model, macro-F1 beside accuracy, the adapters'
        aggregation error per round and (causal models) perplexity before and after."""
        text = self.text
        if text is None:
            return {}
        summary: dict[str, object] = {
            "model": self.config.model_kind.value,
            "lora_aggregation": self.config.lora_aggregation.value,
            "max_steps": self.config.max_steps,
            "update_bytes": text.update_bytes,
            "model_bytes": text.model_bytes,
            "bytes_ratio": round(text.bytes_ratio, 1),
            "accuracy_before": round(text.before["accuracy"], 4),
            "macro_f1": self._macro_f1(),
            "per_round_fedit_error": self._per_round("lora_fedit_error"),
        }
        if self.config.lora_aggregation is AdapterAggregation.SVD:
            summary["per_round_svd_residual"] = self._per_round("lora_svd_residual")
        if text.perplexity_before is not None:
            summary["perplexity_before"] = round(text.perplexity_before, 4)
            summary["perplexity_after"] = _rounded(text.perplexity_after)
        return summary

    def _macro_f1(self) -> dict[str, object]:
        local = [round(m["macro_f1"], 4) for m in self.local]
        assert self.text is not None
        return {
            "before": round(self.text.before["macro_f1"], 4),
            "federated": round(self.federated["macro_f1"], 4),
            "centralized": round(self.centralized["macro_f1"], 4) if self.centralized else None,
            "local_mean": round(float(np.mean(local)), 4) if local else None,
            "local": local,
            "per_round": [round(r.metrics["macro_f1"], 4) for r in self.rounds],
        }

    def _per_round(self, detail: str) -> list[float | None]:
        """One aggregation figure per round; None where the plan gave none (under secure
        aggregation or client-level DP it never sees a single site's adapter)."""
        return [_rounded(r.aggregation.get(detail), 6) for r in self.rounds]


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _secure_json(config: SimulationConfig) -> dict[str, int] | None:
    if not config.secure_aggregation:
        return None
    return {
        "sites": config.num_sites,
        "threshold": config.secure_threshold,
        "dropouts": config.secure_dropouts,
    }


#: Called after every round with (round record, total rounds).
ProgressCallback = Callable[[RoundRecord, int], None]


#: A silo's data: a tabular data set, or texts with their labels.
SiloData = Dataset | TextDataset


def _model_config(config: SimulationConfig, train: SiloData) -> AnyModelConfig:
    if config.is_text:
        return config.text_model_config()
    assert isinstance(train, Dataset)
    assert isinstance(config.model_kind, ModelKind)
    image_size = round(train.features.shape[1] ** 0.5) if config.model_kind is ModelKind.CNN else None
    return ModelConfig(
        kind=config.model_kind,
        task=train.task,
        num_features=train.features.shape[1],
        num_classes=train.num_classes,
        hidden_sizes=config.hidden_sizes,
        image_size=image_size,
    )


def load_text_silos(config: SimulationConfig) -> tuple[list[TextDataset], TextDataset]:
    """The silos' texts and one pooled test set: clinical notes drawn with the run's seed
    (each silo's own style and label mix), or the drug reviews split by condition. Texts
    are not standardized."""
    if config.dataset == "drug_reviews":
        return drug_review_sites(config.num_silos)
    return clinical_notes_federation(
        config.num_silos, config.notes_per_site, config.test_notes_per_site, seed=config.seed
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


def _train_config(
    config: SimulationConfig,
    *,
    epochs: int,
    seed: int,
    federated: bool = True,
    noise_multiplier: float | None = None,
    max_steps: int | None = None,
) -> TrainConfig:
    # FedProx's proximal term anchors local training to the round's global model; the
    # baselines train alone, so they have no anchor.
    mu = config.strategy.proximal_mu if federated and isinstance(config.strategy, FedProx) else 0.0
    # Only silos training with DP-SGD get a noise multiplier (never the baselines).
    dp = config.differential_privacy if noise_multiplier is not None else None
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        proximal_mu=mu,
        seed=seed,
        dp_noise_multiplier=noise_multiplier if dp else None,
        dp_clipping_norm=dp.clipping_norm if dp else None,
        # A simulation repeats exactly; a real site leaves dp_seed None (see TrainConfig).
        dp_seed=seed if dp else None,
        max_steps=max_steps,
        class_weighting=config.class_weighting,
    )


def _local_train_config(
    config: SimulationConfig, *, seed: int, noise_multiplier: float | None
) -> TrainConfig:
    """One silo's training in one round: ``local_epochs``, or exactly ``max_steps`` steps."""
    return _train_config(
        config,
        epochs=config.local_epochs,
        seed=seed,
        noise_multiplier=noise_multiplier,
        max_steps=config.max_steps,
    )


@dataclass
class _PrivacyRun:
    """A run's DP mechanism and the ledgers of what it spent: one for the server at the
    client level, one per silo at the sample level."""

    settings: DifferentialPrivacy
    noise_multipliers: list[float]
    ledgers: list[PrivacyLedgerState]
    #: The server's noise (client level); seeded here, secure_generator() in production.
    rng: np.random.Generator

    def site_noise(self, index: int) -> float | None:
        """The noise multiplier of silo ``index``'s DP-SGD; None at the client level."""
        return self.noise_multipliers[index] if self.settings.level is DPLevel.SAMPLE else None

    def report(self, config: SimulationConfig, num_silos: int) -> PrivacyReport:
        epsilons = [ledger.epsilon(config.delta) for ledger in self.ledgers]
        if self.settings.level is DPLevel.CLIENT:
            epsilons = epsilons * num_silos  # one mechanism protects every silo alike
        return PrivacyReport(
            level=self.settings.level,
            clipping_norm=self.settings.clipping_norm,
            noise_multipliers=list(self.noise_multipliers),
            delta=config.delta,
            epsilon=max(epsilons),
            epsilon_per_silo=epsilons,
            target_epsilon=config.target_epsilon,
        )


#: Mixed into the seed of the server's DP noise stream.
_DP_STREAM = 0xD9


def _start_privacy(
    config: SimulationConfig, plan: RoundPlan, silo_sizes: Sequence[int]
) -> _PrivacyRun | None:
    dp = config.differential_privacy
    if dp is None:
        return None
    noise = _noise_multipliers(config, plan, dp, silo_sizes)
    return _PrivacyRun(
        settings=dp,
        noise_multipliers=noise,
        ledgers=[PrivacyLedgerState() for _ in noise],
        rng=np.random.default_rng([config.seed, _DP_STREAM]),
    )


def _noise_multipliers(
    config: SimulationConfig, plan: RoundPlan, dp: DifferentialPrivacy, silo_sizes: Sequence[int]
) -> list[float]:
    """One multiplier for the server (client level, the plan's) or one per silo (sample
    level), given or derived so the whole run spends at most the target epsilon."""
    server_noise = plan.client_noise_multiplier
    if server_noise is not None:
        return [server_noise]
    if dp.noise_multiplier is not None:
        return [dp.noise_multiplier] * len(silo_sizes)
    assert config.target_epsilon is not None  # checked by SimulationConfig
    return [
        sample_level_noise_for_job(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            rounds=config.rounds,
            epochs=config.local_epochs,
            num_examples=size,
            batch_size=config.batch_size,
            max_steps=config.max_steps,
        )
        for size in silo_sizes
    ]


@dataclass
class _SecureRun:
    """A run's secure-aggregation randomness: the silos that drop each round and the bytes
    every SecAggClient draws its keys and masks from. Seeded so that a run repeats exactly;
    a real site uses ``os.urandom`` (the default of ``secure_sum``), never a seeded stream."""

    rng: np.random.Generator
    num_dropouts: int

    def random_bytes(self, length: int) -> bytes:
        return self.rng.bytes(length)

    def dropped(self, num_silos: int) -> list[int]:
        """This round's dropouts as site ids ``1..num_silos``."""
        if not self.num_dropouts:
            return []
        chosen = self.rng.choice(num_silos, size=self.num_dropouts, replace=False)
        return sorted(int(index) + 1 for index in chosen)


#: Mixed into the seed of the secure-aggregation stream (keys, masks, dropouts).
_SECAGG_STREAM = 0x5EC466


def _start_secure_aggregation(config: SimulationConfig) -> _SecureRun | None:
    if not config.secure_aggregation:
        return None
    return _SecureRun(np.random.default_rng([config.seed, _SECAGG_STREAM]), config.secure_dropouts)


def _evaluate(model_config: AnyModelConfig, weights: Weights, data: SiloData, seed: int) -> dict[str, float]:
    model = build_model(model_config, seed=seed)
    model.set_weights(weights)
    return compute_metrics(data.task, data.labels, model.predict(data.features))


def _load_data(config: SimulationConfig) -> tuple[Sequence[SiloData], SiloData]:
    if config.is_text:
        return load_text_silos(config)
    return load_silos(config, np.random.default_rng(config.seed))


def run_simulation(config: SimulationConfig, progress: ProgressCallback | None = None) -> SimulationReport:
    """Run the federation, then (optionally) the centralized and local-only baselines."""
    started = time.perf_counter()
    silos, test = _load_data(config)
    model_config = _model_config(config, silos[0])
    report = SimulationReport(config=config, silo_sizes=[len(s) for s in silos])
    worker = build_model(model_config, seed=config.seed)
    global_weights = worker.get_weights()
    initial_weights = {name: array.copy() for name, array in global_weights.items()}
    report.text = _text_start(model_config, initial_weights, test, config.seed)
    state: Weights = {}
    # Its own stream, so an attack never shifts the data split or the training.
    attack_rng = np.random.default_rng([config.seed, _ATTACK_STREAM])
    plan = config.round_plan()
    privacy = _start_privacy(config, plan, report.silo_sizes)
    secure = _start_secure_aggregation(config)
    for round_number in range(1, config.rounds + 1):
        round_started = time.perf_counter()
        updates, train_metrics = _local_round(config, worker, global_weights, silos, round_number, privacy)
        if report.text is not None and not report.text.update_bytes:
            report.text.update_bytes = len(serialize_weights(updates[0].weights))  # one site's upload
        updates = poison_updates(config, global_weights, updates, attack_rng)
        result = _aggregate(plan, global_weights, updates, state, privacy, secure)
        global_weights, state = result.weights, result.state
        record = RoundRecord(
            round=round_number,
            metrics=_evaluate(model_config, global_weights, test, config.seed),
            train_metrics=train_metrics,
            seconds=time.perf_counter() - round_started,
            aggregation=_adapter_details(result.details),
        )
        report.rounds.append(record)
        if progress:
            progress(record, config.rounds)
    report.federated, report.weights = report.rounds[-1].metrics, global_weights
    report.privacy = privacy.report(config, len(silos)) if privacy else None
    if report.text is not None:
        report.text.perplexity_after = _perplexity(model_config, global_weights, test, config.seed)
    if config.baselines:
        report.centralized, report.local = _baselines(config, model_config, initial_weights, silos, test)
    report.seconds = time.perf_counter() - started
    return report


def _adapter_details(details: Details) -> dict[str, float]:
    """The aggregation figures of LoRA adapters among the plan's details."""
    return {
        name: float(value)
        for name, value in details.items()
        if name in ADAPTER_DETAILS and isinstance(value, int | float)
    }


def _text_start(
    model_config: AnyModelConfig, initial_weights: Weights, test: SiloData, seed: int
) -> TextReport | None:
    """A text run's report before the first round: the initial model's test metrics and
    perplexity, and the full model's size (the update's size follows from round 1)."""
    if not isinstance(model_config, TextModelConfig):
        return None
    return TextReport(
        update_bytes=0,
        model_bytes=model_config.full_model_bytes,
        before=_evaluate(model_config, initial_weights, test, seed),
        perplexity_before=_perplexity(model_config, initial_weights, test, seed),
    )


def _perplexity(model_config: AnyModelConfig, weights: Weights, test: SiloData, seed: int) -> float | None:
    """The causal model's perplexity on the test texts with ``weights``; None for other models."""
    if not isinstance(model_config, TextModelConfig) or model_config.kind is not TextModelKind.LORA_CAUSAL_LM:
        return None
    from federation.models.text_models import LoraTextAdapter

    model = build_model(model_config, seed=seed)
    assert isinstance(model, LoraTextAdapter)
    model.set_weights(weights)
    return model.perplexity(test.features)


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
    silos: Sequence[SiloData],
    round_number: int,
    privacy: _PrivacyRun | None = None,
) -> tuple[list[ClientUpdate], dict[str, float]]:
    """Every silo trains from the global weights; one update each, aggregates only.

    With DP-SGD each silo's ledger records its steps; at the client level each silo clips
    its delta before sending it (inside the secure round under secure aggregation)."""
    updates, reported = [], []
    for index, silo in enumerate(silos):
        worker.set_weights(global_weights)
        seed = config.seed * 1_000_003 + round_number * 1_009 + index
        noise = privacy.site_noise(index) if privacy else None
        train_config = _local_train_config(config, seed=seed, noise_multiplier=noise)
        result = worker.fit(silo.features, silo.labels, train_config)
        weights = worker.get_weights()
        if privacy and result.privacy_spend is not None:
            privacy.ledgers[index] = privacy.ledgers[index].spend(result.privacy_spend)
        if privacy and privacy.settings.level is DPLevel.CLIENT and not config.secure_aggregation:
            weights, _ = clip_delta(weights, global_weights, privacy.settings.clipping_norm)
        updates.append(ClientUpdate(weights, result.num_examples, result.metrics))
        reported.append((result.metrics, result.num_examples))
    return updates, combine_metrics(reported)


def _aggregate(
    plan: RoundPlan,
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    state: Weights,
    privacy: _PrivacyRun | None,
    secure: _SecureRun | None = None,
) -> AggregationResult:
    """The round plan's aggregate of the updates, or of their secure sum.

    Under secure aggregation each silo runs the real protocol (:func:`secure_sum`; at the
    client level it clips its own change), and the plan adds the noise to the sum."""
    inputs: RoundInputs = updates
    if secure is not None:
        inputs = secure_sum(
            global_weights,
            updates,
            plan=plan,
            dropped_before_masking=secure.dropped(len(updates)),
            random_bytes=secure.random_bytes,  # seeded for repeatable runs; os.urandom at real sites
        )
    result = plan.aggregate(global_weights, inputs, state, privacy.rng if privacy else None)
    if privacy is not None and plan.privacy.uses_client_dp:
        _spend_client_round(privacy)
    return result


def _spend_client_round(privacy: _PrivacyRun) -> None:
    """Every silo takes part in every round: one unsampled Gaussian mechanism per round.

    Silos that drop out of a secure round only lower the number of contributions; the
    noise on the sum is still ``z * C`` against a sensitivity of ``C``."""
    event = PrivacyEvent(privacy.noise_multipliers[0], 1.0, 1)
    privacy.ledgers[0] = privacy.ledgers[0].spend(event)


def _baselines(
    config: SimulationConfig,
    model_config: AnyModelConfig,
    initial_weights: Weights,
    silos: Sequence[SiloData],
    test: SiloData,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Centralized training on the pooled data, and each silo alone, for as long as one
    silo trains over the whole federation: as many epochs, or (``max_steps``) as many steps."""

    def train_alone(data: SiloData, seed: int) -> dict[str, float]:
        model = build_model(model_config, seed=config.seed)
        model.set_weights(initial_weights)
        model.fit(data.features, data.labels, _baseline_train_config(config, seed))
        return compute_metrics(test.task, test.labels, model.predict(test.features))

    centralized = train_alone(_pooled(silos), config.seed)
    local = [train_alone(silo, config.seed + 1 + index) for index, silo in enumerate(silos)]
    return centralized, local


def _baseline_train_config(config: SimulationConfig, seed: int) -> TrainConfig:
    if config.max_steps is None:
        return _train_config(config, epochs=config.rounds * config.local_epochs, seed=seed, federated=False)
    return _train_config(
        config, epochs=1, seed=seed, federated=False, max_steps=config.rounds * config.max_steps
    )


def _pooled(silos: Sequence[SiloData]) -> SiloData:
    texts = [silo for silo in silos if isinstance(silo, TextDataset)]
    if texts:
        return TextDataset.concatenate(texts)
    return Dataset.concatenate([silo for silo in silos if isinstance(silo, Dataset)])
