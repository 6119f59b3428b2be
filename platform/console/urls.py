"""The console's pages, mounted at ``/``."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from console.views import audit, institutions, jobs, overview, people, queries, studies

app_name = "console"

urlpatterns = [
    path("", overview.overview, name="overview"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="console/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # institutions and their agents
    path("institutions/", institutions.institution_list_view, name="institution-list"),
    path("institutions/<int:institution_id>/", institutions.institution_detail, name="institution-detail"),
    path("institutions/<int:institution_id>/tokens/", institutions.token_create, name="token-create"),
    path(
        "institutions/<int:institution_id>/tokens/<int:token_id>/",
        institutions.token_show,
        name="token-show",
    ),
    path(
        "credentials/<int:credential_id>/revoke/",
        institutions.credential_revoke_view,
        name="credential-revoke",
    ),
    # studies
    path(
        "institutions/<int:institution_id>/tokens/<int:token_id>/withdraw/",
        institutions.token_withdraw,
        name="token-withdraw",
    ),
    path(
        "institutions/<int:institution_id>/tokens/<int:token_id>/site-kit.zip",
        institutions.token_site_kit,
        name="token-site-kit",
    ),
    path("studies/", studies.study_list_view, name="study-list"),
    path("studies/new/", studies.study_new, name="study-new"),
    path("studies/<int:study_id>/", studies.study_detail, name="study-detail"),
    path("studies/<int:study_id>/decision/", studies.study_decide_view, name="study-decide"),
    path("studies/<int:study_id>/jobs/", studies.job_new, name="job-new"),
    path("studies/<int:study_id>/scaling/", studies.study_agree_scaling, name="study-agree-scaling"),
    path("studies/<int:study_id>/queries/", queries.query_list_view, name="query-list"),
    path("studies/<int:study_id>/queries/<int:query_id>/", queries.query_detail, name="query-detail"),
    path(
        "studies/<int:study_id>/queries/<int:query_id>/decision/",
        queries.query_decide_view,
        name="query-decide",
    ),
    # jobs and models
    path("jobs/", jobs.job_list_view, name="job-list"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/live.json", jobs.job_live_json, name="job-live"),
    path("jobs/<int:job_id>/start/", jobs.job_action, {"action": "start"}, name="job-start"),
    path("jobs/<int:job_id>/pause/", jobs.job_action, {"action": "pause"}, name="job-pause"),
    path("jobs/<int:job_id>/resume/", jobs.job_action, {"action": "resume"}, name="job-resume"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel_view, name="job-cancel"),
    path("jobs/<int:job_id>/models/upload/", jobs.model_upload_view, name="model-upload"),
    path("models/<int:version_id>/download", jobs.model_download, name="model-download"),
    path("models/<int:version_id>/bundle", jobs.model_bundle, name="model-bundle"),
    # the audit trail
    path("people/", people.people_view, name="people"),
    path("invitations/<str:secret>/", people.invitation_accept_view, name="invitation-accept"),
    path("account/password/", people.password_change_view, name="password-change"),
    path("audit/", audit.audit_log, name="audit-log"),
    path("audit/export.csv", audit.audit_export, name="audit-export"),
]
