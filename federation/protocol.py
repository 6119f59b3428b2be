"""The task message: the work the control plane hands an agent (``GET work``), one contract.

The control plane builds a :class:`WorkTask` and sends :meth:`WorkTask.to_json`; the agent
checks what it receives with :func:`parse_task`, which raises :class:`ProtocolError` naming
the field that is wrong. Both sides, and the tests' fake server, use these definitions, so
the two ends cannot drift apart (docs/api.md shows the message).

The model configuration and data schema stay raw JSON here: the agent's policy check looks
at the model kind before anything else, so a study using a model the agent does not know is
refused by policy rather than failing to parse. The job's privacy settings are parsed here,
once, with the control plane's own parser; settings the agent does not understand are kept
as the reason (``privacy_problem``), and its policy refuses the job with it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from federation.errors import ConfigurationError, ProtocolError
from federation.privacy.settings import PrivacySettings

JsonObject = Mapping[str, object]

#: The version of the task message this code writes and reads. A message without one is
#: version 1 (servers before the field existed); any other version is refused.
PROTOCOL_VERSION = 1


class TaskKind(enum.StrEnum):
    """What a task asks: train one round, evaluate the final model, summarise the site's
    data for the data agreement (:class:`SummaryTask`), or answer a federated query
    (:class:`QueryTask`)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    SUMMARISE = "summarise"
    QUERY = "query"


@dataclass(frozen=True)
class ModelVersionRef:
    """The global model a round starts from."""

    id: int
    sha256: str
    size: int


@dataclass(frozen=True)
class TrainingSettings:
    """How each site trains locally in one round."""

    epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    #: Fixes the optimizer steps of one round (text models); None: the epochs decide.
    max_steps: int | None = None
    #: Weighs examples by the inverse frequency of their class at the site.
    class_weighting: bool = False


@dataclass(frozen=True)
class StudySettings:
    """The part of a study the agent needs."""

    id: int
    name: str
    model: JsonObject
    data_schema: JsonObject | None
    feature_scaling: JsonObject | None
    strategy_name: str
    #: The job's privacy settings (client-level noise resolved); None when they cannot be
    #: parsed here, and ``privacy_problem`` says why.
    privacy: PrivacySettings | None
    training: TrainingSettings
    validation_fraction: float
    seed: int
    strategy_params: JsonObject = dataclasses.field(default_factory=dict)
    privacy_problem: str = ""

    @property
    def model_kind(self) -> str:
        return str(self.model.get("kind", ""))

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "model": dict(self.model),
            "data_schema": None if self.data_schema is None else dict(self.data_schema),
            "feature_scaling": None if self.feature_scaling is None else dict(self.feature_scaling),
            "strategy": {"name": self.strategy_name, "params": dict(self.strategy_params)},
            "privacy": {} if self.privacy is None else self.privacy.to_json(),
            "training": _training_json(self.training),
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class WorkTask:
    """One task: train a round or evaluate the final model."""

    kind: TaskKind
    job_id: int
    round_id: int
    round_number: int
    total_rounds: int
    deadline_at: str
    model_version: ModelVersionRef
    study: StudySettings
    #: The secure-aggregation protocol's state for this site (phase, config, roster, ...);
    #: None in a round without it. Checked by the agent's ``silo_agent.secure_round``.
    secure_aggregation: JsonObject | None = None

    def to_json(self) -> dict[str, object]:
        """The message as the control plane sends it."""
        message: dict[str, object] = {
            "protocol_version": PROTOCOL_VERSION,
            "kind": self.kind.value,
            "job_id": self.job_id,
            "round_id": self.round_id,
            "round_number": self.round_number,
            "total_rounds": self.total_rounds,
            "deadline_at": self.deadline_at,
            "model_version": dataclasses.asdict(self.model_version),
            "study": self.study.to_json(),
        }
        if self.secure_aggregation is not None:
            message["secure_aggregation"] = dict(self.secure_aggregation)
        return message


