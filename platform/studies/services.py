"""Setting up studies and recording each site's decision about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation.aggregation.strategies import build_strategy
from federation.aggregation.update_bound import UpdateNormBound
from federation.data import DataSchema, Standardizer
from federation.errors import ConfigurationError, FederationError
from federation.models import ModelConfig, TrainConfig
from federation.privacy.settings import PrivacySettings
from federation.rounds import RoundPlan
from fedplatform.errors import Conflict, InvalidInput, NotFound
from institutions.models import Institution
from studies.models import Decision, Study, StudyParticipant

TRAINING_KEYS = {"epochs", "batch_size", "learning_rate", "proximal_mu"}


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
) -> None:
    """Check that the parts of a study fit together; raise :class:`InvalidInput` if not."""
    try:
        model = ModelConfig.from_json(dict(model_config))
        schema = DataSchema.from_json(dict(data_schema))
        plan = RoundPlan(
            strategy=build_strategy(strategy, dict(strategy_params)),  # type: ignore[arg-type]
            privacy=PrivacySettings.from_json(dict(privacy or {})),
        )
        norm_bound = UpdateNormBound.from_json(update_norm_bound)
        unknown = set(training) - TRAINING_KEYS
        if unknown:
            raise InvalidInput(
                f"unknown training settings {sorted(unknown)}; allowed: {sorted(TRAINING_KEYS)}"
            )
        TrainConfig(**dict(training))  # type: ignore[arg-type]
        if feature_scaling is not None:
            Standardizer(mean=feature_scaling.get("mean"), std=feature_scaling.get("std"))  # type: ignore[arg-type]
    except (FederationError, TypeError, ValueError) as error:
        raise InvalidInput(str(error)) from error
    _check_model_size(model)
    if norm_bound is not None and plan.privacy.secure_aggregation:
        raise InvalidInput(
            "update_norm_bound needs to see each update; under secure aggregation the server sees "
            "only the sum (each site's agent can clip its own update: clip_update_norm in its policy)"
        )
    _check_model_fits_schema(model, schema, feature_scaling)
    _check_privacy_fits(plan, model, training, num_participants)


def _check_privacy_fits(
    plan: RoundPlan, model: ModelConfig, training: Mapping[str, object], num_participants: int | None
) -> None:
    """Refuse privacy settings the rest of the study cannot honour, with the reason."""
    try:
        plan.check(num_participants, model.kind, proximal_mu=float(training.get("proximal_mu", 0.0) or 0.0))  # type: ignore[arg-type]
    except ConfigurationError as error:
        raise InvalidInput(str(error)) from None


def _check_model_size(model: ModelConfig) -> None:
    """Refuse a model too large to build, send and aggregate (counted, never built here)."""
    limit = django_settings.FEDHEALTH_MAX_MODEL_PARAMETERS
    if model.num_parameters > limit:
        raise InvalidInput(
            f"the model has {model.num_parameters:,} parameters; this control plane takes at most "
            f"{limit:,} (FEDHEALTH_MAX_MODEL_PARAMETERS)"
        )


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
    feature_scaling: Mapping[str, object] | None,
    privacy: Mapping[str, object],
    validation_fraction: float,
    seed: int,
    institution_ids: Sequence[int],
    actor: str,
    update_norm_bound: Mapping[str, object] | None = None,
) -> Study:
    study_validate(
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
    audit_record(
        actor=actor,
        kind="study.approved" if approve else "study.declined",
        institution=institution,
        details={"study_id": study.pk},
    )
    return participant
