"""The API schema and its two viewers, open to anyone or to signed-in people only.

``FEDHEALTH_PUBLIC_API_SCHEMA`` decides, when the request comes (not at import, as
drf-spectacular's ``SERVE_PERMISSIONS`` would): true lets anyone read them, false asks for an
API token or a console session (no credential: 401).
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView


class SchemaAccess(BasePermission):
    """Anyone while the schema is public, signed-in people otherwise."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if settings.FEDHEALTH_PUBLIC_API_SCHEMA:
            return AllowAny().has_permission(request, view)
        return IsAuthenticated().has_permission(request, view)


class SchemaView(SpectacularAPIView):
    permission_classes = [SchemaAccess]


class SwaggerView(SpectacularSwaggerView):
    permission_classes = [SchemaAccess]


class RedocView(SpectacularRedocView):
    permission_classes = [SchemaAccess]
