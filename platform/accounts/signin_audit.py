"""Sign-ins, failed sign-ins and lockouts in the audit trail (never a password).

Django sends ``user_login_failed`` for every refused sign-in on the console's and the
admin's pages (a lockout refusal included); django-axes sends ``user_locked_out`` when a
user name or an address is locked out. The events carry the user name that was typed
(cut to the length of a real one), the client's address and the page; they belong to no
institution, so coordinators and observers see them, data owners do not.
"""

from __future__ import annotations

from django.http import HttpRequest

from audit.services import audit_record
from fedplatform.client_address import client_address

ACTOR = "anonymous"
MAX_USERNAME_LENGTH = 150


def _details(request: HttpRequest | None, username: object) -> dict[str, object]:
    return {
        "username": str(username or "")[:MAX_USERNAME_LENGTH],
        "client_address": client_address(request) if request is not None else None,
        "page": request.path if request is not None else None,
    }


def signed_in_record(
    *, sender: object, request: HttpRequest | None = None, user: object = None, **kwargs: object
) -> None:
    """``user_logged_in`` receiver: who signed in, from where."""
    username = getattr(user, "username", "")
    audit_record(actor=f"user:{username}", kind="auth.signed_in", details=_details(request, username))


def login_failed_record(
    *, sender: object, credentials: dict[str, object], request: HttpRequest | None = None, **kwargs: object
) -> None:
    """``user_login_failed`` receiver. ``credentials`` arrives with secrets masked; only
    the user name is read from it."""
    audit_record(
        actor=ACTOR, kind="auth.login_failed", details=_details(request, credentials.get("username"))
    )


def locked_out_record(
    *, sender: object, request: HttpRequest | None = None, username: str | None = None, **kwargs: object
) -> None:
    """django-axes' ``user_locked_out`` receiver."""
    audit_record(actor=ACTOR, kind="auth.locked_out", details=_details(request, username))
