from django.urls import path

from agentapi import apis

urlpatterns = [
    path("enroll", apis.EnrollApi.as_view(), name="agent-enroll"),
    path("heartbeat", apis.HeartbeatApi.as_view(), name="agent-heartbeat"),
    path("me", apis.MeApi.as_view(), name="agent-me"),
    path("work", apis.WorkApi.as_view(), name="agent-work"),
    path("models/<int:version_id>", apis.ModelDownloadApi.as_view(), name="agent-model"),
    path("rounds/<int:round_id>/update", apis.UpdateUploadApi.as_view(), name="agent-update"),
    path("rounds/<int:round_id>/evaluation", apis.EvaluationApi.as_view(), name="agent-evaluation"),
    path("rounds/<int:round_id>/secagg/keys", apis.SecAggKeysApi.as_view(), name="agent-secagg-keys"),
    path("rounds/<int:round_id>/secagg/shares", apis.SecAggSharesApi.as_view(), name="agent-secagg-shares"),
    path(
        "rounds/<int:round_id>/secagg/masked",
        apis.SecAggMaskedUploadApi.as_view(),
        name="agent-secagg-masked",
    ),
    path(
        "rounds/<int:round_id>/secagg/unmasking",
        apis.SecAggUnmaskingApi.as_view(),
        name="agent-secagg-unmasking",
    ),
    path("summaries/<int:request_id>", apis.SummaryAnswerApi.as_view(), name="agent-summary"),
    path("queries/<int:query_id>", apis.QueryAnswerApi.as_view(), name="agent-query"),
    path("jobs/<int:job_id>/refuse", apis.RefuseApi.as_view(), name="agent-refuse"),
]
