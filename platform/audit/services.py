"""Writing audit events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit.models import AuditEvent

if TYPE_CHECKING:
    from institutions.models import Institution
    from training.models import Job


def audit_record(
    *,
    actor: str,
    kind: str,
    institution: Institution | None = None,
    job: Job | None = None,
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Append one event; call inside the transaction that makes the change."""
    return AuditEvent.objects.create(
        actor=actor, kind=kind, institution=institution, job=job, details=details or {}
    )
