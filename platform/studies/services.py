"""Setting up studies and recording each site's decision about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation.aggregation.strategies import build_strategy
from federation.aggregation.update_bound import UpdateNormBound
from federation.data import DataSchema, Standardizer
from federation.data.text import TextSchema, parse_data_schema
from federation.errors import ConfigurationError, FederationError
from federation.models import (
    AnyModelConfig,
    ModelConfig,
    TextModelConfig,
    TrainConfig,
    adapter_aggregation_of,
    model_config_from_json,
)
from federation.models.base import check_class_weighting
from federation.models.lora import dp_sgd_refusal, is_text_model
from federation.models.pins import builtin_pin
from federation.privacy.settings import DPLevel, PrivacySettings
from federation.rounds import RoundPlan
from fedplatform.errors import Conflict, InvalidInput, NotFound
from institutions.models import Institution
from studies.agreement import summary_requests_fail_on_decision
from studies.model_limits import check_model_size
from studies.models import Decision, ScalingMode, Study, StudyParticipant

TRAINING_KEYS = {"epochs", "batch_size", "learning_rate", "proximal_mu", "max_steps", "class_weighting"}


def study_validate(
    *,
    model_config: Mapping[str, object],
    data_schema: Mapping[str, object],
    strategy: str,
    strategy_params: Mapping[str, object],
    training: Mapping[str, object],
    feature_scaling: Mapping[str, object] | None,
    privacy: Mapping[str, object] | None = None,
    num_participants: int | None = None,
    update_norm_bound: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Check that the parts of a study fit together; raise :class:`InvalidInput` if not.

    Returns the model config as the study stores it (:func:`study_model_config_resolve`).
    """
    try:
        resolved = study_model_config_resolve(model_config=model_config, data_schema=data_schema)
        model = model_config_from_json(resolved)
        schema = parse_data_schema(dict(data_schema))
        plan = RoundPlan(
            strategy=build_strategy(strategy, dict(strategy_params)),  # type: ignore[arg-type]
            privacy=PrivacySettings.from_json(dict(privacy or {})),
            adapters=adapter_aggregation_of(model),
        )
        norm_bound = UpdateNormBound.from_json(update_norm_bound)
        unknown = set(training) - TRAINING_KEYS
        if unknown:
            raise InvalidInput(
                f"unknown training settings {sorted(unknown)}; allowed: {sorted(TRAINING_KEYS)}"
            )
        check_class_weighting(model.task, TrainConfig(**dict(training)))  # type: ignore[arg-type]
        if feature_scaling is not None:
            Standardizer(mean=feature_scaling.get("mean"), std=feature_scaling.get("std"))  # type: ignore[arg-type]
    except (FederationError, TypeError, ValueError) as error:
        raise InvalidInput(str(error)) from error
    check_model_size(model)
    if norm_bound is not None and plan.privacy.secure_aggregation:
        raise InvalidInput(
            "update_norm_bound needs to see each update; under secure aggregation the server sees "
            "only the sum (each site's agent can clip its own update: clip_update_norm in its policy)"
        )
    if isinstance(model, TextModelConfig):
        _check_text_model_fits(model, schema, feature_scaling, training, plan.privacy)
    elif training.get("max_steps") is not None:
        raise InvalidInput("max_steps caps a text model's steps per round; a tabular model trains by epochs")
    elif isinstance(schema, TextSchema):
        raise InvalidInput(
            f"a {model.kind.value} model reads numeric features; a text data schema needs a text model"
        )
    else:
        _check_model_fits_schema(model, schema, feature_scaling)
    _check_privacy_fits(plan, model, training, num_participants)
    return resolved


def study_model_config_resolve(
    *, model_config: Mapping[str, object], data_schema: Mapping[str, object]
) -> dict[str, object]:
    """The model config as a study stores it. A text model's ``base_model`` may be given as
    the name of a built-in model, which is pinned here (digests and layer shapes); its
    ``class_names`` and ``max_tokens`` default to the text schema's classes and token limit."""
    resolved = dict(model_config)
    if not is_text_model(resolved):
        return _tabular_defaults(resolved, data_schema)
    if isinstance(resolved.get("base_model"), str):
        resolved["base_model"] = builtin_pin(str(resolved["base_model"])).to_json()
    schema = parse_data_schema(dict(data_schema))
    if not isinstance(schema, TextSchema):
        raise InvalidInput(f"a {resolved.get('kind')} model reads text: the data schema needs kind text")
    resolved.setdefault("class_names", list(schema.classes))
    resolved.setdefault("max_tokens", schema.text.max_tokens)
    return resolved


