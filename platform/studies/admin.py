"""Admin for studies and their participants' decisions (read only: the API records decisions)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from fedplatform.admin import ReadOnlyAdmin
from studies.models import Study, StudyParticipant, SummaryAnswer, SummaryRequest


class StudyParticipantInline(admin.TabularInline):
    model = StudyParticipant
    fields = ("institution", "decision", "decided_at", "decided_by")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ("name", "strategy", "created_by", "created_at")
    list_filter = ("strategy",)
    search_fields = ("name", "description")
    inlines = (StudyParticipantInline,)


@admin.register(StudyParticipant)
class StudyParticipantAdmin(ReadOnlyAdmin):
    list_display = ("study", "institution", "decision", "decided_at", "decided_by")
    list_filter = ("decision", "institution")
    search_fields = ("study__name", "institution__name")


@admin.register(SummaryRequest)
class SummaryRequestAdmin(ReadOnlyAdmin):
    list_display = ("study", "state", "requested_by", "requested_at", "finished_at")
    list_filter = ("state",)
    search_fields = ("study__name",)


@admin.register(SummaryAnswer)
class SummaryAnswerAdmin(ReadOnlyAdmin):
    # The summary itself stays out of the list: aggregates, but of one site.
    list_display = ("request", "institution", "answered_at", "refusal")
    search_fields = ("request__study__name", "institution__name")
