"""Reading studies and their participants, within a person's scope."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import Scope, scope_queryset
from fedplatform.errors import NotFound
from studies.models import Study


def study_list(*, scope: Scope) -> QuerySet[Study]:
    """Every study for coordinators and observers; a data owner's institution's studies."""
    queryset = Study.objects.prefetch_related("participants__institution").order_by("-pk")
    return scope_queryset(queryset, scope=scope, institution_path="participants__institution")


def study_get(*, scope: Scope, study_id: int) -> Study:
    study = study_list(scope=scope).filter(pk=study_id).first()
    if study is None:
        raise NotFound("no such study")
    return study
