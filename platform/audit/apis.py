"""Coordinator API: the audit trail, read only."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit import selectors
from fedplatform.api_base import ApiView, error_responses, request_scope
from fedplatform.serializers import MAX_ID

TAGS = ["audit"]


class AuditEventListApi(ApiView):
    class FilterSerializer(serializers.Serializer):
        institution = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
        job = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
        actor = serializers.CharField(
            required=False, help_text="exact, e.g. `user:alice`, `agent:3`, `system`"
        )
        kind = serializers.CharField(required=False, help_text="exact, e.g. `job.started`")

        class Meta:
            ref_name = "AuditEventFilter"

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        at = serializers.DateTimeField()
        actor = serializers.CharField()
        kind = serializers.CharField()
        institution = serializers.IntegerField(source="institution_id", allow_null=True)
        job = serializers.IntegerField(source="job_id", allow_null=True)
        details = serializers.DictField()

        class Meta:
            ref_name = "AuditEvent"

    @extend_schema(
        tags=TAGS,
        parameters=[FilterSerializer],
        responses={200: OutputSerializer(many=True), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        """The audit trail, newest first (a data owner: their institution's events only)."""
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.audit_event_list(
            scope=request_scope(request),
            institution_id=filters.validated_data.get("institution"),
            job_id=filters.validated_data.get("job"),
            actor=filters.validated_data.get("actor"),
            kind=filters.validated_data.get("kind"),
        )
        return self.paginated_response(queryset=queryset, serializer_class=self.OutputSerializer)
