from __future__ import annotations

from django.urls import path

from queries import apis

urlpatterns = [
    path("studies/<int:study_id>/queries/", apis.QueryListApi.as_view(), name="query-list"),
    path(
        "studies/<int:study_id>/queries/<int:query_id>/", apis.QueryDetailApi.as_view(), name="query-detail"
    ),
    path(
        "studies/<int:study_id>/queries/<int:query_id>/decision/",
        apis.QueryDecideApi.as_view(),
        name="query-decision",
    ),
]
