"""Coordinator API: a study's federated queries, each data owner's decision about them, and
their results."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import IsDataOwner
from fedplatform.api_base import ApiView, error_responses, request_actor, request_scope
from fedplatform.serializers import InstitutionRefSerializer
from institutions.selectors import own_institution_get
from queries import services
from studies.apis import DecisionChoice, DecisionInputSerializer
from studies.models import Decision
from studies.selectors import study_get

TAGS = ["queries"]


class QuerySiteOutputSerializer(serializers.Serializer):
    institution = InstitutionRefSerializer()
    decision = serializers.ChoiceField(choices=Decision.choices)
    answer = serializers.ChoiceField(
        choices=[
            "awaiting approval",
            "not decided",
            "declined",
            "waiting",
            "not answered",
            "answered",
            "refused",
        ]
    )
    refusal = serializers.CharField(
        help_text="the site's reason, when it refused (its own data owner and coordinators)"
    )

    class Meta:
        ref_name = "QuerySite"


class QueryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study = serializers.IntegerField()
    title = serializers.CharField()
    query = serializers.DictField(help_text="the question, its columns resolved against the study's schema")
    state = serializers.ChoiceField(choices=["open", "complete", "failed", "expired"])
    secure_aggregation = serializers.BooleanField(help_text="summed so that the server sees only the total")
    phase = serializers.CharField(help_text="under secure aggregation: keys, then mask")
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField()
    deadline_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(help_text="why it failed: a decline, or the sites that refused and why")
    sites = QuerySiteOutputSerializer(many=True)
    result = serializers.DictField(
        allow_null=True,
        help_text="combined (and, in the clear, per site) once every site has answered; docs/analytics.md",
    )

    class Meta:
        ref_name = "Query"


class QueryListApi(ApiView):
    class InputSerializer(serializers.Serializer):
        query = serializers.DictField(
            help_text='{"kind": "columns" | "histogram" | "quantiles" | "cross_table" | "correlation" | '
            '"survival" | "evaluation", ...}; docs/analytics.md lists each kind\'s fields'
        )
        secure_aggregation = serializers.BooleanField(
            required=False,
            allow_null=True,
            help_text="sum the answers so that the server sees only the total (columns, histogram, "
            "quantiles, cross_table, correlation); default: as the study's privacy settings say",
        )

        class Meta:
            ref_name = "QueryCreate"

    @extend_schema(tags=TAGS, responses={200: QueryOutputSerializer(many=True), **error_responses(401, 404)})
    def get(self, request: Request, study_id: int) -> Response:
        """The study's queries, newest first."""
        scope = request_scope(request)
        study = study_get(scope=scope, study_id=study_id)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(services.query_list(study=study), request, view=self) or []
        views = [services.query_view(query=query, scope=scope) for query in page]
        return paginator.get_paginated_response(QueryOutputSerializer(views, many=True).data)

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: QueryOutputSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, study_id: int) -> Response:
        """Ask every site that approved the study (coordinators); each data owner then
        approves or declines the query, and the approving sites' agents answer it."""
        scope = request_scope(request)
        study = study_get(scope=scope, study_id=study_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        query = services.query_create(
            study=study,
            spec=serializer.validated_data["query"],
            actor=request_actor(request),
            secure_aggregation=serializer.validated_data.get("secure_aggregation"),
        )
        view = services.query_view(query=services.query_get(study=study, query_id=query.pk), scope=scope)
        return Response(QueryOutputSerializer(view).data, status=status.HTTP_201_CREATED)


class QueryDetailApi(ApiView):
    @extend_schema(tags=TAGS, responses={200: QueryOutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, study_id: int, query_id: int) -> Response:
        """One query: who decided, who answered, and the result."""
        scope = request_scope(request)
        _, query = services.scoped_query_get(scope=scope, study_id=study_id, query_id=query_id)
        return Response(QueryOutputSerializer(services.query_view(query=query, scope=scope)).data)


class QueryDecideApi(ApiView):
    """A data owner approves or declines a query for their own institution."""

    permission_classes = (IsDataOwner,)

    InputSerializer = DecisionInputSerializer

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={200: QueryOutputSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, study_id: int, query_id: int) -> Response:
        """Approve or decline the query for the caller's own institution (data owners only)."""
        scope = request_scope(request)
        study, query = services.scoped_query_get(scope=scope, study_id=study_id, query_id=query_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        institution = own_institution_get(
            scope=scope, institution_id=serializer.validated_data["institution"]
        )
        services.query_decide(
            query=query,
            institution=institution,
            actor=request_actor(request),
            approve=serializer.validated_data["decision"] == DecisionChoice.APPROVE,
        )
        query = services.query_get(study=study, query_id=query_id)
        return Response(QueryOutputSerializer(services.query_view(query=query, scope=scope)).data)
