"""Admin for jobs, rounds, model versions, updates, refusals and the privacy ledger.

Read only: every change of state goes through the services, which lock rows, check states
and write the audit trail.
"""

from __future__ import annotations

from django.contrib import admin

from fedplatform.admin import ReadOnlyAdmin
from training.models import Job, ModelVersion, PrivacySpend, Refusal, Round, SecAggMessage, Update


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "study",
        "state",
        "num_rounds",
        "min_updates",
        "created_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("state", "study")
    search_fields = ("study__name",)


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "job",
        "number",
        "kind",
        "state",
        "expected_updates",
        "opened_at",
        "deadline_at",
        "closed_at",
    )
    list_filter = ("state", "kind")
    search_fields = ("job__study__name",)


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("id", "job", "number", "sha256", "size", "created_at")
    list_filter = ("job",)
    search_fields = ("sha256",)


@admin.register(Update)
class UpdateAdmin(ReadOnlyAdmin):
    list_display = ("id", "round", "institution", "num_examples", "size", "received_at")
    list_filter = ("institution",)
    search_fields = ("sha256",)


@admin.register(Refusal)
class RefusalAdmin(ReadOnlyAdmin):
    list_display = ("job", "institution", "at")
    list_filter = ("institution",)


@admin.register(PrivacySpend)
class PrivacySpendAdmin(ReadOnlyAdmin):
    list_display = ("id", "institution", "job", "level", "rounds", "epsilon", "delta", "updated_at")
    list_filter = ("institution", "level")


@admin.register(SecAggMessage)
class SecAggMessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "round", "institution", "kind", "received_at")
    list_filter = ("kind",)
