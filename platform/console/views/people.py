"""People: invitations with one-time links, deactivation, and each person's own password.

The invitation link appears only in the answer to the coordinator's POST (like an
enrollment token, the platform keeps its hash); the invited person opens it without an
account, sets a password and is sent to sign in.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from accounts.invitations import (
    invitation_accept,
    invitation_create,
    invitation_open,
    invitation_withdraw,
    may_set_active,
    user_set_active,
)
from accounts.models import Invitation, Role
from audit.services import audit_record
from console.access import actor_of, console_view, require_coordinator, scope_of
from console.forms import AcceptInvitationForm, InvitationForm, add_service_error
from console.pages import page
from fedplatform.errors import ServiceError


def _people_page(request: HttpRequest, form: InvitationForm, link: str | None = None) -> HttpResponse:
    users = list(get_user_model().objects.select_related("profile__institution").order_by("username"))
    context = {
        "people": users,
        "switchable": {u.pk for u in users if may_set_active(user=u, actor_user=request.user)},  # type: ignore[arg-type]
        "invitations": [i for i in Invitation.objects.select_related("institution") if i.state == "pending"],
        "form": form,
        "link": link,
    }
    response = page(request, "console/people/list.html", context, section="people")
    response["Cache-Control"] = "no-store"  # the one-time link must not stay in a cache
    return response


@console_view
@require_http_methods(["GET", "POST"])
def people_view(request: HttpRequest) -> HttpResponseBase:
    """The accounts and pending invitations; POST ``action``: invite, withdraw, deactivate, reactivate."""
    scope = scope_of(request)
    require_coordinator(scope)
    form = InvitationForm(scope=scope)
    if request.method == "GET":
        return _people_page(request, form)
    action = request.POST.get("action", "")
    if action == "invite":
        return _invite(request, InvitationForm(request.POST, scope=scope))
    try:
        target = int(request.POST.get("id", ""))
    except ValueError:
        messages.error(request, "Choose whom this is about.")
        return redirect("console:people")
    try:
        _act(request, action, target)
    except ServiceError as error:
        messages.error(request, error.message)
    return redirect("console:people")


def _act(request: HttpRequest, action: str, target: int) -> None:
    actor = actor_of(request)
    if action == "withdraw":
        record = invitation_withdraw(invitation_id=target, actor=actor)
        messages.success(
            request, f"The invitation of {record.username} is withdrawn: its link no longer works."
        )
    elif action in ("deactivate", "reactivate"):
        active = action == "reactivate"
        user = user_set_active(user_id=target, active=active, actor_user=request.user, actor=actor)  # type: ignore[arg-type]
        verb = "can sign in again" if active else "can no longer sign in; their sessions and tokens stop"
        messages.success(request, f"{user.get_username()} {verb}.")
    else:
        messages.error(request, "Unknown action.")


def _invite(request: HttpRequest, form: InvitationForm) -> HttpResponseBase:
    if form.is_valid():
        data = form.cleaned_data
        try:
            issued = invitation_create(
                username=data["username"],
                role=Role(data["role"]),
                institution=data["institution"],
                actor=actor_of(request),
            )
        except ServiceError as error:
            add_service_error(form, error, default="username")
        else:
            link = request.build_absolute_uri(reverse("console:invitation-accept", args=[issued.secret]))
            messages.success(
                request, f"{issued.record.username} is invited. Pass the link on: it is shown once."
            )
            return _people_page(request, InvitationForm(scope=scope_of(request)), link)
    return _people_page(request, form)


@require_http_methods(["GET", "POST"])
def invitation_accept_view(request: HttpRequest, secret: str) -> HttpResponse:
    """The invited person's page: no account yet, so no sign-in; the link is the credential."""
    invitation = invitation_open(secret=secret)
    form = AcceptInvitationForm(request.POST or None)
    if invitation is not None and request.method == "POST" and form.is_valid():
        try:
            invitation_accept(secret=secret, password=form.cleaned_data["password"])
        except ServiceError as error:
            form.add_error("password", error.message)
        else:
            messages.success(request, f"Your account {invitation.username} is ready: sign in.")
            return redirect("console:login")
    context = {"invitation": invitation, "form": form}
    response = page(request, "console/people/accept.html", context, section="")
    response["Cache-Control"] = "no-store"
    # The link must not travel to another site in a Referer ("no-referrer" would also make the
    # browser send "Origin: null" with the form, which the CSRF check rightly refuses).
    response["Referrer-Policy"] = "same-origin"
    return response


@console_view
@require_http_methods(["GET", "POST"])
def password_change_view(request: HttpRequest) -> HttpResponseBase:
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        update_session_auth_hash(request, user)  # this session stays signed in; others end
        audit_record(actor=actor_of(request), kind="user.password_changed", details={})
        messages.success(request, "Your password is changed.")
        return redirect("console:overview")
    return page(request, "console/people/password.html", {"form": form}, section="")
