"""Creating people: a Django user, their role profile and, for scripts, an API token."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from accounts.models import Profile, Role
from audit.services import audit_record
from fedplatform.errors import Conflict, InvalidInput
from institutions.models import Institution


@dataclass(frozen=True)
class CreatedUser:
    user: AbstractBaseUser
    profile: Profile
    token: str | None


def check_role(role: Role, institution: Institution | None) -> None:
    if role == Role.DATA_OWNER and institution is None:
        raise InvalidInput("a data owner needs an institution")
    if role != Role.DATA_OWNER and institution is not None:
        raise InvalidInput("only data owners belong to an institution")


@transaction.atomic
def user_create(
    *,
    username: str,
    role: Role,
    institution: Institution | None,
    password: str | None,
    with_token: bool,
    actor: str,
) -> CreatedUser:
    """Create a user with ``role``; without a password the account can only use its token."""
    check_role(role, institution)
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        raise Conflict(f"a user named {username!r} exists already", code="duplicate")
    user = user_model(username=username)
    if password is None:
        user.set_unusable_password()
    else:
        try:
            validate_password(password, user=user)
        except ValidationError as error:
            raise InvalidInput(" ".join(error.messages)) from error
        user.set_password(password)
    user.save()
    profile = Profile.objects.create(user=user, role=role, institution=institution)
    token = Token.objects.create(user=user).key if with_token else None
    audit_record(
        actor=actor,
        kind="user.created",
        institution=institution,
        details={"username": username, "role": role.value, "token": with_token},
    )
    return CreatedUser(user=user, profile=profile, token=token)
