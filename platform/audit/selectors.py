"""Reading the audit trail, within a person's scope."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import Scope, scope_queryset
from audit.models import AuditEvent


def audit_event_list(
    *,
    scope: Scope,
    institution_id: int | None = None,
    job_id: int | None = None,
    actor: str | None = None,
    kind: str | None = None,
) -> QuerySet[AuditEvent]:
    """Newest first; a data owner sees only the events recorded against their institution."""
    queryset = AuditEvent.objects.order_by("-pk")
    filters = {"institution_id": institution_id, "job_id": job_id, "actor": actor, "kind": kind}
    queryset = queryset.filter(**{name: value for name, value in filters.items() if value is not None})
    return scope_queryset(queryset, scope=scope, institution_path="institution")
