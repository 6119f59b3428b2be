"""The console's federated queries: a coordinator asks one with the form, each data owner
approves it on its page, and once the agents have answered the page shows the result as
tables (suppressed cells marked) with a chart; a data owner reads only its own site's part."""

from __future__ import annotations

import html

import numpy as np
import pytest
from django.test import Client
from world import agent_make, study_approve_all, study_make

from federation.analytics.queries import SiteTable, parse_query, site_answer
from federation.data import DataSchema
from institutions.models import AgentCredential, Institution
from queries.models import Query
from queries.services import query_answer_record
from studies.models import Study

pytestmark = [pytest.mark.django_db, pytest.mark.analytics]

AGES = {
    "Hospital A": [30.0, 35.0, 41.0, 44.0, 47.0, 49.0, 62.0],
    "Hospital B": [52.0, 55.0, 58.0, 61.0, 65.0, 66.0],
}


@pytest.fixture
def study(hospital_a: Institution, hospital_b: Institution) -> Study:
    created = study_make("Ages", [hospital_a, hospital_b])
    study_approve_all(created)
    return created


def text(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.status_code
    return html.unescape(response.content.decode())


def answer_as_agents(query: Query, institutions: dict[str, Institution]) -> None:
    parsed = parse_query(query.spec, DataSchema.from_json(query.study.data_schema))
    for name, institution in institutions.items():
        credential = AgentCredential.objects.get(pk=agent_make(institution).credential.pk)
        ages = np.asarray(AGES[name])
        table = SiteTable(numeric={"age": ages, "bmi": ages / 2, "glucose": ages * 2})
        body = {"answer": site_answer(parsed, table, min_count=3)}
        query_answer_record(credential=credential, query_id=query.pk, body=body)


def test_ask_approve_answer_and_read_a_histogram(
    coordinator: Client,
    owner_a: Client,
    owner_b: Client,
    study: Study,
    hospital_a: Institution,
    hospital_b: Institution,
) -> None:
    form = text(coordinator.get(f"/studies/{study.pk}/queries/"))
    assert 'data-testid="query-form"' in form
    assert 'data-testid="query-form"' not in text(owner_a.get(f"/studies/{study.pk}/queries/"))

    response = coordinator.post(
        f"/studies/{study.pk}/queries/", {"kind": "histogram", "column": "age", "edges": "20:80:20"}
    )
    assert response.status_code == 302
    query = Query.objects.get()
    assert query.spec["edges"] == [20.0, 40.0, 60.0, 80.0]
    assert response["Location"] == f"/studies/{study.pk}/queries/{query.pk}/"

    assert "1 awaiting your decision" in text(owner_a.get(f"/studies/{study.pk}/"))
    for owner in (owner_a, owner_b):
        page = text(owner.get(f"/studies/{study.pk}/queries/{query.pk}/"))
        assert 'data-testid="approve-query"' in page
        decided = owner.post(f"/studies/{study.pk}/queries/{query.pk}/decision/", {"decision": "approve"})
        assert decided.status_code == 302
    answer_as_agents(query, {"Hospital A": hospital_a, "Hospital B": hospital_b})

    page = text(coordinator.get(f"/studies/{study.pk}/queries/{query.pk}/"))
    assert 'data-state="complete"' in page
    assert 'data-testid="query-chart"' in page
    # Hospital A holds 2 ages in [20, 40): below its minimum of 3, suppressed there.
    assert "[20, 40)" in page
    assert "suppressed" in page
    assert "≥ 0" in page  # the combined cell is a lower bound
    assert "[40, 60)" in page
    own = text(owner_b.get(f"/studies/{study.pk}/queries/{query.pk}/"))
    assert "Hospital B" in own
    assert own.count('data-testid="result-table"') == 1
    assert '<th scope="col">Hospital A</th>' not in own  # the other site's column is left out


def test_a_bad_query_shows_the_reason_on_the_form(coordinator: Client, study: Study) -> None:
    response = coordinator.post(
        f"/studies/{study.pk}/queries/", {"kind": "histogram", "column": "age", "edges": "5"}
    )
    assert response.status_code == 200
    assert "edges must be 2 to" in text(response)
    assert not Query.objects.exists()


def test_a_survival_query_draws_its_curves(coordinator: Client, study: Study) -> None:
    response = coordinator.post(
        f"/studies/{study.pk}/queries/",
        {"kind": "survival", "time": "age", "event": "outcome", "time_step": "5"},
    )
    assert response.status_code == 302
    page = text(coordinator.get(response["Location"]))
    assert "survival: age until outcome" in page
    assert 'data-state="open"' in page


def test_a_survival_result_shows_its_curve_table_and_merged_steps(
    coordinator: Client,
    owner_a: Client,
    owner_b: Client,
    study: Study,
    hospital_a: Institution,
    hospital_b: Institution,
) -> None:
    spec = {"kind": "survival", "time": "age", "event": "outcome", "time_step": 10}
    response = coordinator.post(f"/studies/{study.pk}/queries/", {**spec, "time_step": "10"})
    assert response.status_code == 302
    query = Query.objects.get()
    for owner in (owner_a, owner_b):
        owner.post(f"/studies/{study.pk}/queries/{query.pk}/decision/", {"decision": "approve"})
    parsed = parse_query(query.spec, DataSchema.from_json(query.data_schema))
    rng = np.random.default_rng(1)
    for institution in (hospital_a, hospital_b):
        credential = AgentCredential.objects.get(pk=agent_make(institution).credential.pk)
        ages = rng.integers(20, 90, 40).astype(float)
        outcomes = list(rng.choice(["no", "yes"], 40))
        table = SiteTable(
            numeric={"age": ages, "bmi": ages, "glucose": ages}, categorical={"outcome": outcomes}
        )
        body = {"answer": site_answer(parsed, table, min_count=5)}
        query_answer_record(credential=credential, query_id=query.pk, body=body)
    page = text(coordinator.get(f"/studies/{study.pk}/queries/{query.pk}/"))
    assert 'data-state="complete"' in page
    assert 'data-testid="query-chart"' in page
    assert "Combined Kaplan–Meier estimate" in page
    assert "Log-rank test between sites" in page
    assert '<th scope="col">Merged</th>' in page