def _tabular_defaults(
    model_config: dict[str, object], data_schema: Mapping[str, object]
) -> dict[str, object]:
    """A tabular model's task, input width and classes default to the schema's."""
    try:
        schema = parse_data_schema(dict(data_schema))
    except FederationError:
        return model_config  # the study's check reports the schema's fault
    if isinstance(schema, DataSchema):
        model_config.setdefault("task", schema.task.value)
        model_config.setdefault("num_features", len(schema.encoded_feature_names()))
        model_config.setdefault("num_classes", schema.num_classes)
    return model_config


def _uses_sample_dp(privacy: PrivacySettings) -> bool:
    mechanism = privacy.differential_privacy
    return mechanism is not None and mechanism.level is DPLevel.SAMPLE


def _check_text_model_fits(
    model: TextModelConfig,
    schema: DataSchema | TextSchema,
    feature_scaling: Mapping[str, object] | None,
    training: Mapping[str, object],
    privacy: PrivacySettings,
) -> None:
    if not isinstance(schema, TextSchema):
        raise InvalidInput(f"a {model.kind.value} model reads text: the data schema needs kind text")
    if model.task is not schema.task or model.num_classes != schema.num_classes:
        raise InvalidInput(
            f"the model is {model.task.value} with {model.num_classes} classes but the schema is "
            f"{schema.task.value} with {schema.num_classes}"
        )
    if model.class_names != schema.classes:
        raise InvalidInput(
            f"the model's class_names must be the schema's classes in order: {list(schema.classes)}"
        )
    if model.max_tokens != schema.text.max_tokens:
        raise InvalidInput(
            f"the model reads {model.max_tokens} tokens but the schema's text field declares "
            f"{schema.text.max_tokens}: give one token limit"
        )
    if feature_scaling is not None:
        raise InvalidInput("feature_scaling applies to numeric features; a text study has none")
    if float(training.get("proximal_mu", 0.0) or 0.0) > 0:  # type: ignore[arg-type]
        raise InvalidInput("FedProx's proximal term is not available for text models: set proximal_mu to 0")
    refusal = dp_sgd_refusal(model) if _uses_sample_dp(privacy) else None
    if refusal is not None:
        raise InvalidInput(refusal)


def _check_privacy_fits(
    plan: RoundPlan, model: AnyModelConfig, training: Mapping[str, object], num_participants: int | None
) -> None:
    """Refuse privacy settings the rest of the study cannot honour, with the reason."""
    kind = model.kind if isinstance(model, ModelConfig) else None  # text models: the plan's adapter rules
    proximal_mu = float(training.get("proximal_mu", 0.0) or 0.0)  # type: ignore[arg-type]
    try:
        plan.check(
            num_participants,
            kind,
            proximal_mu=proximal_mu,
            class_weighting=training.get("class_weighting") is True,
        )
    except ConfigurationError as error:
        raise InvalidInput(str(error)) from None


def _check_model_fits_schema(
    model: ModelConfig, schema: DataSchema, feature_scaling: Mapping[str, object] | None
) -> None:
    width = len(schema.encoded_feature_names())
    if model.num_features != width:
        raise InvalidInput(f"the model takes {model.num_features} features but the schema encodes {width}")
    if model.task is not schema.task:
        raise InvalidInput(f"the model's task is {model.task.value} but the schema's is {schema.task.value}")
    if schema.num_classes != model.num_classes:
        raise InvalidInput(
            f"the model has {model.num_classes} classes but the schema declares {schema.num_classes}"
        )
    if feature_scaling is not None and len(feature_scaling.get("mean", [])) != width:  # type: ignore[arg-type]
        raise InvalidInput(f"feature_scaling must have {width} means and standard deviations")


#: ``feature_scaling`` left out of a new study: agreed through the agents for a tabular
#: study, none for a text study (which has no numeric features).
SCALING_DEFAULT = "default"


