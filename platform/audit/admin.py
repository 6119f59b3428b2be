"""Admin for the audit trail: read only, by nature."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor", "kind", "institution", "job")
    list_filter = ("kind", "institution")
    search_fields = ("actor", "kind")
    date_hierarchy = "at"
