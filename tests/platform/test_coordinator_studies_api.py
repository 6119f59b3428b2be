"""``studies/``: creation and its validation, scoped reading, and each site's decision."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from audit.models import AuditEvent
from institutions.models import Institution
from studies.models import Decision, Study, StudyParticipant

pytestmark = pytest.mark.django_db

MakeStudy = Callable[[str, list[Institution]], Study]


def _decision_of(study: Study, institution: Institution) -> str:
    return StudyParticipant.objects.get(study=study, institution=institution).decision


# --- create ------------------------------------------------------------------------------


def test_coordinator_creates_a_study(coordinator_client: APIClient, study_payload: dict[str, object]) -> None:
    response = coordinator_client.post("/api/v1/studies/", study_payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == study_payload["model"]
    assert body["data_schema"] == study_payload["data_schema"]
    assert body["seed"] == 7
    assert body["created_by"] == "user:carol"
    assert [(p["institution"]["name"], p["decision"]) for p in body["participants"]] == [
        ("Hospital A", "pending"),
        ("Hospital B", "pending"),
    ]
    study = Study.objects.get(pk=body["id"])
    assert study.model_config == study_payload["model"]
    assert AuditEvent.objects.filter(kind="study.created", actor="user:carol").exists()


def test_optional_study_parts_take_defaults(
    coordinator_client: APIClient, study_payload: dict[str, object]
) -> None:
    for key in (
        "description",
        "strategy_params",
        "feature_scaling",
        "privacy",
        "validation_fraction",
        "seed",
    ):
        del study_payload[key]
    response = coordinator_client.post("/api/v1/studies/", study_payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["privacy"], body["feature_scaling"], body["validation_fraction"], body["seed"]) == (
        {},
        None,
        0.2,
        0,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"kind": "logistic", "task": "binary", "num_features": 4, "num_classes": 2}},
            "4 features",
        ),
        ({"model": {"task": "binary", "num_features": 3, "num_classes": 2}}, "missing fields"),
        ({"training": {"epochs": 0}}, "epochs must be a positive integer"),
        ({"training": {"momentum": 0.9}}, "unknown training settings"),
        ({"training": {"class_weighting": "yes"}}, "class_weighting must be true or false"),
        (
            {"strategy": "trimmed_mean", "strategy_params": {"beta": "0.2"}},
            "trimmed_mean': beta must be a finite number, got '0.2'",
        ),
        # Krum with f = 1 needs 2f + 3 = 5 sites; refused now, not after round 1 trained.
        ({"strategy": "krum", "strategy_params": {"num_byzantine": 1}}, "needs at least 5 sites' updates"),
        ({"strategy_params": {"no_such_param": 1}}, "no parameters"),
        ({"feature_scaling": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}, "feature_scaling must have 3"),
        ({"institutions": [999]}, "existing institutions"),
        ({"update_norm_bound": {"max_ratio": -1}}, "max_ratio must be a number above 0"),
        ({"update_norm_bound": {"max_ratio": 5, "action": "ignore"}}, "must be refuse or clip"),
        (
            {"update_norm_bound": {"max_ratio": 5}, "privacy": {"secure_aggregation": True}},
            "update_norm_bound needs to see each update",
        ),
        # About 10^18 parameters: counted from the config, never allocated, then refused.
        (
            {
                "model": {
                    "kind": "mlp",
                    "task": "binary",
                    "num_features": 3,
                    "num_classes": 2,
                    "hidden_sizes": [10**9, 10**9],
                }
            },
            "1,000,000,006,000,000,001 parameters",
        ),
    ],
)
def test_study_parts_that_do_not_fit_are_refused_with_a_clear_message(
    coordinator_client: APIClient, study_payload: dict[str, object], change: dict[str, object], message: str
) -> None:
    response = coordinator_client.post("/api/v1/studies/", {**study_payload, **change}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"
    assert message in response.json()["error"]["message"]
    assert not Study.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strategy": "fedmagic"}, "strategy"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"model": "logistic"}, "model"),
        ({"institutions": []}, "institutions"),
        ({"seed": -1}, "seed"),
    ],
)
def test_malformed_study_fields_are_field_errors(
    coordinator_client: APIClient, study_payload: dict[str, object], change: dict[str, object], field: str
) -> None:
    response = coordinator_client.post("/api/v1/studies/", {**study_payload, **change}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_duplicate_study_name_is_a_conflict(
    coordinator_client: APIClient, study_payload: dict[str, object], study_ab: Study
) -> None:
    response = coordinator_client.post(
        "/api/v1/studies/", {**study_payload, "name": "Study AB"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "duplicate"


@pytest.mark.parametrize("client_fixture", ["observer_client", "owner_a_client"])
def test_only_coordinators_create_studies(
    request: pytest.FixtureRequest, client_fixture: str, study_payload: dict[str, object]
) -> None:
    response = request.getfixturevalue(client_fixture).post("/api/v1/studies/", study_payload, format="json")
    assert response.status_code == 403
    assert not Study.objects.exists()


# --- read --------------------------------------------------------------------------------


def test_data_owner_lists_only_studies_of_their_institution(
    owner_a_client: APIClient,
    observer_client: APIClient,
    make_study: MakeStudy,
    hospital_a: Institution,
    hospital_b: Institution,
) -> None:
    make_study("Both", [hospital_a, hospital_b])
    make_study("Only B", [hospital_b])
    assert [s["name"] for s in owner_a_client.get("/api/v1/studies/").json()["results"]] == ["Both"]
    assert {s["name"] for s in observer_client.get("/api/v1/studies/").json()["results"]} == {
        "Both",
        "Only B",
    }


def test_study_detail_with_participants_and_decisions(
    owner_a_client: APIClient, study_ab: Study, hospital_b: Institution
) -> None:
    StudyParticipant.objects.filter(study=study_ab, institution=hospital_b).update(
        decision=Decision.DECLINED, decided_by="user:bob"
    )
    response = owner_a_client.get(f"/api/v1/studies/{study_ab.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["num_features"] == 3
    assert [(p["institution"]["name"], p["decision"], p["decided_by"]) for p in body["participants"]] == [
        ("Hospital A", "pending", ""),
        ("Hospital B", "declined", "data owner of Hospital B"),  # no user name of another site
    ]


def test_a_data_owner_never_sees_another_institution_s_user_names(
    owner_a_client: APIClient,
    owner_b_client: APIClient,
    observer_client: APIClient,
    coordinator_client: APIClient,
    study_ab: Study,
    hospital_a: Institution,
) -> None:
    decided = owner_a_client.post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "approve"},
        format="json",
    )
    assert decided.status_code == 200
    paths = ("/api/v1/studies/", f"/api/v1/studies/{study_ab.pk}/")
    for reader in (owner_b_client, observer_client):
        for path in paths:
            response = reader.get(path)
            assert response.status_code == 200
            assert b"alice" not in response.content, path
        detail = reader.get(f"/api/v1/studies/{study_ab.pk}/").json()
        assert [p["decided_by"] for p in detail["participants"]] == ["data owner of Hospital A", ""]
    # Coordinators administer the accounts: they see which one decided.
    detail = coordinator_client.get(f"/api/v1/studies/{study_ab.pk}/").json()
    assert [p["decided_by"] for p in detail["participants"]] == ["user:alice", ""]


def test_study_of_other_institutions_is_404_for_a_data_owner(
    owner_a_client: APIClient, make_study: MakeStudy, hospital_b: Institution
) -> None:
    study = make_study("Only B", [hospital_b])
    assert owner_a_client.get(f"/api/v1/studies/{study.pk}/").status_code == 404


# --- decisions ---------------------------------------------------------------------------


def test_data_owner_approves_for_their_institution(
    owner_a_client: APIClient, study_ab: Study, hospital_a: Institution
) -> None:
    response = owner_a_client.post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "approve"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == "approved"
    assert response.json()["decided_by"] == "data owner of Hospital A"
    assert _decision_of(study_ab, hospital_a) == Decision.APPROVED
    assert AuditEvent.objects.filter(kind="study.approved", institution=hospital_a).exists()


def test_data_owner_declines(owner_a_client: APIClient, study_ab: Study, hospital_a: Institution) -> None:
    response = owner_a_client.post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "decline"},
        format="json",
    )
    assert response.json()["decision"] == "declined"
    assert _decision_of(study_ab, hospital_a) == Decision.DECLINED


def test_data_owner_cannot_decide_for_another_institution(
    owner_a_client: APIClient, study_ab: Study, hospital_b: Institution
) -> None:
    response = owner_a_client.post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_b.pk, "decision": "approve"},
        format="json",
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_your_institution"
    assert _decision_of(study_ab, hospital_b) == Decision.PENDING


@pytest.mark.parametrize("client_fixture", ["coordinator_client", "observer_client"])
def test_only_data_owners_decide(
    request: pytest.FixtureRequest, client_fixture: str, study_ab: Study, hospital_a: Institution
) -> None:
    response = request.getfixturevalue(client_fixture).post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "approve"},
        format="json",
    )
    assert response.status_code == 403
    assert _decision_of(study_ab, hospital_a) == Decision.PENDING


def test_decision_on_a_study_outside_scope_is_404(
    owner_a_client: APIClient, make_study: MakeStudy, hospital_a: Institution, hospital_b: Institution
) -> None:
    study = make_study("Only B", [hospital_b])
    response = owner_a_client.post(
        f"/api/v1/studies/{study.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "approve"},
        format="json",
    )
    assert response.status_code == 404


def test_unknown_decision_is_a_field_error(
    owner_a_client: APIClient, study_ab: Study, hospital_a: Institution
) -> None:
    response = owner_a_client.post(
        f"/api/v1/studies/{study_ab.pk}/decision/",
        {"institution": hospital_a.pk, "decision": "maybe"},
        format="json",
    )
    assert response.status_code == 400
    assert "decision" in response.json()["error"]["fields"]


def test_the_model_size_bound_is_a_setting(
    coordinator_client: APIClient, study_payload: dict[str, object], settings: Settings
) -> None:
    mlp = {"kind": "mlp", "task": "binary", "num_features": 3, "num_classes": 2, "hidden_sizes": [64]}
    settings.FEDHEALTH_MAX_MODEL_PARAMETERS = 320  # (3 + 1) * 64 + (64 + 1) * 1 = 321
    refused = coordinator_client.post("/api/v1/studies/", {**study_payload, "model": mlp}, format="json")
    assert refused.status_code == 400
    assert "321 parameters" in refused.json()["error"]["message"]
    assert "at most 320" in refused.json()["error"]["message"]
    settings.FEDHEALTH_MAX_MODEL_PARAMETERS = 321
    accepted = coordinator_client.post("/api/v1/studies/", {**study_payload, "model": mlp}, format="json")
    assert accepted.status_code == 201, accepted.content


def test_a_study_keeps_its_update_norm_bound(
    coordinator_client: APIClient, study_payload: dict[str, object]
) -> None:
    bound = {"max_ratio": 10.0, "action": "clip"}
    created = coordinator_client.post(
        "/api/v1/studies/", {**study_payload, "update_norm_bound": bound}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["update_norm_bound"] == bound
    assert Study.objects.get().update_norm_bound == bound


def test_a_tabular_model_takes_its_inputs_and_classes_from_the_schema(
    coordinator_client: APIClient, study_payload: dict[str, object]
) -> None:
    response = coordinator_client.post(
        "/api/v1/studies/", {**study_payload, "model": {"kind": "mlp"}}, format="json"
    )
    assert response.status_code == 201, response.content
    model = response.json()["model"]
    schema = study_payload["data_schema"]
    assert (model["task"], model["num_features"], model["num_classes"]) == (
        schema["task"],  # type: ignore[index]
        len(schema["features"]),  # type: ignore[index,arg-type]
        len(schema["classes"]),  # type: ignore[index,arg-type]
    )
