"""Writing audit events: appending to the hash chain (docs/audit.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from audit.chain import GENESIS_HASH, details_normalize
from audit.models import CHAIN_HEAD_ID, AuditChainHead, AuditEvent

if TYPE_CHECKING:
    from institutions.models import Institution
    from training.models import Job

logger = logging.getLogger(__name__)


def audit_record(
    *,
    actor: str,
    kind: str,
    institution: Institution | None = None,
    job: Job | None = None,
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Append one event; call inside the transaction that makes the change.

    The chain head stays locked until that transaction ends, so record the event as one
    of the last steps and lock no other entity's rows after it. A rollback takes the event
    and the head's move back together: the chain keeps no hole.
    """
    with transaction.atomic():
        head = _chain_head_locked()
        event = AuditEvent(
            sequence=head.sequence + 1,
            at=timezone.now(),  # taken under the lock: timestamps follow the chain's order
            actor=actor,
            kind=kind,
            institution=institution,
            job=job,
            details=details_normalize(details or {}),
            previous_hash=head.hash,
        )
        event.hash = event.compute_hash()
        event.save(force_insert=True)
        head.sequence, head.hash = event.sequence, event.hash
        head.save(update_fields=["sequence", "hash"])
    return event


def _chain_head_locked() -> AuditChainHead:
    """The head row, locked; made again (from the last event) if something removed it."""
    head = AuditChainHead.objects.select_for_update().filter(pk=CHAIN_HEAD_ID).first()
    if head is not None:
        return head
    last = AuditEvent.objects.order_by("-sequence").only("sequence", "hash").first()
    sequence, hash_hex = (last.sequence, last.hash) if last else (0, GENESIS_HASH)
    _, created = AuditChainHead.objects.get_or_create(
        pk=CHAIN_HEAD_ID, defaults={"sequence": sequence, "hash": hash_hex}
    )
    if created and last is not None:
        logger.warning("the audit chain head was missing; made again at event %s", sequence)
    return AuditChainHead.objects.select_for_update().get(pk=CHAIN_HEAD_ID)
