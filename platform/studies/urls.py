from __future__ import annotations

from django.urls import path

from studies import apis

urlpatterns = [
    path("studies/", apis.StudyListCreateApi.as_view(), name="study-list"),
    path("studies/<int:study_id>/", apis.StudyDetailApi.as_view(), name="study-detail"),
    path("studies/<int:study_id>/summaries/", apis.StudySummariesApi.as_view(), name="study-summaries"),
    path("studies/<int:study_id>/decision/", apis.StudyDecideApi.as_view(), name="study-decision"),
]
