"""Coordinator API: studies, their participants, and each site's decision about them."""

from __future__ import annotations

import enum

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from accounts.permissions import IsDataOwner
from accounts.selectors import Scope
from federation.aggregation.strategies import StrategyName
from federation.models.base import MAX_SEED
from fedplatform.api_base import ApiView, error_responses, request_actor, request_scope
from fedplatform.serializers import MAX_ID, InstitutionRefSerializer
from institutions.selectors import own_institution_get
from studies import agreement, selectors, services
from studies.models import Decision, ScalingMode, Study, StudyParticipant

TAGS = ["studies"]


class ParticipantOutputSerializer(serializers.Serializer):
    institution = InstitutionRefSerializer()
    decision = serializers.ChoiceField(choices=Decision.choices)
    decided_at = serializers.DateTimeField(allow_null=True)
    decided_by = serializers.SerializerMethodField(
        help_text="who decided, empty while pending: for coordinators the account (`user:alice`), "
        "for everyone else the role and institution (`data owner of Hospital A`)"
    )

    class Meta:
        ref_name = "StudyParticipant"

    @extend_schema_field(serializers.CharField())
    def get_decided_by(self, participant: StudyParticipant) -> str:
        # Without the reader's scope, the form that names no one.
        scope = self.context.get("scope") or Scope(role=Role.OBSERVER)
        return selectors.participant_decided_by(participant=participant, scope=scope)


class StudySummaryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    strategy = serializers.CharField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    participants = ParticipantOutputSerializer(many=True, source="participants.all")

    class Meta:
        ref_name = "StudySummary"


class StudyOutputSerializer(StudySummaryOutputSerializer):
    """A study in full (detail and create)."""

    model = serializers.DictField(source="model_config", help_text="federation ModelConfig")
    data_schema = serializers.DictField(help_text="federation DataSchema")
    strategy_params = serializers.DictField()
    training = serializers.DictField()
    feature_scaling = serializers.DictField(allow_null=True)
    scaling_mode = serializers.ChoiceField(
        choices=ScalingMode.choices, help_text="agents (agreed through the agents), given, or none"
    )
    privacy = serializers.DictField()
    update_norm_bound = serializers.DictField()
    validation_fraction = serializers.FloatField()
    seed = serializers.IntegerField()

    class Meta:
        ref_name = "Study"


class StudyListApi(ApiView):
    @extend_schema(
        tags=TAGS, responses={200: StudySummaryOutputSerializer(many=True), **error_responses(401)}
    )
    def get(self, request: Request) -> Response:
        """The studies this account may see (a data owner: those their institution takes part in)."""
        scope = request_scope(request)
        queryset = selectors.study_list(scope=scope)
        return self.paginated_response(
            queryset=queryset, serializer_class=StudySummaryOutputSerializer, context={"scope": scope}
        )


@extend_schema_field(
    {
        "oneOf": [
            {"type": "object", "properties": {"mean": {"type": "array"}, "std": {"type": "array"}}},
            {"type": "string", "enum": ["agents", "none"]},
        ],
        "nullable": True,
    }
)
class ScalingInputField(serializers.Field):
    """``feature_scaling``: an object, or one of the words ``agents`` and ``none``."""

    def to_internal_value(self, data: object) -> object:
        if isinstance(data, dict) or data in ("agents", "none"):
            return data
        raise serializers.ValidationError('expected {"mean": [...], "std": [...]}, "agents" or "none"')

    def to_representation(self, value: object) -> object:
        return value


class StudyCreateApi(ApiView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        description = serializers.CharField(allow_blank=True, default="")
        model = serializers.DictField(
            help_text="federation ModelConfig: kind, task, num_features, num_classes, ..."
        )
        data_schema = serializers.DictField(help_text="federation DataSchema: features, label, task, classes")
        strategy = serializers.ChoiceField(choices=[name.value for name in StrategyName])
        strategy_params = serializers.DictField(default=dict)
        training = serializers.DictField(
            default=dict, help_text="epochs, batch_size, learning_rate, proximal_mu (defaults when left out)"
        )
        feature_scaling = ScalingInputField(
            required=False,
            allow_null=True,
            help_text='{"mean": [...], "std": [...]} (given), "agents" (agreed through the sites\' agents '
            'before the first job: the default for a tabular study) or "none" (null too)',
        )
        privacy = serializers.DictField(default=dict)
        update_norm_bound = serializers.DictField(
            default=dict,
            help_text='{"max_ratio": 10, "action": "refuse" or "clip"}: an update may change the model by '
            "at most max_ratio times its norm (at least 1); {} for no bound",
        )
        validation_fraction = serializers.FloatField(default=0.2, help_text="strictly between 0 and 1")
        seed = serializers.IntegerField(min_value=0, max_value=MAX_SEED, default=0)
        institutions = serializers.ListField(
            child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1
        )

        class Meta:
            ref_name = "StudyCreate"

        def validate_validation_fraction(self, value: float) -> float:
            if not 0.0 < value < 1.0:
                raise serializers.ValidationError("validation_fraction must lie strictly between 0 and 1.")
            return value

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: StudyOutputSerializer, **error_responses(400, 401, 403, 409)},
    )
    def post(self, request: Request) -> Response:
        """Set up a study and its participants (coordinators); the parts must fit together."""
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        study = services.study_create(
            name=data["name"],
            description=data["description"],
            model_config=data["model"],
            data_schema=data["data_schema"],
            strategy=data["strategy"],
            strategy_params=data["strategy_params"],
            training=data["training"],
            feature_scaling=data.get("feature_scaling", services.SCALING_DEFAULT),
            privacy=data["privacy"],
            update_norm_bound=data["update_norm_bound"],
            validation_fraction=data["validation_fraction"],
            seed=data["seed"],
            institution_ids=data["institutions"],
            actor=request_actor(request),
        )
        scope = request_scope(request)
        study = selectors.study_get(scope=scope, study_id=study.pk)
        return Response(
            StudyOutputSerializer(study, context={"scope": scope}).data, status=status.HTTP_201_CREATED
        )


