"""Admin (superusers only; not the console): people's roles."""

from __future__ import annotations

from django.contrib import admin

from accounts.models import Invitation, Profile
from fedplatform.admin import ReadOnlyAdmin


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role", "institution")
    list_filter = ("role", "institution")
    search_fields = ("user__username", "institution__name")
    autocomplete_fields = ("user",)


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = (
        "username",
        "role",
        "institution",
        "created_by",
        "created_at",
        "expires_at",
        "accepted_at",
    )
    list_filter = ("role",)
    search_fields = ("username",)
