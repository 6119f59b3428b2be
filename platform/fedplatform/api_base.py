"""What every coordinator API view shares: authentication, the error schema, paging, actors.

Each operation is still its own thin ``APIView`` subclass (HackSoft style); this module only
holds the plumbing they would otherwise repeat.
"""

from __future__ import annotations

from typing import TypeVar

from django.db.models import Model, QuerySet
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.authentication import ExpiringTokenAuthentication
from accounts.permissions import ReadOnlyOrCoordinator
from accounts.selectors import Scope, user_scope
from fedplatform.parsers import API_PARSERS
from fedplatform.serializers import ErrorResponseSerializer

_M = TypeVar("_M", bound=Model)

ERROR_DESCRIPTIONS = {
    400: "Bad input: the message says what, `fields` says where.",
    401: "No credential, or a bad one.",
    403: "This account's role may not do this.",
    404: "No such object, or it lies outside this account's institution.",
    409: "Conflicts with the object's current state.",
    413: "The body is larger than this route takes.",
    429: "Too many attempts from this address: ask again after `Retry-After` seconds.",
}


def error_responses(*status_codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for the given error statuses, for ``@extend_schema(responses=...)``.

    The body is the one error shape of the API, ``{"error": {"code", "message", "fields"?}}``.
    """
    return {
        code: OpenApiResponse(response=ErrorResponseSerializer, description=ERROR_DESCRIPTIONS[code])
        for code in status_codes
    }


def json_error_responses(*status_codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    """Like :func:`error_responses`, pinned to JSON (for views that also render other types)."""
    return {(code, "application/json"): response for code, response in error_responses(*status_codes).items()}


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """``?limit=&offset=`` paging whose page size is capped (a huge ``limit`` is clamped)."""

    default_limit = api_settings.PAGE_SIZE
    max_limit = 1000


class ApiView(APIView):
    """Base of the coordinator API views.

    Token authentication comes first so that a request without credentials gets 401 with
    ``WWW-Authenticate: Token`` (with session authentication first, DRF answers 403).
    Reading is open to every signed-in role; writing needs a coordinator unless a view
    says otherwise.
    """

    authentication_classes: tuple[type[BaseAuthentication], ...] = (
        ExpiringTokenAuthentication,
        SessionAuthentication,
    )
    permission_classes: tuple[type[BasePermission], ...] = (ReadOnlyOrCoordinator,)
    parser_classes = API_PARSERS
    pagination_class = BoundedLimitOffsetPagination

    def paginated_response(
        self,
        *,
        queryset: QuerySet[_M],
        serializer_class: type[serializers.Serializer],
        context: dict[str, object] | None = None,
    ) -> Response:
        """One page of ``queryset`` (``?limit=&offset=``) in the paginator's envelope."""
        paginator = self.pagination_class()
        page: list[_M] | None = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True, context=context or {}).data)


def request_scope(request: Request) -> Scope:
    return user_scope(user=request.user)


def request_actor(request: Request) -> str:
    """The actor string services record in the audit trail."""
    return f"user:{request.user.get_username()}"
