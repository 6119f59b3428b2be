"""Jobs: the list, the live page and its JSON, the controls, and model downloads."""

from __future__ import annotations

import io

from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_http_methods, require_POST, require_safe

from accounts.selectors import Scope
from console.access import actor_of, console_json_view, console_view, require_coordinator, scope_of
from console.live import job_live
from console.pages import page
from fedplatform.errors import ServiceError, TooLarge
from training.blobs import BlobCorrupt
from training.models import Job, JobState
from training.selectors import job_get, job_list, model_version_get
from training.services import (
    job_cancel,
    job_pause,
    job_resume,
    job_start,
    model_bundle_download,
    model_upload_limit,
    model_version_download,
    model_version_upload,
)

TRANSITIONS = {"start": job_start, "pause": job_pause, "resume": job_resume, "cancel": job_cancel}
DONE_MESSAGES = {
    "start": "Job {id} started: round 1 is open to the sites.",
    "pause": "Job {id} is paused: sites get no new work until it resumes.",
    "resume": "Job {id} resumed: the open round has a fresh deadline.",
    "cancel": "Job {id} is cancelled.",
}
STATE_FILTERS = [("", "All"), *((state.value, state.label) for state in JobState)]


@console_view
@require_safe
def job_list_view(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state") or None
    if state not in JobState.values:
        state = None
    context = {
        "jobs": job_list(scope=scope_of(request), state=state),
        "state_filters": STATE_FILTERS,
        "current_state": state or "",
    }
    return page(request, "console/jobs/list.html", context, section="jobs")


@console_view
@require_safe
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    scope = scope_of(request)
    job = job_get(scope=scope, job_id=job_id)
    context = {"job": job, "live": job_live(scope=scope, job=job)}
    return page(request, "console/jobs/detail.html", context, section="jobs")


@console_json_view
@require_GET
def job_live_json(request: HttpRequest, job_id: int) -> JsonResponse:
    scope = scope_of(request)
    job = job_get(scope=scope, job_id=job_id)
    response = JsonResponse(job_live(scope=scope, job=job))
    response["Cache-Control"] = "no-store"
    return response


def _transition(request: HttpRequest, job: Job, action: str) -> HttpResponseBase:
    try:
        TRANSITIONS[action](job_id=job.pk, actor=actor_of(request))
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, DONE_MESSAGES[action].format(id=job.pk))
    return redirect("console:job-detail", job_id=job.pk)


@console_view
@require_POST
def job_action(request: HttpRequest, job_id: int, action: str) -> HttpResponseBase:
    """Start, pause or resume a job (coordinators)."""
    scope = scope_of(request)
    require_coordinator(scope)
    return _transition(request, job_get(scope=scope, job_id=job_id), action)


@console_view
@require_http_methods(["GET", "POST"])
def job_cancel_view(request: HttpRequest, job_id: int) -> HttpResponseBase:
    """Cancelling cannot be undone: a confirmation page first (coordinators)."""
    scope = scope_of(request)
    require_coordinator(scope)
    job = job_get(scope=scope, job_id=job_id)
    if request.method == "POST":
        return _transition(request, job, "cancel")
    return page(request, "console/jobs/cancel.html", {"job": job}, section="jobs")


def _not_downloadable(
    request: HttpRequest, scope: Scope, version_id: int, error: BlobCorrupt
) -> HttpResponseBase:
    """Back to the job's page with the reason: the stored bytes no longer match their digest."""
    messages.error(request, f"The model cannot be downloaded: {error.message}.")
    return redirect("console:job-detail", job_id=model_version_get(scope=scope, version_id=version_id).job_id)


@console_view
@require_POST
def model_upload_view(request: HttpRequest, job_id: int) -> HttpResponseBase:
    """A model trained elsewhere, in the job's format, as its next version (coordinators)."""
    scope = scope_of(request)
    require_coordinator(scope)
    job = job_get(scope=scope, job_id=job_id)
    upload = request.FILES.get("tensors")
    name = request.POST.get("name", "").strip()[:200]
    if upload is None or not name:
        messages.error(request, "Choose a safetensors file and give the model a name.")
        return redirect("console:job-detail", job_id=job.pk)
    try:
        limit = model_upload_limit(job=job)
        if upload.size is not None and upload.size > limit:
            raise TooLarge(f"the model is {upload.size} bytes; this job's format takes at most {limit}")
        version = model_version_upload(job_id=job.pk, data=upload.read(), name=name, actor=actor_of(request))
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"“{name}” is version {version.number}: the sites can now evaluate it.")
    return redirect("console:job-detail", job_id=job.pk)


@console_view
@require_GET
def model_bundle(request: HttpRequest, version_id: int) -> HttpResponseBase:
    """A model version as one zip to hand over (weights, schema, scaling, card)."""
    scope = scope_of(request)
    try:
        version, data = model_bundle_download(scope=scope, version_id=version_id, actor=actor_of(request))
    except BlobCorrupt as error:
        return _not_downloadable(request, scope, version_id, error)
    filename = f"model-{version.job_id}-{version.number}-bundle.zip"
    return FileResponse(
        io.BytesIO(data), as_attachment=True, content_type="application/zip", filename=filename
    )


@console_view
@require_GET
def model_download(request: HttpRequest, version_id: int) -> HttpResponseBase:
    """A global model's safetensors file; its checksum is verified before it is sent."""
    scope = scope_of(request)
    try:
        version, data = model_version_download(scope=scope, version_id=version_id, actor=actor_of(request))
    except BlobCorrupt as error:
        return _not_downloadable(request, scope, version_id, error)
    response = FileResponse(
        io.BytesIO(data),
        as_attachment=True,
        content_type="application/octet-stream",
        filename=f"model-{version.job_id}-{version.number}-{version.sha256[:12]}.safetensors",
    )
    response["X-Content-SHA256"] = version.sha256
    return response
