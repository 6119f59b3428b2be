"""One error vocabulary for the control plane, and its JSON shape in the API.

Services raise :class:`ServiceError` subclasses; the API turns every error (these, DRF's
and Django's) into ``{"error": {"code", "message", "fields"?}}`` with a 4xx status.
"""

from __future__ import annotations

from typing import ClassVar

from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, HttpRequest, JsonResponse, UnreadablePostError
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ServiceError(Exception):
    """A request the platform refuses, with a stable machine code and a clear message."""

    status_code: ClassVar[int] = status.HTTP_400_BAD_REQUEST
    default_code: ClassVar[str] = "invalid"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class InvalidInput(ServiceError):
    default_code = "invalid"


class NotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"


class Forbidden(ServiceError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "forbidden"


class Conflict(ServiceError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class TooLarge(ServiceError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


class Unauthenticated(ServiceError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "not_authenticated"


class TooManyRequests(ServiceError):
    """Refused for now: the client may try again after ``retry_after`` seconds."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten(detail: object) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in detail.items()}
    return {"non_field_errors": [str(m) for m in (detail if isinstance(detail, list) else [detail])]}


def _service_error_response(error: ServiceError) -> Response:
    response = Response(error_body(error.code, error.message), status=error.status_code)
    if isinstance(error, Unauthenticated):
        response["WWW-Authenticate"] = "Agent"
    if isinstance(error, TooManyRequests):
        response["Retry-After"] = str(error.retry_after)
    return response


def _suspicious_request_error(error: SuspiciousOperation) -> ServiceError:
    """Django's refusals of a request body (raised while DRF parses it) as service errors."""
    if isinstance(error, RequestDataTooBig):
        return TooLarge("the request body is larger than this API accepts")
    if isinstance(error, TooManyFieldsSent | TooManyFilesSent):
        return TooLarge("the request has too many fields or files", code="too_many_fields")
    return InvalidInput("the request is malformed", code="bad_request")


def api_exception_handler(error: Exception, context: dict[str, object]) -> Response | None:
    if isinstance(error, SuspiciousOperation):
        error = _suspicious_request_error(error)
    if isinstance(error, UnreadablePostError):  # the client stopped sending its body
        error = InvalidInput("the request body ended before its Content-Length", code="incomplete_body")
    if isinstance(error, ServiceError):
        return _service_error_response(error)
    if isinstance(error, Http404):
        error = exceptions.NotFound()
    elif isinstance(error, PermissionDenied):
        error = exceptions.PermissionDenied()
    response: Response | None = exception_handler(error, context)
    if response is None or not isinstance(error, exceptions.APIException):
        return response
    if isinstance(error, exceptions.ValidationError):
        response.data = error_body("invalid", "The request has invalid fields.", _flatten(error.detail))
    else:
        detail = error.detail
        message = str(detail.get("detail", detail)) if isinstance(detail, dict) else str(detail)
        response.data = error_body(str(error.default_code), message)
    return response


@csrf_exempt  # it changes nothing; without this a POST would get Django's HTML CSRF page
def api_not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Any path under ``/api/`` that no route matches (``/api/v1/jobs/abc/``): a JSON 404.

    Without it Django would answer with an HTML page (a debug page while ``DEBUG`` is on),
    which breaks the API's promise that every error is JSON.
    """
    body = error_body("not_found", f"no API endpoint at {request.path!r}")
    return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
