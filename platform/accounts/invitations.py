"""People and onboarding: invitations with one-time links, deactivation, password changes.

A coordinator invites a data owner (of one institution) or an observer under a user name;
the link (``/invitations/<secret>/``) is shown once, like an enrollment token, and the
platform keeps only its hash. Whoever opens it sets the account's password, which creates
the account; the link then no longer works. Deactivated accounts can no longer sign in, and
their sessions and API tokens stop working at once (Django and DRF refuse inactive users).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Invitation, Role
from accounts.services import CreatedUser, check_role, user_create
from audit.services import audit_record
from fedplatform.errors import Conflict, Forbidden, InvalidInput, NotFound
from institutions.models import Institution
from institutions.services import secret_hash

#: How long an invitation link works.
INVITATION_DAYS = 7
#: Roles an invitation may give: coordinators are made by an administrator.
INVITED_ROLES = (Role.DATA_OWNER, Role.OBSERVER)


@dataclass(frozen=True)
class IssuedInvitation:
    secret: str
    record: Invitation


@transaction.atomic
def invitation_create(
    *, username: str, role: Role, institution: Institution | None, actor: str
) -> IssuedInvitation:
    """A new invitation; the link's secret exists only in this return value."""
    if role not in INVITED_ROLES:
        raise InvalidInput("invite data owners and observers; coordinators are made by an administrator")
    check_role(role, institution)
    username = username.strip()
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError as error:
        raise InvalidInput(f"the user name: {' '.join(error.messages)}") from None
    if get_user_model().objects.filter(username=username).exists():
        raise Conflict(f"a user named {username!r} exists already", code="duplicate")
    pending = [i for i in Invitation.objects.filter(username=username) if i.state == "pending"]
    if pending:
        raise Conflict(f"{username!r} has a pending invitation already: withdraw it first", code="duplicate")
    secret = secrets.token_urlsafe(32)
    record = Invitation.objects.create(
        token_hash=secret_hash(secret),
        username=username,
        role=role,
        institution=institution,
        created_by=actor,
        expires_at=timezone.now() + timedelta(days=INVITATION_DAYS),
    )
    audit_record(
        actor=actor,
        kind="invitation.created",
        institution=institution,
        details={"invitation_id": record.pk, "username": username, "role": role.value},
    )
    return IssuedInvitation(secret=secret, record=record)


def invitation_open(*, secret: str) -> Invitation | None:
    """The pending invitation of a link, or None (unknown, used, withdrawn or expired alike)."""
    record = Invitation.objects.select_related("institution").filter(token_hash=secret_hash(secret)).first()
    return record if record is not None and record.state == "pending" else None


@transaction.atomic
def invitation_accept(*, secret: str, password: str, with_token: bool = False) -> CreatedUser:
    """Create the invited account with ``password`` (checked by Django's validators) and, for
    the API, its token."""
    record = Invitation.objects.select_for_update().filter(token_hash=secret_hash(secret)).first()
    if record is None or record.state != "pending":
        raise NotFound("this invitation link is invalid, used, withdrawn or expired")
    created = user_create(
        username=record.username,
        role=Role(record.role),
        institution=record.institution,
        password=password,
        with_token=with_token,
        actor=f"invitation:{record.pk}",
    )
    record.accepted_at = timezone.now()
    record.save(update_fields=["accepted_at"])
    audit_record(
        actor=f"user:{record.username}",
        kind="invitation.accepted",
        institution=record.institution,
        details={"invitation_id": record.pk},
    )
    return created


@transaction.atomic
def invitation_withdraw(*, invitation_id: int, actor: str) -> Invitation:
    record = Invitation.objects.select_for_update().filter(pk=invitation_id).first()
    if record is None:
        raise NotFound("no such invitation")
    if record.state != "pending":
        raise Conflict(f"this invitation is {record.state} already", code=f"invitation_{record.state}")
    record.withdrawn_at = timezone.now()
    record.save(update_fields=["withdrawn_at"])
    audit_record(
        actor=actor,
        kind="invitation.withdrawn",
        institution=record.institution,
        details={"invitation_id": record.pk, "username": record.username},
    )
    return record


def may_set_active(*, user: AbstractBaseUser, actor_user: AbstractBaseUser) -> bool:
    """Whether ``actor_user`` may (de)activate ``user``: not themselves; coordinators and
    administrators only by an administrator (a coordinator cannot lock the others out)."""
    if user.pk == actor_user.pk:
        return False
    role = getattr(getattr(user, "profile", None), "role", None)
    privileged = (
        getattr(user, "is_superuser", False) or getattr(user, "is_staff", False) or role == Role.COORDINATOR
    )
    return bool(getattr(actor_user, "is_superuser", False) or not privileged)


@transaction.atomic
def user_set_active(
    *, user_id: int, active: bool, actor_user: AbstractBaseUser, actor: str
) -> AbstractBaseUser:
    """Deactivate (or reactivate) an account; nobody deactivates their own."""
    user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
    if user is None:
        raise NotFound("no such user")
    if user.pk == actor_user.pk and not active:
        raise Conflict("you cannot deactivate your own account", code="own_account")
    if not may_set_active(user=user, actor_user=actor_user):
        raise Forbidden("coordinators and administrators are (de)activated by an administrator")
    if user.is_active != active:
        user.is_active = active
        user.save(update_fields=["is_active"])
        audit_record(
            actor=actor,
            kind="user.reactivated" if active else "user.deactivated",
            details={"username": user.get_username()},
        )
    return user
