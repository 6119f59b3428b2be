"""Reading studies and their participants, within a person's scope."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import Scope, scope_queryset
from fedplatform.errors import NotFound
from studies.models import Decision, Study


def study_list(*, scope: Scope) -> QuerySet[Study]:
    """Every study for coordinators and observers; a data owner's institution's studies."""
    queryset = Study.objects.prefetch_related("participants__institution").order_by("-pk")
    return scope_queryset(queryset, scope=scope, institution_path="participants__institution")


def study_get(*, scope: Scope, study_id: int) -> Study:
    study = study_list(scope=scope).filter(pk=study_id).first()
    if study is None:
        raise NotFound("no such study")
    return study


def study_awaiting_decision_list(*, scope: Scope) -> QuerySet[Study]:
    """Studies with a decision still pending: for a data owner, those awaiting their own
    institution's decision; for everyone else, those any site has not answered yet."""
    pending: dict[str, object] = {"participants__decision": Decision.PENDING}
    if scope.is_data_owner:
        pending["participants__institution"] = scope.institution_id  # the same participant row
    return study_list(scope=scope).filter(**pending).distinct()
