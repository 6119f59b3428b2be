"""Who may see what: a signed-in person's role and the institution their view is limited to.

Coordinators and observers see every institution's resources (observers only read); a data
owner sees only their own institution's. Objects outside a person's scope are simply absent
from their querysets, so the API answers 404 for them and never reveals that they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Model, QuerySet

from accounts.models import Profile, Role

_M = TypeVar("_M", bound=Model)


@dataclass(frozen=True)
class Scope:
    """The role a request acts with and, for data owners, their institution."""

    role: Role
    institution_id: int | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.role == Role.COORDINATOR

    @property
    def is_data_owner(self) -> bool:
        return self.role == Role.DATA_OWNER

    @property
    def sees_every_institution(self) -> bool:
        return not self.is_data_owner


def profile_get(*, user: AbstractBaseUser | AnonymousUser) -> Profile | None:
    """The user's profile, or ``None`` for an anonymous user or a user without one."""
    if not user.is_authenticated:
        return None
    # The reverse one-to-one raises an AttributeError subclass when there is no profile, and
    # caches the profile on the user, so the permission check and the view share one query.
    profile = getattr(user, "profile", None)
    return profile if isinstance(profile, Profile) else None


def user_scope(*, user: AbstractBaseUser | AnonymousUser) -> Scope:
    """Superusers act as coordinators; a user without a profile is an observer."""
    if getattr(user, "is_superuser", False) and user.is_authenticated:
        return Scope(role=Role.COORDINATOR)
    profile = profile_get(user=user)
    if profile is None:
        return Scope(role=Role.OBSERVER)
    role = Role(profile.role)
    if role == Role.DATA_OWNER:
        return Scope(role=role, institution_id=profile.institution_id)
    return Scope(role=role)


def scope_queryset(queryset: QuerySet[_M], *, scope: Scope, institution_path: str) -> QuerySet[_M]:
    """``queryset`` limited to what ``scope`` may see.

    ``institution_path`` is the lookup from the model to the institution that owns a row,
    e.g. ``"institution"`` for a credential or ``"study__participants__institution"`` for a
    job. It must reach at most one matching row per object (true for every path used here,
    thanks to the one-participation-per-study constraint), so no ``distinct()`` is needed.
    """
    if scope.sees_every_institution:
        return queryset
    return queryset.filter(**{institution_path: scope.institution_id})
