"""Institutions: register, enrollment tokens (shown once), agents and their credentials.

The clear enrollment token exists only in the service's return value. To show it once
after a redirect (so that reloading never issues another), it travels to the browser in a
signed, HttpOnly cookie limited to the token's own page and a few minutes; that page reads
and deletes it. The database, the session and the logs never hold it.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from console.access import actor_of, console_view, require_coordinator, scope_of
from console.forms import EnrollmentTokenForm, InstitutionForm, add_service_error
from console.pages import page
from fedplatform.errors import ServiceError
from institutions.models import EnrollmentToken, Institution
from institutions.selectors import (
    credential_get,
    credential_list,
    enrollment_token_get,
    enrollment_token_list,
    institution_get,
    institution_list,
)
from institutions.services import (
    credential_revoke,
    enrollment_token_create,
    enrollment_token_withdraw,
    institution_create,
)
from institutions.site_kit import site_kit_zip
from studies.selectors import study_list
from training.selectors import privacy_ledger

ONCE_COOKIE = "fedhealth_enrollment_token"
ONCE_COOKIE_SALT = "console.enrollment-token"
ONCE_COOKIE_SECONDS = 300


@console_view
@require_http_methods(["GET", "POST"])
def institution_list_view(request: HttpRequest) -> HttpResponse:
    scope = scope_of(request)
    form = InstitutionForm()
    if request.method == "POST":
        require_coordinator(scope)
        form = InstitutionForm(request.POST)
        if form.is_valid():
            try:
                institution = institution_create(name=form.cleaned_data["name"], actor=actor_of(request))
            except ServiceError as error:
                add_service_error(form, error, default="name")
            else:
                messages.success(
                    request, f"{institution.name} is registered. Give its agent an enrollment token."
                )
                return redirect("console:institution-detail", institution_id=institution.pk)
    context = {"institutions": institution_list(scope=scope), "form": form}
    return page(request, "console/institutions/list.html", context, section="institutions")


@console_view
@require_safe
def institution_detail(request: HttpRequest, institution_id: int) -> HttpResponse:
    scope = scope_of(request)
    institution = institution_get(scope=scope, institution_id=institution_id)
    studies = study_list(scope=scope).filter(participants__institution=institution)
    context = {
        "institution": institution,
        "credentials": credential_list(institution=institution),
        "studies": studies,
        "ledger": privacy_ledger(institution=institution),
        "token_form": EnrollmentTokenForm(),
        "tokens": enrollment_token_list(institution=institution) if scope.is_coordinator else [],
    }
    return page(request, "console/institutions/detail.html", context, section="institutions")


@console_view
@require_POST
def token_create(request: HttpRequest, institution_id: int) -> HttpResponseBase:
    scope = scope_of(request)
    require_coordinator(scope)
    institution = institution_get(scope=scope, institution_id=institution_id)
    form = EnrollmentTokenForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, f"No token was created: {' '.join(str(m) for m in form.errors.get('hours', []))}"
        )
        return redirect("console:institution-detail", institution_id=institution.pk)
    issued = enrollment_token_create(
        institution=institution, actor=actor_of(request), hours=form.cleaned_data["hours"]
    )
    url = reverse("console:token-show", args=[institution.pk, issued.record.pk])
    response = redirect(url)
    response.set_signed_cookie(
        ONCE_COOKIE,
        f"{issued.record.pk}:{issued.token}",
        salt=ONCE_COOKIE_SALT,
        max_age=ONCE_COOKIE_SECONDS,
        path=url,
        secure=request.is_secure(),
        httponly=True,
        samesite="Strict",
    )
    return response


def _token_from_cookie(request: HttpRequest, token_id: int) -> str | None:
    value = request.get_signed_cookie(
        ONCE_COOKIE, default=None, salt=ONCE_COOKIE_SALT, max_age=ONCE_COOKIE_SECONDS
    )
    identifier, _, token = (value or "").partition(":")
    return token if token and identifier == str(token_id) else None


def _coordinators_token(
    request: HttpRequest, institution_id: int, token_id: int
) -> tuple[Institution, EnrollmentToken]:
    """The institution and its token, for a coordinator (others: 403; another's token: 404)."""
    scope = scope_of(request)
    require_coordinator(scope)
    institution = institution_get(scope=scope, institution_id=institution_id)
    return institution, enrollment_token_get(institution=institution, token_id=token_id)


@console_view
@require_safe
def token_show(request: HttpRequest, institution_id: int, token_id: int) -> HttpResponse:
    institution, record = _coordinators_token(request, institution_id, token_id)
    context = {"institution": institution, "record": record, "token": _token_from_cookie(request, record.pk)}
    response = page(request, "console/institutions/token.html", context, section="institutions")
    response.delete_cookie(ONCE_COOKIE, path=request.path, samesite="Strict")
    response["Cache-Control"] = "no-store"
    return response


@console_view
@require_http_methods(["GET", "POST"])
def credential_revoke_view(request: HttpRequest, credential_id: int) -> HttpResponseBase:
    scope = scope_of(request)
    require_coordinator(scope)
    credential = credential_get(scope=scope, credential_id=credential_id)
    if request.method == "POST":
        credential_revoke(credential_id=credential.pk, actor=actor_of(request))
        messages.success(request, f"Credential {credential.pk} is revoked: its agent is refused from now on.")
        return redirect("console:institution-detail", institution_id=credential.institution_id)
    context = {"credential": credential, "institution": credential.institution}
    return page(request, "console/institutions/revoke.html", context, section="institutions")


@console_view
@require_POST
def token_withdraw(request: HttpRequest, institution_id: int, token_id: int) -> HttpResponseBase:
    institution, record = _coordinators_token(request, institution_id, token_id)  # another's: 404
    try:
        enrollment_token_withdraw(institution=institution, token_id=record.pk, actor=actor_of(request))
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Enrollment token #{token_id} is withdrawn: no agent can enroll with it.")
    return redirect(f"{reverse('console:institution-detail', args=[institution.pk])}#tokens")


@console_view
@require_safe
def token_site_kit(request: HttpRequest, institution_id: int, token_id: int) -> HttpResponse:
    """The token's site kit (no secret in it: the token travels separately)."""
    institution, record = _coordinators_token(request, institution_id, token_id)
    server_url = request.build_absolute_uri("/").rstrip("/")
    response = HttpResponse(site_kit_zip(record, server_url), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="site-kit-{institution.pk}-{record.pk}.zip"'
    return response
