"""Admin for the audit trail: read only, by nature (no adding, changing or deleting)."""

from __future__ import annotations

from django.contrib import admin

from audit.chain import short_hash
from audit.models import AuditChainHead, AuditEvent
from fedplatform.admin import ReadOnlyAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "at", "actor", "kind", "institution", "job", "hash_prefix")
    list_filter = ("kind", "institution")
    search_fields = ("actor", "kind")
    date_hierarchy = "at"
    ordering = ("-sequence",)

    @admin.display(description="hash")
    def hash_prefix(self, event: AuditEvent) -> str:
        return short_hash(event.hash)


@admin.register(AuditChainHead)
class AuditChainHeadAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "hash")
