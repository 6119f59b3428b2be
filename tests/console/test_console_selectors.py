"""The selectors the console added to their owning apps."""

from __future__ import annotations

import pytest
from console_support import record_update

from accounts.models import Role
from accounts.selectors import Scope
from audit.selectors import audit_kind_list
from audit.services import audit_record
from fedplatform.errors import NotFound
from institutions.models import Institution
from institutions.selectors import enrollment_token_get
from institutions.services import enrollment_token_create
from studies.models import Study
from studies.selectors import study_awaiting_decision_list
from studies.services import study_decide
from training.models import Job
from training.selectors import update_list

pytestmark = pytest.mark.django_db

COORDINATOR = Scope(role=Role.COORDINATOR)


def _owner(institution: Institution) -> Scope:
    return Scope(role=Role.DATA_OWNER, institution_id=institution.pk)


def test_update_list_is_ordered_and_scoped(
    running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    round_ = running_job.rounds.get(number=1)
    record_update(round_, hospital_b, {"local_accuracy": 0.5})
    record_update(round_, hospital_a, {"local_accuracy": 0.9})
    every = update_list(scope=COORDINATOR, job=running_job)
    assert [(u.round.number, u.institution.name) for u in every] == [(1, "Hospital A"), (1, "Hospital B")]
    own = update_list(scope=_owner(hospital_a), job=running_job)
    assert [u.metrics for u in own] == [{"local_accuracy": 0.9}]


def test_studies_awaiting_a_decision(
    study_ab: Study, hospital_a: Institution, hospital_b: Institution
) -> None:
    assert list(study_awaiting_decision_list(scope=COORDINATOR)) == [study_ab]
    study_decide(study=study_ab, institution=hospital_a, approve=True, actor="user:alice")
    assert list(study_awaiting_decision_list(scope=_owner(hospital_a))) == []
    assert list(study_awaiting_decision_list(scope=_owner(hospital_b))) == [study_ab]
    assert list(study_awaiting_decision_list(scope=COORDINATOR)) == [study_ab]
    study_decide(study=study_ab, institution=hospital_b, approve=False, actor="user:bob")
    assert list(study_awaiting_decision_list(scope=COORDINATOR)) == []


def test_audit_kinds_are_distinct_sorted_and_scoped(hospital_a: Institution, hospital_b: Institution) -> None:
    audit_record(actor="x", kind="zeta", institution=hospital_b)
    audit_record(actor="x", kind="alpha", institution=hospital_a)
    audit_record(actor="x", kind="alpha", institution=hospital_a)
    assert audit_kind_list(scope=COORDINATOR) == ["alpha", "institution.created", "zeta"]
    assert audit_kind_list(scope=_owner(hospital_a)) == ["alpha", "institution.created"]


def test_enrollment_token_get(hospital_a: Institution, hospital_b: Institution) -> None:
    issued = enrollment_token_create(institution=hospital_a, actor="user:carol")
    assert enrollment_token_get(institution=hospital_a, token_id=issued.record.pk) == issued.record
    with pytest.raises(NotFound):
        enrollment_token_get(institution=hospital_b, token_id=issued.record.pk)
