"""Admin for institutions and their agents' enrollment tokens and credentials (hashes hidden)."""

from __future__ import annotations

from django.contrib import admin

from fedplatform.admin import ReadOnlyAdmin
from institutions.models import AgentCredential, EnrollmentToken, Institution


@admin.register(Institution)
class InstitutionAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)
    readonly_fields = ("created_at",)


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(ReadOnlyAdmin):
    list_display = ("id", "institution", "created_by", "created_at", "expires_at", "used_at")
    list_filter = ("institution",)
    exclude = ("token_hash",)


@admin.register(AgentCredential)
class AgentCredentialAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "institution",
        "hostname",
        "agent_version",
        "created_at",
        "last_seen_at",
        "revoked_at",
    )
    list_filter = ("institution", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("hostname", "institution__name")
    exclude = ("secret_hash",)
