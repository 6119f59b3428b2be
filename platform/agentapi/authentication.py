"""``Authorization: Agent <key>``: how a silo agent proves which institution it speaks for."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from fedplatform.errors import Unauthenticated
from institutions.models import AgentCredential
from institutions.services import credential_authenticate

KEYWORD = b"agent"


class AgentPrincipal:
    """Stands in for ``request.user`` on agent requests."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, credential: AgentCredential) -> None:
        self.credential = credential

    @property
    def actor(self) -> str:
        return f"agent:{self.credential.pk}"


class AgentAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[AgentPrincipal, AgentCredential] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != KEYWORD:
            return None
        if len(parts) != 2:
            raise Unauthenticated(
                "the Agent authorization header needs exactly one key", code="invalid_credential"
            )
        credential = credential_authenticate(key=parts[1].decode("ascii", errors="replace"))
        return AgentPrincipal(credential), credential

    def authenticate_header(self, request: Request) -> str:
        return "Agent"


class IsAgent(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, AgentPrincipal)


def credential_of(request: Request) -> AgentCredential:
    principal = request.user
    assert isinstance(principal, AgentPrincipal)
    return principal.credential


class AgentAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the Agent scheme in the OpenAPI schema."""

    target_class = "agentapi.authentication.AgentAuthentication"
    name = "agentKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Agent <key>`, the credential returned once by enroll",
        }
