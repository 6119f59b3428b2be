"""``/``: what needs attention: counts, active jobs, studies waiting for a decision."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from console.access import console_view, scope_of
from console.pages import page
from institutions.selectors import institution_list, is_online
from studies.selectors import study_awaiting_decision_list, study_list
from training.models import JobState
from training.selectors import job_list

ACTIVE_STATES = (JobState.RUNNING, JobState.PAUSED)


@console_view
@require_safe
def overview(request: HttpRequest) -> HttpResponse:
    scope = scope_of(request)
    institutions = list(institution_list(scope=scope))
    jobs = job_list(scope=scope)
    active_jobs = list(jobs.filter(state__in=ACTIVE_STATES))
    counts = {
        "institutions": len(institutions),
        "agents_online": sum(is_online(getattr(i, "agent_last_seen_at", None)) for i in institutions),
        "studies": study_list(scope=scope).count(),
        "jobs_active": len(active_jobs),
        "jobs": jobs.count(),
    }
    context = {
        "counts": counts,
        "active_jobs": active_jobs,
        "awaiting": list(study_awaiting_decision_list(scope=scope)[:20]),
        "recent_jobs": list(jobs.exclude(state__in=ACTIVE_STATES)[:5]),
    }
    return page(request, "console/overview.html", context, section="overview")
