"""What a locked-out sign-in sees: the sign-in page again, saying why, with status 429.

django-axes calls :func:`lockout_response` (``AXES_LOCKOUT_CALLABLE``) when it refuses a
sign-in on the console's page (``/login/``) or the admin's (``/admin/login/``); each gets
its own page back, with the message above an empty form.
"""

from __future__ import annotations

from datetime import timedelta

from axes.helpers import get_cool_off
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme

LOCKED_OUT_STATUS = 429


def duration_text(delta: timedelta | None) -> str:
    """E.g. "15 minutes", "1 minute", "30 seconds"."""
    seconds = int(delta.total_seconds()) if delta is not None else 0
    amount, unit = (seconds // 60, "minute") if seconds >= 60 else (seconds, "second")
    return f"{amount} {unit}{'' if amount == 1 else 's'}"


def lockout_message(request: HttpRequest) -> str:
    return (
        "Too many failed sign-ins for this user name or from this address: signing in is "
        f"paused for {duration_text(get_cool_off(request))} after the last failed attempt. "
        "Try again later, or ask an administrator to lift the lock."
    )


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME, "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if allowed else ""


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: object = None
) -> HttpResponse:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.namespace == admin.site.name:
        return _admin_page(request)
    context = {
        "form": AuthenticationForm(request),
        "next": _safe_next(request),
        "lockout_message": lockout_message(request),
    }
    return render(request, "console/login.html", context, status=LOCKED_OUT_STATUS)


def _admin_page(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "subtitle": None,
        "app_path": request.get_full_path(),
        "form": AdminAuthenticationForm(request),
        "next": _safe_next(request),
        "lockout_message": lockout_message(request),
    }
    return render(request, "console/admin_locked_out.html", context, status=LOCKED_OUT_STATUS)
