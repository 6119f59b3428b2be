"""Studies: the list, the step-by-step "New study" form, the detail page with each site's
decision, a data owner's approval, and a coordinator's "New job" form."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.selectors import Scope
from console.access import actor_of, console_view, require_coordinator, require_data_owner, scope_of
from console.forms import DecisionForm, JobForm, add_service_error
from console.pages import page
from console.study_form import StudyForm
from fedplatform.errors import Conflict, ServiceError
from institutions.selectors import institution_get, institution_list
from queries.services import queries_awaiting_decision
from studies.agreement import secure_promised, summary_request_open, summary_request_view
from studies.models import Decision, Study
from studies.selectors import participant_decided_by, study_get, study_list
from studies.services import study_create, study_decide
from training.selectors import job_list
from training.services import job_create


@console_view
@require_safe
def study_list_view(request: HttpRequest) -> HttpResponse:
    context = {"studies": study_list(scope=scope_of(request))}
    return page(request, "console/studies/list.html", context, section="studies")


@console_view
@require_http_methods(["GET", "POST"])
def study_new(request: HttpRequest) -> HttpResponse:
    scope = scope_of(request)
    require_coordinator(scope)
    institutions = institution_list(scope=scope)
    form = StudyForm(request.POST or None, institutions=institutions)
    if request.method == "POST" and form.is_valid():
        try:
            study = study_create(**form.study_arguments(), actor=actor_of(request))
        except Conflict as error:  # the only conflict: a study of that name exists
            add_service_error(form, error, default="name")
        except ServiceError as error:
            add_service_error(form, error)
        else:
            messages.success(
                request, f"Study “{study.name}” is set up. Each site's data owner must now approve it."
            )
            return redirect("console:study-detail", study_id=study.pk)
    context = {"form": form, "has_institutions": institutions.exists()}
    return page(request, "console/studies/new.html", context, section="studies")


def _study_page(request: HttpRequest, scope: Scope, study: Study, job_form: JobForm | None) -> HttpResponse:
    participants = list(study.participants.all())
    approved = sum(1 for participant in participants if participant.decision == Decision.APPROVED)
    context = {
        "study": study,
        "participants": participants,
        "participant_rows": [
            (participant, participant_decided_by(participant=participant, scope=scope))
            for participant in participants
        ],
        "approved": approved,
        "all_approved": approved == len(participants),
        "jobs": job_list(scope=scope, study_id=study.pk),
        "job_form": job_form or JobForm(participants=len(participants)),
        "schema_features": study.data_schema.get("features", []),
        "agreement": summary_request_view(study=study, scope=scope),
        "agreement_open": not study.jobs.exists(),
        "secure_by_default": secure_promised(study),
        "query_count": study.queries.count(),
        "queries_awaiting": queries_awaiting_decision(study=study, scope=scope),
    }
    return page(request, "console/studies/detail.html", context, section="studies")


@console_view
@require_safe
def study_detail(request: HttpRequest, study_id: int) -> HttpResponse:
    """The study; ``?clone=<job id>`` fills the new-job form with that job's settings."""
    scope = scope_of(request)
    study = study_get(scope=scope, study_id=study_id)
    return _study_page(request, scope, study, _cloned_job_form(request, scope, study))


def _cloned_job_form(request: HttpRequest, scope: Scope, study: Study) -> JobForm | None:
    clone = request.GET.get("clone", "")
    if not clone.isdigit():
        return None
    source = job_list(scope=scope, study_id=study.pk).filter(pk=int(clone)).first()
    if source is None:
        return None
    initial = {
        "num_rounds": source.num_rounds,
        "min_updates": source.min_updates,
        "round_deadline_seconds": source.round_deadline_seconds,
        "max_deadline_extensions": source.max_deadline_extensions,
        "early_stopping_rounds": source.early_stopping_rounds,
    }
    return JobForm(participants=study.participants.count(), initial=initial)


@console_view
@require_POST
def study_decide_view(request: HttpRequest, study_id: int) -> HttpResponseBase:
    scope = scope_of(request)
    institution_id = require_data_owner(scope)
    study = study_get(scope=scope, study_id=study_id)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve or decline.")
        return redirect("console:study-detail", study_id=study.pk)
    institution = institution_get(scope=scope, institution_id=institution_id)
    approve = form.cleaned_data["decision"] == "approve"
    try:
        study_decide(study=study, institution=institution, approve=approve, actor=actor_of(request))
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        verb = "approved" if approve else "declined"
        messages.success(request, f"{institution.name} {verb} the study “{study.name}”.")
    return redirect("console:study-detail", study_id=study.pk)


@console_view
@require_POST
def study_agree_scaling(request: HttpRequest, study_id: int) -> HttpResponseBase:
    """Ask every approved site's agent for its summary (the data agreement)."""
    scope = scope_of(request)
    require_coordinator(scope)
    study = study_get(scope=scope, study_id=study_id)
    secure = request.POST.get("secure_aggregation") == "on"
    try:
        summary_request_open(study=study, actor=actor_of(request), secure_aggregation=secure)
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, "Each site's agent is asked for its counts and sums; this page shows who answered."
        )
    return redirect(f"{reverse('console:study-detail', args=[study.pk])}#scaling")


@console_view
@require_POST
def job_new(request: HttpRequest, study_id: int) -> HttpResponseBase:
    scope = scope_of(request)
    require_coordinator(scope)
    study = study_get(scope=scope, study_id=study_id)
    form = JobForm(request.POST, participants=study.participants.count())
    if form.is_valid():
        try:
            job = job_create(study=study, **form.cleaned_data, actor=actor_of(request))
        except ServiceError as error:
            add_service_error(form, error)
        else:
            messages.success(request, f"Job {job.pk} is ready. Start it once every site approved the study.")
            return redirect("console:job-detail", job_id=job.pk)
    return _study_page(request, scope, study, form)
