"""Reading studies and their participants, within a person's scope."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import Scope, scope_queryset
from fedplatform.errors import NotFound
from studies.models import Decision, Study, StudyParticipant


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


def participant_decided_by(*, participant: StudyParticipant, scope: Scope) -> str:
    """Who took a site's decision, as ``scope`` may see it; empty while pending.

    Coordinators administer the accounts and see the account itself (``user:alice``).
    Everyone else sees the role and the institution ("data owner of Hospital A"): a data
    owner never learns the user names of another institution's people.
    """
    if not participant.decided_by:
        return ""
    if scope.is_coordinator:
        return participant.decided_by
    return f"data owner of {participant.institution.name}"