class StudyListCreateApi(StudyListApi, StudyCreateApi):
    """``studies/`` answers GET (list) and POST (create): two operations, one route."""


class StudyDetailApi(ApiView):
    @extend_schema(tags=TAGS, responses={200: StudyOutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, study_id: int) -> Response:
        """One study in full, with each participant's decision."""
        scope = request_scope(request)
        study = selectors.study_get(scope=scope, study_id=study_id)
        return Response(StudyOutputSerializer(study, context={"scope": scope}).data)


class DecisionChoice(enum.StrEnum):
    APPROVE = "approve"
    DECLINE = "decline"


@extend_schema_field(
    {"type": "string", "pattern": "^(approve|decline)$", "description": "approve or decline"}
)
class DecisionChoiceField(serializers.ChoiceField):
    """The input ``decision``. Documented by a pattern, not an enum: an enum would collide with
    the participants' ``decision`` enum (pending|approved|declined) and make drf-spectacular warn."""


class DecisionInputSerializer(serializers.Serializer):
    """A data owner's decision for their own institution: about a study, or a query of one."""

    institution = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, help_text="the caller's own institution"
    )
    decision = DecisionChoiceField(choices=[choice.value for choice in DecisionChoice])

    class Meta:
        ref_name = "DecisionInput"


class StudyDecideApi(ApiView):
    """A data owner approves or declines a study for their own institution (only they may)."""

    permission_classes = (IsDataOwner,)
    InputSerializer = DecisionInputSerializer

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={200: ParticipantOutputSerializer, **error_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, study_id: int) -> Response:
        """Approve or decline the study for the caller's own institution (data owners only)."""
        scope = request_scope(request)
        study = selectors.study_get(scope=scope, study_id=study_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        institution = own_institution_get(
            scope=scope, institution_id=serializer.validated_data["institution"]
        )
        participant = services.study_decide(
            study=study,
            institution=institution,
            actor=request_actor(request),
            approve=serializer.validated_data["decision"] == DecisionChoice.APPROVE,
        )
        return Response(ParticipantOutputSerializer(participant, context={"scope": scope}).data)


class SummarySiteOutputSerializer(serializers.Serializer):
    institution = InstitutionRefSerializer()
    answer = serializers.ChoiceField(choices=["waiting", "answered", "refused"])
    refusal = serializers.CharField(help_text="the site's reason, when it refused")

    class Meta:
        ref_name = "SummarySite"


class SummaryRequestOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=["open", "complete", "failed", "expired"])
    secure_aggregation = serializers.BooleanField(help_text="summed so that the server sees only the total")
    phase = serializers.CharField(help_text="under secure aggregation: keys, then mask")
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField()
    deadline_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(help_text="why it failed: the sites that refused and their reasons")
    sites = SummarySiteOutputSerializer(many=True)

    class Meta:
        ref_name = "SummaryRequest"


class StudySummariesApi(ApiView):
    """The data agreement: the study's feature scaling and categories, agreed through the
    agents from the sites' counts and sums (never rows)."""

    class OutputSerializer(serializers.Serializer):
        scaling_mode = serializers.ChoiceField(choices=ScalingMode.choices)
        feature_scaling = serializers.DictField(allow_null=True)
        request = SummaryRequestOutputSerializer(allow_null=True, help_text="the latest request, if any")

        class Meta:
            ref_name = "StudySummaries"

    def _answer(self, request: Request, study: Study, status_code: int = status.HTTP_200_OK) -> Response:
        study.refresh_from_db()
        body = {
            "scaling_mode": study.scaling_mode,
            "feature_scaling": study.feature_scaling,
            "request": agreement.summary_request_view(study=study, scope=request_scope(request)),
        }
        return Response(self.OutputSerializer(body).data, status=status_code)

    @extend_schema(tags=TAGS, responses={200: OutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, study_id: int) -> Response:
        """The study's scaling and the latest summary request: who answered, who refused and why."""
        return self._answer(request, selectors.study_get(scope=request_scope(request), study_id=study_id))

    class InputSerializer(serializers.Serializer):
        secure_aggregation = serializers.BooleanField(
            required=False,
            allow_null=True,
            help_text="sum the summaries so that the server sees only the total; default: as the "
            "study's privacy settings say",
        )

        class Meta:
            ref_name = "SummaryRequestCreate"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, study_id: int) -> Response:
        """Ask every approved site's agent for its summary (coordinators). When all have
        answered, the study holds the union of the categories and the pooled scaling."""
        study = selectors.study_get(scope=request_scope(request), study_id=study_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agreement.summary_request_open(
            study=study,
            actor=request_actor(request),
            secure_aggregation=serializer.validated_data.get("secure_aggregation"),
        )
        return self._answer(request, study, status.HTTP_201_CREATED)
