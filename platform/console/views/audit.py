"""``/audit/``: the audit trail, newest first, filtered and paginated (50 a page)."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from audit.selectors import audit_event_list
from console.access import console_view, scope_of
from console.forms import AUDIT_PAGE_SIZE, AuditFilterForm
from console.pages import page

FILTERS = ("institution", "job", "actor", "kind")


@console_view
@require_safe
def audit_log(request: HttpRequest) -> HttpResponse:
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
    events_page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "events": events_page,
        "filtered": any(value is not None for value in chosen.values()),
        "query": query.urlencode(),
    }
    return page(request, "console/audit/list.html", context, section="audit")
