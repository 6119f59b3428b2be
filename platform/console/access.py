"""Who may do what in the console: sign-in, roles, and the services' errors as HTTP answers.

Every console view is wrapped by :func:`console_view` (or :func:`console_json_view`): an
anonymous visitor is sent to the sign-in page, an object outside the user's scope is a 404
(never a hint that it exists), and an action the role may not take is a 403, checked before
any input is read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse

from accounts.selectors import Scope, user_scope
from fedplatform.errors import Forbidden, NotFound, ServiceError, error_body

P = ParamSpec("P")
View = Callable[Concatenate[HttpRequest, P], HttpResponseBase]


def scope_of(request: HttpRequest) -> Scope:
    return user_scope(user=request.user)


def actor_of(request: HttpRequest) -> str:
    """The actor string the services record in the audit trail."""
    return f"user:{request.user.get_username()}"


def _translate_errors(
    view: View[P], request: HttpRequest, *args: P.args, **kwargs: P.kwargs
) -> HttpResponseBase:
    try:
        return view(request, *args, **kwargs)
    except NotFound as error:
        raise Http404(error.message) from error
    except Forbidden as error:
        raise PermissionDenied(error.message) from error


def console_view(view: View[P]) -> View[P]:
    """A page: signed-in users only (others go to the sign-in page)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return _translate_errors(view, request, *args, **kwargs)

    return wrapper


def console_json_view(view: View[P]) -> View[P]:
    """A JSON endpoint polled by a page: errors in the API's JSON shape (401 when signed out)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        if not request.user.is_authenticated:
            body = error_body("not_authenticated", "Your session has ended; sign in again.")
            return JsonResponse(body, status=401)
        try:
            return view(request, *args, **kwargs)
        except ServiceError as error:
            return JsonResponse(error_body(error.code, error.message), status=error.status_code)

    return wrapper


def require_coordinator(scope: Scope) -> None:
    if not scope.is_coordinator:
        raise PermissionDenied("Only a coordinator may do this.")


def require_data_owner(scope: Scope) -> int:
    """The data owner's institution id; anyone else may not act for an institution."""
    if not scope.is_data_owner or scope.institution_id is None:
        raise PermissionDenied("Only an institution's data owner may do this.")
    return scope.institution_id
