"""The audit log page: filters, paging, newest first, and a data owner's scope."""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import pairwise

import pytest
from django.test import Client

from audit.models import AuditEvent
from audit.services import audit_record
from institutions.models import Institution
from training.models import Job

pytestmark = pytest.mark.django_db


def _kinds(html: str) -> list[str]:
    return re.findall(r'data-testid="audit-row" data-kind="([^"]+)"', html)


def test_newest_first_with_every_filter_offered(
    observer: Client, draft_job: Job, hospital_a: Institution
) -> None:
    html = observer.get("/audit/").content.decode()
    kinds = _kinds(html)
    assert kinds[0] == "job.created"
    assert kinds.index("job.created") < kinds.index("study.created") < kinds.index("institution.created")
    assert len(kinds) == AuditEvent.objects.count()
    assert f'<option value="{hospital_a.pk}">Hospital A</option>' in html
    assert f'<option value="{draft_job.pk}">Job {draft_job.pk} · Study AB</option>' in html
    assert '<option value="study.created">study.created</option>' in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kind=study.created", ["study.created"]),
        ("actor=user:setup&kind=institution.created", ["institution.created", "institution.created"]),
        ("actor=user:nobody", []),
        ("actor=setup&kind=institution.created", ["institution.created", "institution.created"]),
    ],
)
def test_filters(observer: Client, draft_job: Job, query: str, expected: list[str]) -> None:
    html = observer.get(f"/audit/?{query}").content.decode()
    assert _kinds(html) == expected
    assert ">Clear</a>" in html


def test_filter_by_institution_and_job(observer: Client, draft_job: Job, hospital_b: Institution) -> None:
    audit_record(actor="user:x", kind="note.one", institution=hospital_b)
    audit_record(actor="user:x", kind="note.two", job=draft_job)
    by_institution = _kinds(observer.get(f"/audit/?institution={hospital_b.pk}").content.decode())
    assert by_institution == ["note.one", "institution.created"]
    assert _kinds(observer.get(f"/audit/?job={draft_job.pk}").content.decode()) == ["note.two", "job.created"]


def test_an_unknown_filter_value_is_reported_not_applied(observer: Client, draft_job: Job) -> None:
    html = observer.get("/audit/?institution=9999").content.decode()
    assert 'data-testid="error-institution"' in html
    assert len(_kinds(html)) == AuditEvent.objects.count()


def test_fifty_events_a_page(observer: Client, db: None) -> None:
    for number in range(60):
        audit_record(actor="system", kind="note", details={"number": number})
    first = observer.get("/audit/?kind=note").content.decode()
    assert len(_kinds(first)) == 50
    assert "number</span> 59<" in first  # newest first
    assert 'data-testid="next-page"' in first
    second = observer.get("/audit/?kind=note&page=2").content.decode()
    assert len(_kinds(second)) == 10
    assert "number</span> 0<" in second
    assert 'href="?kind=note&amp;page=1"' in second


def test_data_owner_sees_only_their_institutions_events(
    owner_a: Client, hospital_a: Institution, hospital_b: Institution
) -> None:
    audit_record(actor="user:x", kind="note.a", institution=hospital_a)
    audit_record(actor="user:x", kind="note.b", institution=hospital_b)
    html = owner_a.get("/audit/").content.decode()
    kinds = _kinds(html)
    assert "note.a" in kinds
    assert "note.b" not in kinds
    assert "Hospital B" not in html
    assert _kinds(owner_a.get(f"/audit/?institution={hospital_b.pk}").content.decode()) == kinds


def test_long_digests_are_shortened(observer: Client, db: None) -> None:
    digest = "ab" * 32
    audit_record(actor="system", kind="note", details={"sha256": digest})
    html = observer.get("/audit/").content.decode()
    assert f"{digest[:12]}…" in html
    assert f'title="{digest}"' in html


def _csv(response: object) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(body)))


def test_the_filtered_log_exports_as_csv_with_its_hash_chain(observer: Client, draft_job: Job) -> None:
    html = observer.get("/audit/?kind=institution.created").content.decode()
    assert 'href="/audit/export.csv?kind=institution.created"' in html
    response = observer.get("/audit/export.csv?kind=institution.created")
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = _csv(response)
    assert [row["kind"] for row in rows] == ["institution.created", "institution.created"]
    assert [row["institution"] for row in rows] == ["Hospital A", "Hospital B"]  # oldest first
    everything = _csv(observer.get("/audit/export.csv"))
    assert len(everything) == AuditEvent.objects.count()
    for previous, row in pairwise(everything):
        assert row["previous_hash"] == previous["hash"]  # the chain, checkable offline
    stored = AuditEvent.objects.get(sequence=int(everything[-1]["sequence"]))
    assert json.loads(everything[-1]["details"]) == stored.details


def test_a_data_owner_exports_only_their_institutions_events(
    owner_a: Client, hospital_a: Institution, hospital_b: Institution
) -> None:
    audit_record(actor="user:x", kind="note.a", institution=hospital_a)
    audit_record(actor="user:x", kind="note.b", institution=hospital_b)
    kinds = [row["kind"] for row in _csv(owner_a.get("/audit/export.csv"))]
    assert "note.a" in kinds
    assert "note.b" not in kinds