@dataclass(frozen=True)
class SummaryTask:
    """Asks a site for the aggregates of its data that the data agreement combines
    (:mod:`federation.data.agreement`): counts and sums, never rows."""

    request_id: int
    deadline_at: str
    study_id: int
    study_name: str
    data_schema: JsonObject
    #: Under secure aggregation, the step: ``{"phase": "keys"}``, then ``{"phase": "mask",
    #: "roster": {site id: base64 public key}}`` (:mod:`federation.privacy.secure_sum`).
    secure_aggregation: JsonObject | None = None
    kind: TaskKind = TaskKind.SUMMARISE

    def to_json(self) -> dict[str, object]:
        message: dict[str, object] = {
            "protocol_version": PROTOCOL_VERSION,
            "kind": self.kind.value,
            "request_id": self.request_id,
            "deadline_at": self.deadline_at,
            "study": {"id": self.study_id, "name": self.study_name, "data_schema": dict(self.data_schema)},
        }
        if self.secure_aggregation is not None:
            message["secure_aggregation"] = dict(self.secure_aggregation)
        return message


@dataclass(frozen=True)
class QueryTask:
    """Asks a site to answer a federated query its data owner approved
    (:mod:`federation.analytics.queries`): counts and sums, never rows."""

    query_id: int
    deadline_at: str
    study_id: int
    study_name: str
    data_schema: JsonObject
    #: ``Query.to_json()``.
    query: JsonObject
    #: Under secure aggregation, the step, as for a summary.
    secure_aggregation: JsonObject | None = None
    #: An evaluation's study settings (model, scaling, split) and the model versions to
    #: score: ``{"study": StudySettings json, "versions": [{"id", "sha256", "size"}]}``.
    evaluation: JsonObject | None = None
    kind: TaskKind = TaskKind.QUERY

    def to_json(self) -> dict[str, object]:
        message: dict[str, object] = {
            "protocol_version": PROTOCOL_VERSION,
            "kind": self.kind.value,
            "query_id": self.query_id,
            "deadline_at": self.deadline_at,
            "study": {"id": self.study_id, "name": self.study_name, "data_schema": dict(self.data_schema)},
            "query": dict(self.query),
        }
        if self.secure_aggregation is not None:
            message["secure_aggregation"] = dict(self.secure_aggregation)
        if self.evaluation is not None:
            message["evaluation"] = dict(self.evaluation)
        return message

    def evaluation_study(self) -> StudySettings:
        """The study settings an evaluation scores its versions under."""
        return _study(_object(self.evaluation or {}, "study", where="evaluation."))

    def evaluation_versions(self) -> list[ModelVersionRef]:
        versions = (self.evaluation or {}).get("versions")
        if not isinstance(versions, list) or not all(isinstance(v, Mapping) for v in versions):
            raise ProtocolError("malformed task: evaluation.versions must be a list of model versions")
        return [_model_version(v) for v in versions]


def _query_task(data: JsonObject) -> QueryTask:
    study = _object(data, "study")
    return QueryTask(
        query_id=_integer(data, "query_id"),
        deadline_at=str(data.get("deadline_at", "")),
        study_id=_integer(study, "id", where="study."),
        study_name=_text(study, "name", where="study."),
        data_schema=_object(study, "data_schema", where="study."),
        query=_object(data, "query"),
        secure_aggregation=_optional_object(data, "secure_aggregation", where=""),
        evaluation=_optional_object(data, "evaluation", where=""),
    )


def parse_any_task(data: JsonObject) -> WorkTask | SummaryTask | QueryTask:
    """A round's task, a summary task or a query task, by its kind; :class:`ProtocolError`
    if malformed."""
    if _task_kind(data) is TaskKind.QUERY:
        return _query_task(data)
    if _task_kind(data) is TaskKind.SUMMARISE:
        study = _object(data, "study")
        return SummaryTask(
            request_id=_integer(data, "request_id"),
            deadline_at=str(data.get("deadline_at", "")),
            study_id=_integer(study, "id", where="study."),
            study_name=_text(study, "name", where="study."),
            data_schema=_object(study, "data_schema", where="study."),
            secure_aggregation=_optional_object(data, "secure_aggregation", where=""),
        )
    return parse_task(data)


def _task_kind(data: JsonObject) -> TaskKind:
    version = data.get("protocol_version", 1)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the server speaks task protocol version {version!r}; this code speaks {PROTOCOL_VERSION}"
        )
    kind_name = _text(data, "kind")
    try:
        return TaskKind(kind_name)
    except ValueError:
        raise ProtocolError(f"malformed task: unknown kind {kind_name!r}") from None


