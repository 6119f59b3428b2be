"""Rendering a console page: the layout's shared context (who is signed in, the navigation)."""

from __future__ import annotations

from collections.abc import Mapping

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.models import Role
from accounts.selectors import Scope, profile_get
from console.access import scope_of


def role_label(request: HttpRequest, scope: Scope) -> str:
    """E.g. "Coordinator", or "Data owner · Hospital A"."""
    if scope.is_data_owner:
        profile = profile_get(user=request.user)
        institution = profile.institution if profile is not None else None
        return f"Data owner · {institution.name}" if institution is not None else "Data owner"
    if getattr(request.user, "is_superuser", False):
        return "Coordinator (superuser)"
    labels = {Role.COORDINATOR: "Coordinator", Role.OBSERVER: "Observer (read only)"}
    return labels.get(scope.role, str(scope.role))


def page(
    request: HttpRequest,
    template: str,
    context: Mapping[str, object],
    *,
    section: str,
    status: int = 200,
) -> HttpResponse:
    """``template`` with the user's scope (for what to show) and the navigation's active section."""
    shared = {"scope": scope_of(request), "section": section}
    return render(request, template, {**shared, **context}, status=status)
