"""A strict Content-Security-Policy on the console's pages, and a page of its own for an
address visited with the wrong method.

Every script, style, image and font of the console is served by the project itself: the
policy allows nothing else, no inline script and no inline style. Data reaches scripts
through ``json_script`` blocks, which are not executed. The API, the admin and the API docs
are left alone (the Swagger page needs its own inline bootstrap script).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

CONSOLE_NAMESPACE = "console"


def is_console_request(request: HttpRequest) -> bool:
    match = getattr(request, "resolver_match", None)
    return match is not None and CONSOLE_NAMESPACE in match.namespaces


class ContentSecurityPolicyMiddleware:
    """Adds :data:`CONTENT_SECURITY_POLICY` to every response of a console view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if is_console_request(request) and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


class MethodNotAllowedPageMiddleware:
    """A console address that takes only a form's POST (start a job, create one), visited by
    a browser, answers 405 with a console page linking to its section's list, instead of the
    browser's bare error. Not to the object's own page: that page may be outside the
    visitor's scope, and the link must not point at what they cannot see."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if response.status_code != 405 or not is_console_request(request) or request.method != "GET":
            return response
        page = render(request, "405.html", {"back": _section_path(request.path)}, status=405)
        page["Allow"] = response["Allow"]
        return page


def _section_path(path: str) -> str:
    """``/jobs/3/start/`` -> ``/jobs/``: the list of the section ``path`` belongs to."""
    section = path.strip("/").split("/", 1)[0]
    return f"/{section}/" if section else "/"
