"""Coordinator API: institutions, their enrollment tokens and their agents' credentials."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from fedplatform.api_base import ApiView, error_responses, request_actor, request_scope
from fedplatform.errors import NotFound
from institutions import selectors, services
from institutions.models import AgentCredential

TAGS = ["institutions"]


class InstitutionOutputSerializer(serializers.Serializer):
    """An institution (the same representation for list, detail and create)."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    active_credentials = serializers.IntegerField(help_text="credentials not revoked")
    agent_last_seen_at = serializers.DateTimeField(allow_null=True, help_text="latest heartbeat of any agent")
    agent_online = serializers.SerializerMethodField(help_text="an agent was seen in the last 60 seconds")

    class Meta:
        ref_name = "Institution"

    def get_agent_online(self, institution: object) -> bool:
        return selectors.is_online(getattr(institution, "agent_last_seen_at", None))


class CredentialOutputSerializer(serializers.Serializer):
    """An agent credential's public facts; never its secret or hash."""

    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id")
    created_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    agent_version = serializers.CharField()
    hostname = serializers.CharField()
    online = serializers.SerializerMethodField(help_text="not revoked and seen in the last 60 seconds")

    class Meta:
        ref_name = "AgentCredential"

    def get_online(self, credential: AgentCredential) -> bool:
        return credential.revoked_at is None and selectors.is_online(credential.last_seen_at)


class InstitutionListApi(ApiView):
    @extend_schema(tags=TAGS, responses={200: InstitutionOutputSerializer(many=True), **error_responses(401)})
    def get(self, request: Request) -> Response:
        """The institutions this account may see (a data owner: only their own)."""
        queryset = selectors.institution_list(scope=request_scope(request))
        return self.paginated_response(queryset=queryset, serializer_class=InstitutionOutputSerializer)


class InstitutionCreateApi(ApiView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)

        class Meta:
            ref_name = "InstitutionCreate"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: InstitutionOutputSerializer, **error_responses(400, 401, 403, 409)},
    )
    def post(self, request: Request) -> Response:
        """Register an institution (coordinators)."""
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = services.institution_create(
            name=serializer.validated_data["name"], actor=request_actor(request)
        )
        institution = selectors.institution_get(scope=request_scope(request), institution_id=created.pk)
        return Response(InstitutionOutputSerializer(institution).data, status=status.HTTP_201_CREATED)


class InstitutionListCreateApi(InstitutionListApi, InstitutionCreateApi):
    """``institutions/`` answers GET (list) and POST (create): two operations, one route."""


class InstitutionDetailApi(ApiView):
    @extend_schema(tags=TAGS, responses={200: InstitutionOutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, institution_id: int) -> Response:
        """One institution, with its agents' status."""
        institution = selectors.institution_get(scope=request_scope(request), institution_id=institution_id)
        return Response(InstitutionOutputSerializer(institution).data)


class EnrollmentTokenCreateApi(ApiView):
    class InputSerializer(serializers.Serializer):
        hours = serializers.IntegerField(
            min_value=1,
            max_value=services.MAX_TOKEN_HOURS,
            required=False,
            help_text="lifetime of the token; the platform default when left out",
        )

        class Meta:
            ref_name = "EnrollmentTokenCreate"

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField(help_text="shown only in this answer; the server keeps a hash")
        expires_at = serializers.DateTimeField()

        class Meta:
            ref_name = "EnrollmentToken"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, institution_id: int) -> Response:
        """Issue a one-time enrollment token for the institution's agent (coordinators).

        The token appears only in this answer; the server keeps its hash."""
        institution = selectors.institution_get(scope=request_scope(request), institution_id=institution_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = services.enrollment_token_create(
            institution=institution,
            actor=request_actor(request),
            hours=serializer.validated_data.get("hours"),
        )
        body = {"token": issued.token, "expires_at": issued.record.expires_at}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class CredentialListApi(ApiView):
    @extend_schema(
        tags=TAGS, responses={200: CredentialOutputSerializer(many=True), **error_responses(401, 404)}
    )
    def get(self, request: Request, institution_id: int) -> Response:
        """The agent credentials of an institution, newest first (never their secrets)."""
        institution = selectors.institution_get(scope=request_scope(request), institution_id=institution_id)
        queryset = selectors.credential_list(institution=institution)
        return self.paginated_response(queryset=queryset, serializer_class=CredentialOutputSerializer)


class CredentialRevokeApi(ApiView):
    @extend_schema(
        tags=TAGS, request=None, responses={200: CredentialOutputSerializer, **error_responses(401, 403, 404)}
    )
    def post(self, request: Request, credential_id: int) -> Response:
        """Revoke an agent credential at once (coordinators); revoking twice changes nothing."""
        credential = selectors.credential_get(scope=request_scope(request), credential_id=credential_id)
        revoked = services.credential_revoke(credential_id=credential.pk, actor=request_actor(request))
        return Response(CredentialOutputSerializer(revoked).data)


class EnrollmentTokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()
    expires_at = serializers.DateTimeField()
    used_at = serializers.DateTimeField(allow_null=True)
    withdrawn_at = serializers.DateTimeField(allow_null=True)
    state = serializers.ChoiceField(choices=["unused", "used", "withdrawn", "expired"])

    class Meta:
        ref_name = "EnrollmentTokenRecord"


class EnrollmentTokenListCreateApi(EnrollmentTokenCreateApi):
    """``enrollment-tokens/`` answers GET (the tokens, never their secrets) and POST (a new one)."""

    @extend_schema(
        tags=TAGS, responses={200: EnrollmentTokenOutputSerializer(many=True), **error_responses(401, 404)}
    )
    def get(self, request: Request, institution_id: int) -> Response:
        """The institution's enrollment tokens, newest first: dates and state, never a token."""
        institution = selectors.institution_get(scope=request_scope(request), institution_id=institution_id)
        return self.paginated_response(
            queryset=selectors.enrollment_token_list(institution=institution),
            serializer_class=EnrollmentTokenOutputSerializer,
        )


class EnrollmentTokenWithdrawApi(ApiView):
    @extend_schema(
        tags=TAGS,
        request=None,
        responses={200: EnrollmentTokenOutputSerializer, **error_responses(401, 403, 404, 409)},
    )
    def post(self, request: Request, institution_id: int, token_id: int) -> Response:
        """Withdraw an unused token (coordinators): no agent can enroll with it any more.
        A used token is 409 ``token_used``: revoke the agent's credential instead."""
        scope = request_scope(request)
        try:
            institution = selectors.institution_get(scope=scope, institution_id=institution_id)
        except NotFound:  # one answer for a missing institution and a missing token
            raise NotFound("no such enrollment token") from None
        record = services.enrollment_token_withdraw(
            institution=institution, token_id=token_id, actor=request_actor(request)
        )
        return Response(EnrollmentTokenOutputSerializer(record).data)
