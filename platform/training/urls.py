from __future__ import annotations

from django.urls import path

from training import apis

urlpatterns = [
    path("jobs/", apis.JobListCreateApi.as_view(), name="job-list"),
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/start/", apis.JobStartApi.as_view(), name="job-start"),
    path("jobs/<int:job_id>/pause/", apis.JobPauseApi.as_view(), name="job-pause"),
    path("jobs/<int:job_id>/resume/", apis.JobResumeApi.as_view(), name="job-resume"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/progress/", apis.JobProgressApi.as_view(), name="job-progress"),
    path("jobs/<int:job_id>/models/", apis.JobModelListApi.as_view(), name="job-models"),
    path("jobs/<int:job_id>/models/upload/", apis.JobModelUploadApi.as_view(), name="job-model-upload"),
    path("models/<int:version_id>/download/", apis.ModelDownloadApi.as_view(), name="model-download"),
    path("models/<int:version_id>/bundle/", apis.ModelBundleApi.as_view(), name="model-bundle"),
    path(
        "institutions/<int:institution_id>/privacy-ledger/",
        apis.PrivacyLedgerApi.as_view(),
        name="institution-privacy-ledger",
    ),
]
