"""Audit events: every change of state writes one, in the same transaction.

The trail is append-only and hash-chained (docs/audit.md). Only ``audit_record`` writes
events; the model and its queryset refuse changes and deletions, and a database trigger
refuses them too (migration 0004). On SQLite a migration that rebuilds the
``audit_auditevent`` table drops its triggers: such a migration must create them again
(tests/audit checks that they are there).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from django.db import models
from django.db.models.base import ModelBase
from django.utils import timezone

from audit.chain import GENESIS_HASH, event_hash

#: The primary key of the one chain head row.
CHAIN_HEAD_ID = 1


class AppendOnlyError(RuntimeError):
    """An attempt to change or delete an audit event, or to write one around the chain."""


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """Reading is free; bulk writes, updates and deletions are refused."""

    def update(self, **kwargs: object) -> int:
        raise AppendOnlyError("audit events are append-only: they cannot be updated")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events are append-only: they cannot be deleted")

    def bulk_update(
        self, objs: Iterable[AuditEvent], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        raise AppendOnlyError("audit events are append-only: they cannot be updated")

    def bulk_create(
        self,
        objs: Iterable[AuditEvent],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[AuditEvent]:
        raise AppendOnlyError("audit events are appended one by one, with audit.services.audit_record")


class AuditEvent(models.Model):
    sequence = models.PositiveBigIntegerField(unique=True, help_text="1, 2, 3, ... without gaps")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:<name>, agent:<credential id> or system")
    kind = models.CharField(max_length=80, db_index=True)
    institution = models.ForeignKey(
        "institutions.Institution", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    job = models.ForeignKey("training.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    details = models.JSONField(default=dict, blank=True)
    previous_hash = models.CharField(max_length=64, help_text="the hash of the event before (64 zeros: none)")
    hash = models.CharField(max_length=64, help_text="SHA-256 of this event's canonical serialization")

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.kind}"

    def compute_hash(self) -> str:
        """The hash this event should have, from its fields as they are now."""
        return event_hash(
            sequence=self.sequence,
            at=self.at,
            actor=self.actor,
            kind=self.kind,
            institution_id=self.institution_id,
            job_id=self.job_id,
            details=self.details,
            previous_hash=self.previous_hash,
        )

    def save(
        self,
        *,
        force_insert: bool | tuple[ModelBase, ...] = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
    ) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"audit event {self.pk} is append-only: it cannot be changed")
        if self.sequence is None or not self.hash:
            raise AppendOnlyError("audit events are written with audit.services.audit_record")
        super().save(force_insert=True, using=using)

    def delete(self, using: str | None = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"audit event {self.pk} is append-only: it cannot be deleted")


class AuditChainHead(models.Model):
    """The end of the chain: one row, locked by each append until its transaction ends.

    The lock serializes appends (gap-free sequence numbers); since the row changes in the
    appending transaction, a rollback leaves it as it was. It also records how long the
    chain is, so that deleting its last events shows.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=CHAIN_HEAD_ID)
    sequence = models.PositiveBigIntegerField(default=0, help_text="the last event's (0: no event yet)")
    hash = models.CharField(max_length=64, default=GENESIS_HASH, help_text="the last event's hash")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=CHAIN_HEAD_ID), name="audit_chain_head_one_row")
        ]

    def __str__(self) -> str:
        return f"audit chain head: {self.sequence} events, {self.hash[:12]}"
