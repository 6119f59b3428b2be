"""``/audit/``: the audit trail, newest first, filtered and paginated (50 a page), and
``/audit/export.csv``: the same events, every one, as CSV with their hash chain."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe

from audit.models import AuditEvent
from audit.selectors import audit_event_list
from console.access import console_view, scope_of
from console.forms import AUDIT_PAGE_SIZE, AuditFilterForm
from console.pages import page

FILTERS = ("institution", "job", "actor", "kind")
EXPORT_COLUMNS = ("sequence", "at", "kind", "actor", "institution", "job", "details", "previous_hash", "hash")


def _filtered_events(request: HttpRequest) -> tuple[AuditFilterForm, QuerySet[AuditEvent], bool]:
    scope = scope_of(request)
    form = AuditFilterForm(request.GET, scope=scope)
    form.is_valid()  # invalid filters are shown with their errors and not applied
    chosen = {name: form.cleaned_data.get(name) or None for name in FILTERS}
    events = audit_event_list(
        scope=scope,
        institution_id=chosen["institution"],
        job_id=chosen["job"],
        actor=chosen["actor"],
        kind=chosen["kind"],
    ).select_related("institution")
    return form, events, any(value is not None for value in chosen.values())


@console_view
@require_safe
def audit_log(request: HttpRequest) -> HttpResponse:
    form, events, filtered = _filtered_events(request)
    events_page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "events": events_page,
        "filtered": filtered,
        "query": query.urlencode(),
    }
    return page(request, "console/audit/list.html", context, section="audit")


class _Echo:
    """A file-like object whose write hands the line back, for streaming csv.writer's rows."""

    def write(self, value: str) -> str:
        return value


@console_view
@require_safe
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    """The filtered events, oldest first, streamed as CSV; with each event's hash and its
    predecessor's, an auditor can check the chain offline."""
    _, events, _ = _filtered_events(request)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(_csv_rows(events.order_by("pk")), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    return response


def _csv_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for event in events.iterator(chunk_size=500):
        yield writer.writerow(
            (
                event.sequence,
                event.at.isoformat(),
                event.kind,
                event.actor,
                event.institution.name if event.institution else "",
                event.job_id or "",
                json.dumps(event.details, sort_keys=True),
                event.previous_hash,
                event.hash,
            )
        )
