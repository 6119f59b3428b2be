"""DRF permission classes built on the roles of :mod:`accounts.selectors`."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.selectors import user_scope


def _authenticated(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


class IsCoordinator(BasePermission):
    """Only coordinators (and superusers) may use the operation."""

    message = "Only a coordinator may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return _authenticated(request) and user_scope(user=request.user).is_coordinator


class ReadOnlyOrCoordinator(BasePermission):
    """Every signed-in role may read; only coordinators may write."""

    message = "This account may only read; only a coordinator may change this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not _authenticated(request):
            return False
        return request.method in SAFE_METHODS or user_scope(user=request.user).is_coordinator


class IsDataOwner(BasePermission):
    """Only an institution's data owner may use the operation (coordinators may not)."""

    message = "Only an institution's data owner may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return _authenticated(request) and user_scope(user=request.user).is_data_owner
