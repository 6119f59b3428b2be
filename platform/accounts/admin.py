"""Admin (superusers only; not the console): people's roles."""

from __future__ import annotations

from django.contrib import admin

from accounts.models import Profile


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role", "institution")
    list_filter = ("role", "institution")
    search_fields = ("user__username", "institution__name")
    autocomplete_fields = ("user",)
