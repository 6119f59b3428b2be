"""``GET me/``: who the caller is, as the API sees them."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from accounts.selectors import profile_get
from fedplatform.api_base import ApiView, error_responses, request_scope
from fedplatform.serializers import InstitutionRefSerializer

TAGS = ["accounts"]


class MeApi(ApiView):
    permission_classes = (IsAuthenticated,)

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        role = serializers.ChoiceField(choices=Role.choices)
        institution = InstitutionRefSerializer(allow_null=True, help_text="the data owner's institution")

        class Meta:
            ref_name = "Me"

    @extend_schema(tags=TAGS, responses={200: OutputSerializer, **error_responses(401)})
    def get(self, request: Request) -> Response:
        """Who the caller is: username, role and (for a data owner) institution."""
        scope = request_scope(request)
        profile = profile_get(user=request.user)
        institution = profile.institution if profile is not None and scope.is_data_owner else None
        body = {"username": request.user.get_username(), "role": scope.role.value, "institution": institution}
        return Response(self.OutputSerializer(body).data)