def scaling_choice(
    feature_scaling: Mapping[str, object] | str | None, data_schema: Mapping[str, object]
) -> tuple[ScalingMode, Mapping[str, object] | None]:
    """The study's scaling mode and given scaling from the ``feature_scaling`` it was set up
    with: ``{"mean": [...], "std": [...]}``, ``"agents"``, ``"none"`` or null (none)."""
    if feature_scaling is None or isinstance(feature_scaling, Mapping):
        return (ScalingMode.NONE if feature_scaling is None else ScalingMode.GIVEN), feature_scaling
    try:
        text = isinstance(parse_data_schema(dict(data_schema)), TextSchema)
    except FederationError as error:
        raise InvalidInput(str(error)) from error
    if feature_scaling == SCALING_DEFAULT:
        return (ScalingMode.NONE if text else ScalingMode.AGENTS), None
    if feature_scaling == ScalingMode.AGENTS and text:
        raise InvalidInput("feature_scaling 'agents' applies to numeric features; a text study has none")
    if feature_scaling in (ScalingMode.AGENTS, ScalingMode.NONE):
        return ScalingMode(feature_scaling), None
    raise InvalidInput(
        'feature_scaling must be {"mean": [...], "std": [...]}, "agents" (agreed through the sites\' '
        'agents) or "none"'
    )


@transaction.atomic
def study_create(
    *,
    name: str,
    description: str,
    model_config: Mapping[str, object],
    data_schema: Mapping[str, object],
    strategy: str,
    strategy_params: Mapping[str, object],
    training: Mapping[str, object],
    feature_scaling: Mapping[str, object] | str | None,
    privacy: Mapping[str, object],
    validation_fraction: float,
    seed: int,
    institution_ids: Sequence[int],
    actor: str,
    update_norm_bound: Mapping[str, object] | None = None,
) -> Study:
    """A new study; ``feature_scaling`` as :func:`scaling_choice` reads it."""
    scaling_mode, feature_scaling = scaling_choice(feature_scaling, data_schema)
    model_config = study_validate(
        model_config=model_config,
        data_schema=data_schema,
        strategy=strategy,
        strategy_params=strategy_params,
        training=training,
        feature_scaling=feature_scaling,
        privacy=privacy,
        num_participants=len(set(institution_ids)),
        update_norm_bound=update_norm_bound,
    )
    institutions = list(Institution.objects.filter(pk__in=set(institution_ids)))
    if len(institutions) != len(set(institution_ids)) or not institutions:
        raise InvalidInput("participants must be one or more existing institutions")
    try:
        with transaction.atomic():
            study = Study.objects.create(
                name=name,
                description=description,
                model_config=dict(model_config),
                data_schema=dict(data_schema),
                strategy=strategy,
                strategy_params=dict(strategy_params),
                training=dict(training),
                feature_scaling=dict(feature_scaling) if feature_scaling is not None else None,
                scaling_mode=scaling_mode,
                privacy=dict(privacy),
                update_norm_bound=dict(update_norm_bound or {}),
                validation_fraction=validation_fraction,
                seed=seed,
                created_by=actor,
            )
    except IntegrityError:
        raise Conflict(f"a study named {name!r} exists already", code="duplicate") from None
    StudyParticipant.objects.bulk_create(StudyParticipant(study=study, institution=i) for i in institutions)
    audit_record(
        actor=actor,
        kind="study.created",
        details={"study_id": study.pk, "name": name, "institutions": sorted(i.pk for i in institutions)},
    )
    return study


@transaction.atomic
def study_decide(*, study: Study, institution: Institution, approve: bool, actor: str) -> StudyParticipant:
    """A data owner approves or declines a study for their institution."""
    participant = (
        StudyParticipant.objects.select_for_update().filter(study=study, institution=institution).first()
    )
    if participant is None:
        raise NotFound(f"{institution.name} does not take part in study {study.name!r}")
    if study.jobs.filter(state__in=("running", "paused")).exists():
        # Mid-job the site's agent refuses instead, which the rounds are recounted for.
        raise Conflict("a job of this study is running; its decision cannot change now", code="job_running")
    participant.decision = Decision.APPROVED if approve else Decision.DECLINED
    participant.decided_at = timezone.now()
    participant.decided_by = actor
    participant.save(update_fields=["decision", "decided_at", "decided_by"])
    summary_requests_fail_on_decision(study=study, institution_name=institution.name)
    audit_record(
        actor=actor,
        kind="study.approved" if approve else "study.declined",
        institution=institution,
        details={"study_id": study.pk},
    )
    return participant
