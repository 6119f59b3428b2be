"""``GET me/``: who the caller is, as the API sees them; invitations and their acceptance."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.invitations import INVITED_ROLES, invitation_accept, invitation_create
from accounts.models import Role
from accounts.selectors import profile_get
from fedplatform.api_base import ApiView, error_responses, request_actor, request_scope
from fedplatform.client_address import ClientAddressThrottle
from fedplatform.parsers import BoundedJSONParser
from fedplatform.serializers import MAX_ID, InstitutionRefSerializer
from institutions.selectors import institution_get

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


class InvitationCreateApi(ApiView):
    """Invite a data owner or an observer (coordinators): the link is in this answer only."""

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=[role.value for role in INVITED_ROLES])
        institution = serializers.IntegerField(
            min_value=1, max_value=MAX_ID, required=False, allow_null=True, help_text="a data owner's"
        )

        class Meta:
            ref_name = "InvitationCreate"

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()
        role = serializers.CharField()
        expires_at = serializers.DateTimeField()
        secret = serializers.CharField(help_text="for POST invitations/accept/; shown only here")
        link = serializers.CharField(help_text="the console page on which the person sets a password")

        class Meta:
            ref_name = "Invitation"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        institution_id = data.get("institution")
        scope = request_scope(request)
        institution = (
            None if institution_id is None else institution_get(scope=scope, institution_id=institution_id)
        )
        issued = invitation_create(
            username=data["username"],
            role=Role(data["role"]),
            institution=institution,
            actor=request_actor(request),
        )
        record = issued.record
        link = request.build_absolute_uri(reverse("console:invitation-accept", args=[issued.secret]))
        body = {
            "id": record.pk,
            "username": record.username,
            "role": record.role,
            "expires_at": record.expires_at,
            "secret": issued.secret,
            "link": link,
        }
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class InvitationAcceptApi(APIView):
    """Accept an invitation: no account yet, so no authentication; the secret is the credential."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    parser_classes = [BoundedJSONParser]
    throttle_classes = [ClientAddressThrottle]
    throttle_scope = "invitation"

    class InputSerializer(serializers.Serializer):
        secret = serializers.CharField(max_length=200)
        password = serializers.CharField(max_length=200, trim_whitespace=False)

        class Meta:
            ref_name = "InvitationAccept"

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        role = serializers.CharField()
        token = serializers.CharField(help_text="the new account's API token, shown only here")

        class Meta:
            ref_name = "InvitationAccepted"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(400, 404, 429)},
    )
    def post(self, request: Request) -> Response:
        """Set the invited account's password; answers its API token. An invalid, used,
        withdrawn or expired link is 404; a password Django's validators refuse is 400."""
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = invitation_accept(with_token=True, **serializer.validated_data)
        body = {"username": created.user.get_username(), "role": created.profile.role, "token": created.token}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)
