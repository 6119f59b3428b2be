"""The study page's data agreement: one button asks the agents, the page shows who answered,
who refused and why, and the agreed result; given and explicitly absent scaling say so."""

from __future__ import annotations

import html

import pytest
from django.test import Client
from world import agent_make, study_approve_all, study_make

from federation.data import DataSchema
from federation.data.agreement import summarise
from institutions.models import Institution
from studies.agreement import summary_answer_record, summary_task_for
from studies.models import Study, SummaryRequest

pytestmark = pytest.mark.django_db


@pytest.fixture
def agents_study(hospital_a: Institution, hospital_b: Institution) -> Study:
    study = study_make("Agreed", [hospital_a, hospital_b])
    Study.objects.filter(pk=study.pk).update(scaling_mode="agents")
    study.refresh_from_db()
    return study


def page(client: Client, study: Study) -> str:
    response = client.get(f"/studies/{study.pk}/")
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def test_the_button_waits_for_every_approval(coordinator: Client, agents_study: Study) -> None:
    shown = page(coordinator, agents_study)
    assert 'data-testid="agree-scaling" disabled' in shown
    assert "Every site must approve the study first." in shown
    response = coordinator.post(f"/studies/{agents_study.pk}/scaling/", follow=True)
    assert "not yet approved: Hospital A, Hospital B" in response.content.decode()
    assert not SummaryRequest.objects.exists()


def test_one_button_asks_the_agents_and_the_page_follows_their_answers(
    coordinator: Client,
    observer: Client,
    agents_study: Study,
    hospital_a: Institution,
    hospital_b: Institution,
) -> None:
    study_approve_all(agents_study)
    assert "Not agreed yet" in page(coordinator, agents_study)
    response = coordinator.post(f"/studies/{agents_study.pk}/scaling/")
    assert response.status_code == 302
    assert response["Location"] == f"/studies/{agents_study.pk}/#scaling"
    shown = page(coordinator, agents_study)
    assert shown.count('data-state="waiting"') == 2
    assert 'data-reload-after="3"' in shown  # follows the answers while the request is open
    assert 'data-testid="agree-scaling"' not in page(observer, agents_study)

    schema = DataSchema.from_json(agents_study.data_schema)
    for institution in (hospital_a, hospital_b):
        credential = agent_make(institution).credential
        task = summary_task_for(credential=credential)
        assert task is not None
        summary = summarise(schema, [[50.0, 25.0, 5.0], [70.0, 30.0, 6.0]]).to_json()
        summary_answer_record(credential=credential, request_id=task["request_id"], body={"summary": summary})
    shown = page(observer, agents_study)
    assert 'data-testid="agreement-state" data-state="complete"' in shown
    assert shown.count('data-state="answered"') == 2
    assert "Agreed: 3 features" in shown
    assert "data-reload-after" not in shown


def test_a_refusal_is_shown_with_the_site_and_its_reason(
    coordinator: Client, agents_study: Study, hospital_a: Institution
) -> None:
    study_approve_all(agents_study)
    coordinator.post(f"/studies/{agents_study.pk}/scaling/")
    credential = agent_make(hospital_a).credential
    task = summary_task_for(credential=credential)
    assert task is not None
    reason = "this site's policy demands secure aggregation for its summaries"
    summary_answer_record(credential=credential, request_id=task["request_id"], body={"refused": reason})
    shown = page(coordinator, agents_study)
    assert 'data-state="refused"' in shown
    assert reason in shown
    assert 'data-state="waiting"' in shown


@pytest.mark.parametrize(
    ("mode", "text"),
    [("none", "None: chosen when the study was set up"), ("given", "Given when the study was set up")],
)
def test_given_or_no_scaling_says_so(coordinator: Client, study_ab: Study, mode: str, text: str) -> None:
    scaling = {"mean": [0.0] * 3, "std": [1.0] * 3} if mode == "given" else None
    Study.objects.filter(pk=study_ab.pk).update(scaling_mode=mode, feature_scaling=scaling)
    shown = page(coordinator, study_ab)
    assert text in shown
    assert 'data-testid="agree-scaling"' not in shown


def test_the_agreement_can_be_asked_under_secure_aggregation(
    coordinator: Client, agents_study: Study
) -> None:
    study_approve_all(agents_study)
    assert 'data-testid="agree-securely">' in page(coordinator, agents_study)  # unchecked: no secure study
    coordinator.post(f"/studies/{agents_study.pk}/scaling/", {"secure_aggregation": "on"})
    request = SummaryRequest.objects.get()
    assert (request.secure_aggregation, request.phase) == (True, "keys")
    assert "under secure aggregation (step: each site's key)" in page(coordinator, agents_study)
