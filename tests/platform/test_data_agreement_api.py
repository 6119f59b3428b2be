"""The data agreement through the agent API: one coordinator call, each approved site's
summary, the union of categories and the pooled scaling stored on the study."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from platform_world import Site
from rest_framework.test import APIClient
from world import study_approve_all

from accounts.models import Role
from federation.data import DataSchema
from federation.data.agreement import summarise, summary_vector, widened_schema
from federation.privacy import secagg
from federation.privacy.secure_sum import masked_input, to_text
from studies.models import ScalingMode, Study, SummaryAnswer
from studies.services import study_decide

pytestmark = pytest.mark.django_db

SCHEMA = {
    "features": [
        {"name": "age", "kind": "numeric"},
        {"name": "ward", "kind": "categorical", "categories": ["icu"]},
    ],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
}
MODEL = {"kind": "logistic", "task": "binary", "num_features": 2, "num_classes": 2}
#: Each site's rows: (age, ward). Hospital A holds no neurology ward, B no oncology.
ROWS = {
    "Hospital A": [(40.0, "icu"), (55.0, "onco"), (61.0, "onco"), (70.0, "icu")],
    "Hospital B": [(30.0, "neuro"), (80.0, "icu"), (45.0, "neuro")],
}


def encoded(rows: list[tuple[float, str]], categories: tuple[str, ...]) -> np.ndarray:
    return np.array([[age, *(1.0 if ward == c else 0.0 for c in categories)] for age, ward in rows])


def summary_body(name: str) -> dict[str, object]:
    """What the agent of ``name`` sends: its rows summarised with the categories it holds."""
    schema = widened_schema(DataSchema.from_json(SCHEMA), {"ward": {ward for _, ward in ROWS[name]}})
    categories = schema.features[1].categories
    return {"summary": summarise(schema, encoded(ROWS[name], categories)).to_json()}


@pytest.fixture
def sites(agent_world: None) -> dict[str, Site]:
    return {name: Site(name) for name in ROWS}


@pytest.fixture
def study(coordinator_client: APIClient, sites: dict[str, Site]) -> Study:
    body = {
        "name": "Wards",
        "model": MODEL,
        "data_schema": SCHEMA,
        "strategy": "fedavg",
        "institutions": [site.institution.pk for site in sites.values()],
    }
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["scaling_mode"] == "agents"  # left out: agreed through the agents
    created = Study.objects.get(pk=response.json()["id"])
    study_approve_all(created)
    return created


def answer(site: Site, body: dict[str, object]):  # type: ignore[no-untyped-def]
    task = site.work()
    assert task is not None
    assert task["kind"] == "summarise", task
    return site.client.post(f"/api/agent/v1/summaries/{task['request_id']}", body, format="json")


def test_one_call_agrees_the_categories_and_the_pooled_scaling(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    job = {"study": study.pk, "num_rounds": 1, "min_updates": 2}
    refused = coordinator_client.post("/api/v1/jobs/", job, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "scaling_not_agreed"

    opened = coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/")
    assert opened.status_code == 201, opened.content
    assert [s["answer"] for s in opened.json()["request"]["sites"]] == ["waiting", "waiting"]
    task = sites["Hospital A"].work()
    assert task is not None
    assert task["study"] == {"id": study.pk, "name": "Wards", "data_schema": study.data_schema}
    for name, site in sites.items():
        response = answer(site, summary_body(name))
        assert response.status_code == 200, response.content
        assert site.work() is None  # answered: nothing more to do

    state = coordinator_client.get(f"/api/v1/studies/{study.pk}/summaries/").json()
    assert state["request"]["state"] == "complete"
    assert state["scaling_mode"] == "agents"
    study.refresh_from_db()
    categories = ("icu", "neuro", "onco")  # declared first, then the sites' values sorted
    assert study.data_schema["features"][1]["categories"] == list(categories)
    assert study.model_config["num_features"] == 4
    pooled = encoded(ROWS["Hospital A"] + ROWS["Hospital B"], categories)
    np.testing.assert_allclose(study.feature_scaling["mean"], pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(study.feature_scaling["std"], pooled.std(axis=0), rtol=1e-9)

    assert coordinator_client.post("/api/v1/jobs/", job, format="json").status_code == 201
    again = coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "study_has_jobs"


def test_a_refusal_fails_the_request_naming_the_site_and_its_reason(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/")
    assert answer(sites["Hospital A"], summary_body("Hospital A")).status_code == 200
    reason = "this site holds fewer rows than its policy's minimum for summaries"
    assert answer(sites["Hospital B"], {"refused": reason}).status_code == 200

    request = coordinator_client.get(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]
    assert request["state"] == "failed"
    assert request["reason"] == f"refused by Hospital B: {reason}"
    assert [s["answer"] for s in request["sites"]] == ["answered", "refused"]
    study.refresh_from_db()
    assert study.feature_scaling is None
    assert study.scaling_mode == ScalingMode.AGENTS


def test_a_malformed_or_repeated_answer_is_refused(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    request_id = coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]["id"]
    site = sites["Hospital A"]
    url = f"/api/agent/v1/summaries/{request_id}"
    wrong = {"summary": {"count": 4, "numeric": {}, "categories": {"ward": {"icu": 4}}}}
    response = site.client.post(url, wrong, format="json")
    assert response.status_code == 400
    assert "missing ['age']" in response.json()["error"]["message"]
    assert site.client.post(url, {}, format="json").status_code == 400
    assert site.client.post(url, summary_body("Hospital A"), format="json").status_code == 200
    repeated = site.client.post(url, summary_body("Hospital A"), format="json")
    assert repeated.status_code == 409


def test_only_an_approved_site_of_the_study_is_asked_or_heard(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    outsider = Site("Hospital C")
    request_id = coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]["id"]
    assert outsider.work() is None
    response = outsider.client.post(
        f"/api/agent/v1/summaries/{request_id}", summary_body("Hospital A"), format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_open"


def test_the_request_needs_every_approval_and_a_tabular_study(
    coordinator_client: APIClient, observer_client: APIClient, sites: dict[str, Site]
) -> None:
    body = {
        "name": "Pending",
        "model": MODEL,
        "data_schema": SCHEMA,
        "strategy": "fedavg",
        "institutions": [site.institution.pk for site in sites.values()],
    }
    study_id = coordinator_client.post("/api/v1/studies/", body, format="json").json()["id"]
    pending = coordinator_client.post(f"/api/v1/studies/{study_id}/summaries/")
    assert pending.status_code == 409
    assert "not yet approved: Hospital A, Hospital B" in pending.json()["error"]["message"]
    assert observer_client.post(f"/api/v1/studies/{study_id}/summaries/").status_code == 403


@pytest.mark.parametrize(
    ("scaling", "mode"),
    [("none", "none"), (None, "none"), ({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "given")],
)
def test_no_scaling_or_a_given_one_is_an_explicit_choice(
    coordinator_client: APIClient, sites: dict[str, Site], scaling: object, mode: str
) -> None:
    body = {
        "name": f"Explicit {mode} {scaling is None}",
        "model": MODEL,
        "data_schema": SCHEMA,
        "strategy": "fedavg",
        "feature_scaling": scaling,
        "institutions": [site.institution.pk for site in sites.values()],
    }
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["scaling_mode"] == mode
    study_approve_all(Study.objects.get(pk=response.json()["id"]))
    job = {"study": response.json()["id"], "num_rounds": 1, "min_updates": 2}
    assert coordinator_client.post("/api/v1/jobs/", job, format="json").status_code == 201


def test_an_unknown_scaling_word_is_refused(coordinator_client: APIClient, sites: dict[str, Site]) -> None:
    body = {
        "name": "Typo",
        "model": MODEL,
        "data_schema": SCHEMA,
        "strategy": "fedavg",
        "feature_scaling": "agent",
        "institutions": [site.institution.pk for site in sites.values()],
    }
    response = coordinator_client.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 400
    assert '"agents" or "none"' in str(response.json())


SECURE_SCHEMA = {
    **SCHEMA,
    "features": [
        SCHEMA["features"][0],
        {"name": "ward", "kind": "categorical", "categories": ["icu", "neuro", "onco"]},
    ],  # type: ignore[index]
}


def test_under_secure_aggregation_the_server_sees_only_the_total(
    coordinator_client: APIClient, sites: dict[str, Site]
) -> None:
    body = {
        "name": "Wards, summed securely",
        "model": {"kind": "logistic"},
        "data_schema": SECURE_SCHEMA,
        "strategy": "fedavg",
        "institutions": [site.institution.pk for site in sites.values()],
    }
    study = Study.objects.get(
        pk=coordinator_client.post("/api/v1/studies/", body, format="json").json()["id"]
    )
    study_approve_all(study)
    opened = coordinator_client.post(
        f"/api/v1/studies/{study.pk}/summaries/", {"secure_aggregation": True}, format="json"
    )
    assert opened.json()["request"]["secure_aggregation"] is True
    private_keys = {}
    for name, site in sites.items():
        task = site.work()
        assert task is not None
        assert task["secure_aggregation"]["phase"] == "keys"
        wrong = site.client.post(
            f"/api/agent/v1/summaries/{task['request_id']}", summary_body(name), format="json"
        )
        assert wrong.json()["error"]["code"] == "wrong_phase"  # a clear summary is refused here
        private_keys[name] = secagg.private_key_bytes()
        key = base64.b64encode(secagg.public_key_bytes(private_keys[name])).decode()
        response = site.client.post(
            f"/api/agent/v1/summaries/{task['request_id']}", {"public_key": key}, format="json"
        )
        assert response.status_code == 200, response.content
    schema = DataSchema.from_json(SECURE_SCHEMA)
    for name, site in sites.items():
        task = site.work()
        assert task is not None
        assert task["secure_aggregation"]["phase"] == "mask"
        roster = {int(i): base64.b64decode(k) for i, k in task["secure_aggregation"]["roster"].items()}
        summary = summarise(schema, encoded(ROWS[name], ("icu", "neuro", "onco")))
        masked = masked_input(
            summary_vector(summary, schema),
            site_id=site.institution.pk,
            private_key=private_keys[name],
            roster=roster,
            question=f"summary-request-{task['request_id']}",
        )
        url = f"/api/agent/v1/summaries/{task['request_id']}"
        assert site.client.post(url, {"masked": to_text(masked)}, format="json").status_code == 200

    assert (
        coordinator_client.get(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]["state"]
        == "complete"
    )
    assert set(SummaryAnswer.objects.values_list("summary", flat=True)) == {None}  # no site's summary kept
    study.refresh_from_db()
    pooled = encoded(ROWS["Hospital A"] + ROWS["Hospital B"], ("icu", "neuro", "onco"))
    np.testing.assert_allclose(study.feature_scaling["mean"], pooled.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(study.feature_scaling["std"], pooled.std(axis=0), atol=1e-4)


def test_no_job_while_the_sites_answer_and_a_changed_decision_fails_the_request(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study
) -> None:
    coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/")
    Study.objects.filter(pk=study.pk).update(scaling_mode="none")  # even a study that needs none
    job = {"study": study.pk, "num_rounds": 1, "min_updates": 2}
    refused = coordinator_client.post("/api/v1/jobs/", job, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "agreement_running"
    assert answer(sites["Hospital A"], summary_body("Hospital A")).status_code == 200
    study_decide(study=study, institution=sites["Hospital A"].institution, approve=False, actor="user:alice")
    request = coordinator_client.get(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]
    assert request["state"] == "failed"
    assert "Hospital A changed its decision" in request["reason"]
    assert coordinator_client.post("/api/v1/jobs/", job, format="json").status_code == 201


def test_a_data_owner_reads_only_their_own_sites_refusal(
    coordinator_client: APIClient, sites: dict[str, Site], study: Study, make_api_client
) -> None:  # type: ignore[no-untyped-def]
    coordinator_client.post(f"/api/v1/studies/{study.pk}/summaries/")
    answer(sites["Hospital A"], {"refused": "fewer rows than policy.summaries.min_rows"})
    owner_b = make_api_client("bea", Role.DATA_OWNER, sites["Hospital B"].institution)
    request = owner_b.get(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]
    assert [s["refusal"] for s in request["sites"]] == ["", ""]
    assert "min_rows" not in request["reason"]
    seen = coordinator_client.get(f"/api/v1/studies/{study.pk}/summaries/").json()["request"]
    assert seen["sites"][0]["refusal"] == "fewer rows than policy.summaries.min_rows"


def test_a_study_promising_secure_aggregation_is_not_summarised_in_the_clear(
    coordinator_client: APIClient, sites: dict[str, Site]
) -> None:
    third = Site("Hospital C")  # secure aggregation in training needs three sites
    body = {
        "name": "Promised",
        "model": {"kind": "logistic"},
        "data_schema": SECURE_SCHEMA,
        "strategy": "fedavg",
        "privacy": {"secure_aggregation": True},
        "institutions": [site.institution.pk for site in (*sites.values(), third)],
    }
    study = Study.objects.get(
        pk=coordinator_client.post("/api/v1/studies/", body, format="json").json()["id"]
    )
    study_approve_all(study)
    url = f"/api/v1/studies/{study.pk}/summaries/"
    refused = coordinator_client.post(url, {"secure_aggregation": False}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "secure_promised"
    opened = coordinator_client.post(url, {}, format="json").json()["request"]
    assert (opened["secure_aggregation"], opened["phase"]) == (True, "keys")
    # A site that sent no key is not in the sum: its masked input is refused.
    task = sites["Hospital A"].work()
    assert task is not None
    masked = sites["Hospital A"].client.post(
        f"/api/agent/v1/summaries/{task['request_id']}", {"masked": "AAAA"}, format="json"
    )
    assert masked.json()["error"]["code"] == "wrong_phase"