def parse_task(data: JsonObject) -> WorkTask:
    """Check and parse a round's task; raises :class:`ProtocolError` saying which field is wrong."""
    kind = _task_kind(data)
    if kind in (TaskKind.SUMMARISE, TaskKind.QUERY):
        raise ProtocolError(f"malformed task: a {kind.value} task is not a round's task")
    return WorkTask(
        kind=kind,
        job_id=_integer(data, "job_id"),
        round_id=_integer(data, "round_id"),
        round_number=_integer(data, "round_number"),
        total_rounds=_integer(data, "total_rounds"),
        deadline_at=str(data.get("deadline_at", "")),
        model_version=_model_version(_object(data, "model_version")),
        study=_study(_object(data, "study")),
        secure_aggregation=_optional_object(data, "secure_aggregation", where=""),
    )


def _model_version(data: JsonObject) -> ModelVersionRef:
    digest = _text(data, "sha256", where="model_version.").lower()
    if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
        raise ProtocolError("malformed task: model_version.sha256 is not a hex SHA-256 digest")
    return ModelVersionRef(
        id=_integer(data, "id", where="model_version."),
        sha256=digest,
        size=_integer(data, "size", where="model_version.", minimum=1),
    )


def _study(data: JsonObject) -> StudySettings:
    fraction = _number(data, "validation_fraction", where="study.")
    if not 0.0 < fraction < 1.0:
        raise ProtocolError("malformed task: study.validation_fraction must lie strictly between 0 and 1")
    strategy = _object(data, "strategy", where="study.")
    privacy, problem = parse_privacy(_optional_object(data, "privacy", where="study.") or {})
    return StudySettings(
        id=_integer(data, "id", where="study."),
        name=_text(data, "name", where="study."),
        model=_object(data, "model", where="study."),
        data_schema=_optional_object(data, "data_schema", where="study."),
        feature_scaling=_optional_object(data, "feature_scaling", where="study."),
        strategy_name=_text(strategy, "name", where="study.strategy."),
        strategy_params=_optional_object(strategy, "params", where="study.strategy.") or {},
        privacy=privacy,
        privacy_problem=problem,
        training=_training(_object(data, "training", where="study.")),
        validation_fraction=fraction,
        seed=_integer(data, "seed", where="study."),
    )


def parse_privacy(data: JsonObject) -> tuple[PrivacySettings | None, str]:
    """A job's privacy settings, or None and why they cannot be understood here."""
    try:
        return PrivacySettings.from_json(data), ""
    except ConfigurationError as error:
        return None, str(error)


def _training(data: JsonObject) -> TrainingSettings:
    where = "study.training."
    return TrainingSettings(
        epochs=_integer(data, "epochs", where=where, minimum=1),
        batch_size=_integer(data, "batch_size", where=where, minimum=1),
        learning_rate=_number(data, "learning_rate", where=where),
        proximal_mu=_number(data, "proximal_mu", where=where, default=0.0),
        max_steps=None
        if data.get("max_steps") is None
        else _integer(data, "max_steps", where=where, minimum=1),
        class_weighting=_boolean(data, "class_weighting", where=where, default=False),
    )


def _training_json(training: TrainingSettings) -> dict[str, object]:
    # The later settings travel only when set, so older tasks read as they always did.
    data = dataclasses.asdict(training)
    if training.max_steps is None:
        del data["max_steps"]
    if not training.class_weighting:
        del data["class_weighting"]
    return data


def _object(data: JsonObject, key: str, *, where: str = "") -> JsonObject:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ProtocolError(f"malformed task: {where}{key} must be an object")
    return value


def _optional_object(data: JsonObject, key: str, *, where: str) -> JsonObject | None:
    return None if data.get(key) is None else _object(data, key, where=where)


def _text(data: JsonObject, key: str, *, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"malformed task: {where}{key} must be a non-empty string")
    return value


def _integer(data: JsonObject, key: str, *, where: str = "", minimum: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(f"malformed task: {where}{key} must be an integer >= {minimum}")
    return value


def _boolean(data: JsonObject, key: str, *, where: str = "", default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"malformed task: {where}{key} must be true or false")
    return value


def _number(data: JsonObject, key: str, *, where: str = "", default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"malformed task: {where}{key} must be a finite number")
    return float(value)
