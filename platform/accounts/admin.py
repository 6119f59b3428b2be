"""Admin (superusers only; not the console): people's roles, and a read-only base for records."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from accounts.models import Profile


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that only services may change (they keep the state machine and audit trail)."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role", "institution")
    list_filter = ("role", "institution")
    search_fields = ("user__username", "institution__name")
    autocomplete_fields = ("user",)
