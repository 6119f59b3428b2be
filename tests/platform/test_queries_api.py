"""Federated queries through the coordinator and agent APIs: asked by a coordinator, approved
by each data owner, answered by each site's agent (in the clear or under a secure sum),
combined and read; declines, refusals, bad answers, privacy spends and who reads what."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from platform_world import Site
from rest_framework.test import APIClient
from world import job_make, job_run, study_approve_all

from accounts.models import Role
from agentapi.selectors import query_task_for
from federation.analytics.queries import (
    SiteTable,
    answer_vector,
    combine_answers,
    evaluation_answer,
    evaluation_site_metrics,
    parse_answer,
    parse_query,
    site_answer,
)
from federation.data import DataSchema
from federation.privacy import secagg
from federation.privacy.secure_sum import masked_input, to_text
from institutions.models import AgentCredential
from queries.models import QuerySpend
from studies.models import Study, StudyParticipant

pytestmark = [pytest.mark.django_db, pytest.mark.analytics]

SCHEMA = {
    "features": [
        {"name": "age", "kind": "numeric"},
        {"name": "ward", "kind": "categorical", "categories": ["icu", "onco"]},
    ],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
}
MODEL = {"kind": "logistic", "task": "binary", "num_features": 3, "num_classes": 2}
RNG = np.random.default_rng(7)
FRAMES = {
    name: pd.DataFrame(
        {
            "age": RNG.normal(60, 10, rows).round(),
            "ward": RNG.choice(["icu", "onco"], rows),
            "outcome": RNG.choice(["no", "yes"], rows),
        }
    )
    for name, rows in (("Hospital A", 40), ("Hospital B", 55), ("Hospital C", 35))
}


def table(name: str) -> SiteTable:
    frame = FRAMES[name]
    return SiteTable(
        numeric={"age": frame["age"].to_numpy(float)},
        categorical={"ward": list(frame["ward"]), "outcome": list(frame["outcome"])},
    )


@pytest.fixture
def sites(agent_world: None) -> dict[str, Site]:
    return {name: Site(name) for name in FRAMES}


@pytest.fixture
def study(coordinator_client: APIClient, sites: dict[str, Site]) -> Study:
    body = {
        "name": "Wards",
        "model": MODEL,
        "data_schema": SCHEMA,
        "strategy": "fedavg",
        "feature_scaling": "none",
        "institutions": [site.institution.pk for site in sites.values()],
    }
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 201, response.content
    created = Study.objects.get(pk=response.json()["id"])
    study_approve_all(created)
    return created


@pytest.fixture
def owners(make_api_client, sites: dict[str, Site]) -> dict[str, APIClient]:  # type: ignore[no-untyped-def]
    return {
        name: make_api_client(f"owner{i}", Role.DATA_OWNER, site.institution)
        for i, (name, site) in enumerate(sites.items())
    }


def ask(client: APIClient, study: Study, query: dict[str, object], **extra: object) -> dict:
    response = client.post(f"/api/v1/studies/{study.pk}/queries/", {"query": query, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def decide(owner: APIClient, site: Site, study: Study, query_id: int, decision: str = "approve"):  # type: ignore[no-untyped-def]
    body = {"institution": site.institution.pk, "decision": decision}
    return owner.post(f"/api/v1/studies/{study.pk}/queries/{query_id}/decision/", body, format="json")


def approve_all(owners: dict[str, APIClient], sites: dict[str, Site], study: Study, query_id: int) -> None:
    for name, owner in owners.items():
        assert decide(owner, sites[name], study, query_id).status_code == 200


def test_a_query_is_answered_only_after_its_data_owner_approves_and_combines_to_the_pool(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    spec = {"kind": "cross_table", "rows": "ward", "by": "outcome"}
    query = ask(coordinator_client, study, spec)
    assert [s["answer"] for s in query["sites"]] == ["awaiting approval"] * 3
    assert sites["Hospital A"].work() is None  # nothing to answer before its data owner approves

    approve_all(owners, sites, study, query["id"])
    parsed = parse_query(spec, DataSchema.from_json(SCHEMA))
    for name, site in sites.items():
        task = site.work()
        assert task is not None
        assert task["kind"] == "query", task
        assert task["query"] == query["query"]
        answer = site_answer(parsed, table(name), min_count=1)
        response = site.client.post(
            f"/api/agent/v1/queries/{task['query_id']}", {"answer": answer}, format="json"
        )
        assert response.status_code == 200, response.content
        assert site.work() is None

    done = coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()
    assert done["state"] == "complete"
    pooled = pd.concat(FRAMES.values())
    expected = pd.crosstab(pooled["ward"], pooled["outcome"]).reindex(
        index=["icu", "onco"], columns=["no", "yes"]
    )
    assert done["result"]["combined"]["counts"] == expected.to_numpy().tolist()
    assert set(done["result"]["sites"]) == set(FRAMES)

    # A data owner reads the combined result and only its own site's part.
    own = owners["Hospital A"].get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()
    assert set(own["result"]["sites"]) == {"Hospital A"}
    assert own["result"]["combined"] == done["result"]["combined"]


def test_a_decline_fails_the_query_and_no_agent_is_asked(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    query = ask(coordinator_client, study, {"kind": "columns"})
    assert decide(owners["Hospital B"], sites["Hospital B"], study, query["id"], "decline").status_code == 200
    state = coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()
    assert state["state"] == "failed"
    assert state["reason"] == "declined by the data owner of Hospital B"
    assert decide(owners["Hospital A"], sites["Hospital A"], study, query["id"]).status_code == 409
    assert sites["Hospital A"].work() is None


def test_a_refusal_names_the_site_and_its_reason(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    query = ask(coordinator_client, study, {"kind": "histogram", "column": "age", "edges": [0, 50, 100]})
    approve_all(owners, sites, study, query["id"])
    reason = "this site's policy demands secure aggregation for its answers"
    task = sites["Hospital A"].work()
    assert task is not None
    sites["Hospital A"].client.post(
        f"/api/agent/v1/queries/{task['query_id']}", {"refused": reason}, format="json"
    )
    state = coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()
    assert state["state"] == "failed"
    assert state["reason"] == f"refused by Hospital A: {reason}"
    # Hospital B's data owner sees that it failed, not Hospital A's reason.
    other = owners["Hospital B"].get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()
    assert reason not in str(other)


@pytest.mark.parametrize(
    "answer",
    [
        {"counts": [1, 2, 3], "suppressed": [False, False, False]},
        {"counts": [1, -2], "suppressed": [False, False]},
        {"counts": [4, 2], "suppressed": [True, False]},
    ],
)
def test_an_answer_that_does_not_fit_the_query_is_refused(
    coordinator_client: APIClient,
    sites: dict[str, Site],
    owners: dict[str, APIClient],
    study: Study,
    answer: dict[str, object],
) -> None:
    query = ask(coordinator_client, study, {"kind": "histogram", "column": "age", "edges": [0, 50, 100]})
    approve_all(owners, sites, study, query["id"])
    response = sites["Hospital A"].client.post(
        f"/api/agent/v1/queries/{query['id']}", {"answer": answer}, format="json"
    )
    assert response.status_code == 400, response.content
    assert sites["Hospital A"].work() is not None  # still owed


def test_a_secure_query_shows_the_server_only_the_total_with_its_small_cells_suppressed(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    spec = {"kind": "histogram", "column": "age", "edges": [0, 40, 60, 200]}
    query = ask(coordinator_client, study, spec, secure_aggregation=True)
    assert query["secure_aggregation"] is True
    approve_all(owners, sites, study, query["id"])
    keys = {name: secagg.private_key_bytes() for name in sites}
    for name, site in sites.items():
        task = site.work()
        assert task["secure_aggregation"] == {"phase": "keys"}
        public = base64.b64encode(secagg.public_key_bytes(keys[name])).decode()
        body = {"public_key": public, "min_count": 5 if name == "Hospital A" else 3}
        assert (
            site.client.post(f"/api/agent/v1/queries/{task['query_id']}", body, format="json").status_code
            == 200
        )
    parsed = parse_query(spec, DataSchema.from_json(SCHEMA))
    for name, site in sites.items():
        task = site.work()
        assert task["secure_aggregation"]["phase"] == "mask"
        roster = {int(k): base64.b64decode(v) for k, v in task["secure_aggregation"]["roster"].items()}
        vector = answer_vector(parsed, site_answer(parsed, table(name), min_count=1, secure=True))
        masked = masked_input(
            vector,
            site_id=site.institution.pk,
            private_key=keys[name],
            roster=roster,
            question=f"query-{query['id']}",
        )
        response = site.client.post(
            f"/api/agent/v1/queries/{task['query_id']}", {"masked": to_text(masked)}, format="json"
        )
        assert response.status_code == 200, response.content
    result = coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()["result"]
    assert result["sites"] == {}
    assert result["min_count"] == 5  # the largest of the sites' minimums
    pooled = np.histogram(pd.concat(FRAMES.values())["age"], bins=spec["edges"])[0]
    small = (pooled > 0) & (pooled < 5)
    assert result["combined"]["counts"] == np.where(small, 0, pooled).tolist()
    assert result["combined"]["suppressed"] == small.tolist()


def test_a_noised_query_is_charged_to_every_answering_sites_ledger(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    spec = {"kind": "histogram", "column": "age", "edges": [0, 60, 200], "epsilon": 0.5}
    query = ask(coordinator_client, study, spec)
    approve_all(owners, sites, study, query["id"])
    parsed = parse_query(spec, DataSchema.from_json(SCHEMA))
    for name, site in sites.items():
        answer = site_answer(parsed, table(name), min_count=1, rng=np.random.default_rng(0))
        site.client.post(f"/api/agent/v1/queries/{query['id']}", {"answer": answer}, format="json")
    assert QuerySpend.objects.filter(query_id=query["id"]).count() == 3
    institution = sites["Hospital A"].institution.pk
    ledger = coordinator_client.get(f"/api/v1/institutions/{institution}/privacy-ledger/").json()
    assert ledger["total_epsilon"] == pytest.approx(0.5)
    assert [e["query"] for e in ledger["query_entries"]] == [query["id"]]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": {"kind": "histogram", "column": "ward", "edges": [0, 1]}}, "invalid"),
        (
            {
                "query": {"kind": "survival", "time": "age", "event": "outcome", "time_step": 30},
                "secure_aggregation": True,
            },
            "secure_unsupported",
        ),
        ({"query": {"kind": "evaluation", "versions": [999999]}}, "invalid"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(
    coordinator_client: APIClient, study: Study, body: dict[str, object], code: str
) -> None:
    response = coordinator_client.post(f"/api/v1/studies/{study.pk}/queries/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code


def test_only_coordinators_ask_and_only_the_sites_own_data_owner_decides(
    observer_client: APIClient,
    sites: dict[str, Site],
    owners: dict[str, APIClient],
    coordinator_client: APIClient,
    study: Study,
) -> None:
    refused = observer_client.post(
        f"/api/v1/studies/{study.pk}/queries/", {"query": {"kind": "columns"}}, format="json"
    )
    assert refused.status_code == 403
    query = ask(coordinator_client, study, {"kind": "columns"})
    wrong = decide(owners["Hospital A"], sites["Hospital B"], study, query["id"])
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "not_your_institution"


def test_a_secure_sum_of_two_sites_is_refused_since_each_could_subtract_its_own(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    StudyParticipant.objects.filter(study=study, institution=sites["Hospital C"].institution).update(
        decision="declined"
    )
    response = coordinator_client.post(
        f"/api/v1/studies/{study.pk}/queries/",
        {"query": {"kind": "columns"}, "secure_aggregation": True},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_few_sites"


def test_a_noised_answer_is_charged_even_if_the_query_then_fails(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    spec = {"kind": "histogram", "column": "age", "edges": [0, 60, 200], "epsilon": 0.25}
    query = ask(coordinator_client, study, spec)
    approve_all(owners, sites, study, query["id"])
    parsed = parse_query(spec, DataSchema.from_json(SCHEMA))
    answer = site_answer(parsed, table("Hospital A"), min_count=1, rng=np.random.default_rng(0))
    sites["Hospital A"].client.post(f"/api/agent/v1/queries/{query['id']}", {"answer": answer}, format="json")
    sites["Hospital B"].client.post(
        f"/api/agent/v1/queries/{query['id']}", {"refused": "policy"}, format="json"
    )
    assert (
        coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()["state"]
        == "failed"
    )
    charged = QuerySpend.objects.filter(query_id=query["id"])
    assert [(s.institution_id, s.epsilon) for s in charged] == [(sites["Hospital A"].institution.pk, 0.25)]


def test_a_query_reads_the_schema_it_was_asked_under(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    query = ask(coordinator_client, study, {"kind": "cross_table", "rows": "ward", "by": "outcome"})
    widened = {
        **SCHEMA,
        "features": [
            SCHEMA["features"][0],
            {**SCHEMA["features"][1], "categories": ["icu", "onco", "neuro"]},
        ],
    }
    Study.objects.filter(pk=study.pk).update(data_schema=widened)  # as a later data agreement would
    approve_all(owners, sites, study, query["id"])
    task = sites["Hospital A"].work()
    assert task["study"]["data_schema"] == SCHEMA
    parsed = parse_query(task["query"], DataSchema.from_json(task["study"]["data_schema"]))
    answer = site_answer(parsed, table("Hospital A"), min_count=1)
    response = sites["Hospital A"].client.post(
        f"/api/agent/v1/queries/{query['id']}", {"answer": answer}, format="json"
    )
    assert response.status_code == 200, response.content


def test_a_secure_query_too_large_for_one_body_is_refused_before_anyone_is_asked(
    coordinator_client: APIClient,
    study: Study,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5_000  # 200 bins: 800 lanes, 8.6 kB masked
    spec = {"kind": "histogram", "column": "age", "edges": list(range(201))}
    response = coordinator_client.post(
        f"/api/v1/studies/{study.pk}/queries/", {"query": spec, "secure_aggregation": True}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_large"


def test_an_evaluation_is_summed_securely_by_default_with_each_sites_own_figures_beside(
    coordinator_client: APIClient, sites: dict[str, Site], owners: dict[str, APIClient], study: Study
) -> None:
    version = job_run(job_make(study, num_rounds=1, min_updates=3)).model_versions.get(number=0)
    query = ask(coordinator_client, study, {"kind": "evaluation", "versions": [version.pk]})
    assert query["secure_aggregation"] is True  # three sites: the score histograms stay hidden
    approve_all(owners, sites, study, query["id"])
    parsed = parse_query(query["query"], DataSchema.from_json(SCHEMA))
    rng = np.random.default_rng(3)
    answers = {}
    for name in sites:
        labels = rng.integers(0, 2, 20)
        answers[name] = evaluation_answer(
            parsed, [(labels, np.clip(labels * 0.4 + rng.random(20) * 0.6, 0, 1))], min_count=5
        )
    keys = {name: secagg.private_key_bytes() for name in sites}
    for name, site in sites.items():
        public = base64.b64encode(secagg.public_key_bytes(keys[name])).decode()
        site.client.post(
            f"/api/agent/v1/queries/{query['id']}", {"public_key": public, "min_count": 5}, format="json"
        )
    for name, site in sites.items():
        assert site.work()["kind"] == "train"  # the job's open round comes before any query
        task = query_task_for(credential=AgentCredential.objects.get(pk=site.credential_id))
        assert task is not None
        assert task["evaluation"]["versions"][0]["sha256"] == version.sha256
        roster = {int(k): base64.b64decode(v) for k, v in task["secure_aggregation"]["roster"].items()}
        masked = masked_input(
            answer_vector(parsed, answers[name]),
            site_id=site.institution.pk,
            private_key=keys[name],
            roster=roster,
            question=f"query-{query['id']}",
        )
        without = site.client.post(
            f"/api/agent/v1/queries/{query['id']}", {"masked": to_text(masked)}, format="json"
        )
        assert without.status_code == 400  # an evaluation's masked counts come with the site's figures
        body = {"masked": to_text(masked), "metrics": evaluation_site_metrics(parsed, answers[name])}
        assert (
            site.client.post(f"/api/agent/v1/queries/{query['id']}", body, format="json").status_code == 200
        )
    result = coordinator_client.get(f"/api/v1/studies/{study.pk}/queries/{query['id']}/").json()["result"]
    clear = combine_answers(parsed, {name: parse_answer(parsed, a) for name, a in answers.items()})
    secure_part, clear_part = result["versions"][str(version.pk)], clear["versions"][str(version.pk)]
    assert secure_part["combined"]["accuracy"] == pytest.approx(clear_part["combined"]["accuracy"], abs=1e-12)
    assert secure_part["combined"]["roc_auc"] == pytest.approx(clear_part["combined"]["roc_auc"], abs=1e-9)
    for name in sites:
        assert secure_part["sites"][name]["accuracy"] == pytest.approx(clear_part["sites"][name]["accuracy"])
        assert "confusion" not in secure_part["sites"][name]  # scalars only
    assert secure_part["example_weighted"]["accuracy"] == pytest.approx(
        clear_part["example_weighted"]["accuracy"]
    )
