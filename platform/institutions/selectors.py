"""Reading institutions and their agents' credentials, within a person's scope."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from accounts.selectors import Scope, scope_queryset
from fedplatform.errors import Forbidden, NotFound
from institutions.models import AgentCredential, EnrollmentToken, Institution

#: An agent counts as online when its credential was last seen at most this long ago.
ONLINE_WINDOW = timedelta(seconds=60)

_ACTIVE = Q(credentials__revoked_at__isnull=True)


def is_online(last_seen_at: datetime | None, *, now: datetime | None = None) -> bool:
    if last_seen_at is None:
        return False
    return (now or timezone.now()) - last_seen_at <= ONLINE_WINDOW


def credential_is_active(*, credential_id: int) -> bool:
    """Whether the credential exists and is not revoked, read afresh from the database."""
    return AgentCredential.objects.filter(pk=credential_id, revoked_at__isnull=True).exists()


def institution_list(*, scope: Scope) -> QuerySet[Institution]:
    """Institutions with ``active_credentials`` and ``agent_last_seen_at`` annotated."""
    queryset = Institution.objects.annotate(
        active_credentials=Count("credentials", filter=_ACTIVE),
        agent_last_seen_at=Max("credentials__last_seen_at", filter=_ACTIVE),
    ).order_by("name")
    return scope_queryset(queryset, scope=scope, institution_path="pk")


def institution_get(*, scope: Scope, institution_id: int) -> Institution:
    institution = institution_list(scope=scope).filter(pk=institution_id).first()
    if institution is None:
        raise NotFound("no such institution")
    return institution


def own_institution_get(*, scope: Scope, institution_id: int) -> Institution:
    """The institution a data owner decides for: only their own."""
    if institution_id != scope.institution_id:
        raise Forbidden("a data owner decides only for their own institution", code="not_your_institution")
    return institution_get(scope=scope, institution_id=institution_id)


def credential_list(*, institution: Institution) -> QuerySet[AgentCredential]:
    """The institution's credentials, newest first (call with an institution in scope)."""
    return AgentCredential.objects.filter(institution=institution).order_by("-created_at", "-pk")


def credential_get(*, scope: Scope, credential_id: int) -> AgentCredential:
    queryset = scope_queryset(AgentCredential.objects.all(), scope=scope, institution_path="institution")
    credential = queryset.filter(pk=credential_id).first()
    if credential is None:
        raise NotFound("no such credential")
    return credential


def enrollment_token_get(*, institution: Institution, token_id: int) -> EnrollmentToken:
    """One of the institution's enrollment tokens (its hash and dates; never a clear token)."""
    token = EnrollmentToken.objects.filter(institution=institution, pk=token_id).first()
    if token is None:
        raise NotFound("no such enrollment token")
    return token


def enrollment_token_list(*, institution: Institution) -> QuerySet[EnrollmentToken]:
    """The institution's enrollment tokens, newest first (hashes and dates; never a clear token)."""
    return EnrollmentToken.objects.filter(institution=institution).select_related("institution")
