"""Studies in the console: the step-by-step form, decisions, and new jobs."""

from __future__ import annotations

import json
import re

import pytest
from console_support import STUDY_SCHEMA
from django.test import Client

from federation.aggregation.strategies import FedAvg
from institutions.models import Institution
from studies.models import Decision, Study
from training.models import Job

pytestmark = pytest.mark.django_db


def _study_form(participants: list[Institution], **changes: object) -> dict[str, object]:
    """A valid "New study" submission, with ``changes`` applied."""
    body: dict[str, object] = {
        "name": "Readmission risk",
        "description": "30-day readmission.",
        "institutions": [str(institution.pk) for institution in participants],
        "data_schema": json.dumps(
            {
                "features": [
                    {"name": "age", "kind": "numeric"},
                    {"name": "ward", "kind": "categorical", "categories": ["icu", "general", "surgery"]},
                ],
                "label": "readmitted",
                "task": "binary",
                "classes": ["no", "yes"],
            }
        ),
        "model_kind": "mlp",
        "hidden_sizes": "16, 8",
        "image_size": "",
        "strategy": "fedadam",
        "param_fedadam_server_learning_rate": "0.05",
        "param_fedadam_tau": "",
        "param_fedavg_server_learning_rate": "not read: another strategy",
        "epochs": "2",
        "batch_size": "16",
        "learning_rate": "0.05",
        "proximal_mu": "0",
        "validation_fraction": "0.25",
        "seed": "3",
        "scaling": "agents",
        "feature_scaling": "",
        "privacy": "{}",
    }
    body.update(changes)
    return body


def _field_error(html: str, field: str) -> str:
    match = re.search(rf'id="id_{field}_error"[^>]*>(.*?)</ul>', html, re.S)
    assert match is not None, f"no error next to {field}"
    return re.sub(r"<[^>]+>", " ", match.group(1)).strip()


def test_new_study_form_renders_five_numbered_steps(coordinator: Client, hospital_a: Institution) -> None:
    html = coordinator.get("/studies/new/").content.decode()
    for number in range(1, 6):
        assert f'data-testid="step-{number}"' in html
    assert 'name="institutions"' in html
    assert "Hospital A" in html
    assert "&quot;features&quot;" in html  # an example schema is prefilled
    for strategy in ("fedavg", "fedadam", "trimmed_mean", "multi_krum"):
        assert f'data-strategy="{strategy}"' in html
    assert 'id="id_param_fedadam_beta_1"' in html
    assert 'id="id_param_multi_krum_num_selected"' in html
    assert "Leave {} for none" in html  # privacy


def test_the_form_reads_each_strategy_s_label_and_parameters_from_its_class(
    coordinator: Client, hospital_a: Institution, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FedAvg, "label", "Plain weighted mean")
    html = coordinator.get("/studies/new/").content.decode()
    assert "Plain weighted mean" in html
    assert "Multi-Krum (robust)" in html  # the robust trait, from the class
    assert "FedAvgM: server momentum" in html
    assert 'id="id_param_fedavgm_server_momentum"' in html
    assert 'placeholder="0.9"' in html  # the default, from the dataclass


def test_coordinator_creates_a_study(
    coordinator: Client, hospital_a: Institution, hospital_b: Institution
) -> None:
    response = coordinator.post("/studies/new/", _study_form([hospital_a, hospital_b]), follow=True)
    study = Study.objects.get(name="Readmission risk")
    assert response.redirect_chain[-1][0] == f"/studies/{study.pk}/"
    # The model's shape comes from the schema: age + three wards = 4 inputs, binary.
    assert study.model_config == {
        "kind": "mlp",
        "task": "binary",
        "num_features": 4,
        "num_classes": 2,
        "hidden_sizes": [16, 8],
        "image_size": None,
    }
    assert study.strategy == "fedadam"
    assert study.strategy_params["server_learning_rate"] == 0.05
    assert study.strategy_params["tau"] == 0.001  # left empty: the strategy's default
    assert study.training == {"epochs": 2, "batch_size": 16, "learning_rate": 0.05, "proximal_mu": 0.0}
    assert (study.validation_fraction, study.seed, study.privacy, study.feature_scaling) == (
        0.25,
        3,
        {},
        None,
    )
    assert study.scaling_mode == "agents"  # the form's default: agreed through the agents
    assert study.created_by == "user:carol"
    assert set(study.participants.values_list("decision", flat=True)) == {Decision.PENDING}
    html = response.content.decode()
    assert html.count('data-testid="participant-row"') == 2
    assert html.count('data-state="pending"') == 2
    assert "Not answered" in html


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"data_schema": '{"features": [}'}, "data_schema", "not valid JSON"),
        (
            {"data_schema": '{"features": [], "label": "y", "task": "binary"}'},
            "data_schema",
            "at least one feature",
        ),
        ({"data_schema": "[1, 2]"}, "data_schema", "JSON object"),
        ({"name": ""}, "name", "required"),
        ({"institutions": []}, "institutions", "at least one institution"),
        ({"model_kind": "cnn", "image_size": "3"}, "image_size", "greater than or equal to 4"),
        ({"model_kind": "cnn", "image_size": "5"}, "image_size", "image"),
        ({"hidden_sizes": "16, x"}, "hidden_sizes", "whole numbers"),
        ({"param_fedadam_server_learning_rate": "-1"}, "param_fedadam_server_learning_rate", "positive"),
        (
            {"strategy": "multi_krum", "param_multi_krum_num_byzantine": "-1"},
            "param_multi_krum_num_byzantine",
            "non-negative",
        ),
        ({"strategy": "krum", "param_krum_num_selected": "3"}, "strategy", "exactly one"),
        ({"strategy": "krum"}, "strategy", "needs at least 5 sites"),
        (
            {"strategy": "fedavg", "param_fedavg_max_weight_share": "2"},
            "param_fedavg_max_weight_share",
            "(0, 1]",
        ),
        ({"learning_rate": "0"}, "learning_rate", "learning_rate"),
        ({"validation_fraction": "1"}, "validation_fraction", "strictly between 0 and 1"),
        (
            {"scaling": "given", "feature_scaling": '{"mean": [0, 0], "std": [1, 1]}'},
            "feature_scaling",
            "4 means",
        ),
        (
            {"scaling": "given", "feature_scaling": '{"mean": [0, 0, 0, 0], "std": [1, 1, 0, 1]}'},
            "feature_scaling",
            "positive",
        ),
        ({"scaling": "given"}, "feature_scaling", "or choose another scaling"),
        ({"feature_scaling": '{"mean": [0], "std": [1]}'}, "feature_scaling", "to use this scaling"),
        ({"scaling": "always"}, "scaling", "valid choice"),
        ({"privacy": '"none"'}, "privacy", "JSON object"),
        ({"update_norm_bound": '{"max_ratio": 0}'}, "update_norm_bound", "above 0"),
        # The API's JSON checks hold in the form too.
        (
            {"update_norm_bound": '{"max_ratio": 2, "max_ratio": 1e300}'},
            "update_norm_bound",
            "appears more than once",
        ),
        ({"data_schema": "[" * 50_000 + "]" * 50_000}, "data_schema", "nested too deeply"),
        ({"privacy": '{"epsilon": NaN}'}, "privacy", "not a JSON number"),
    ],
)
def test_invalid_input_is_explained_next_to_its_field(
    coordinator: Client, hospital_a: Institution, changes: dict[str, object], field: str, message: str
) -> None:
    response = coordinator.post("/studies/new/", _study_form([hospital_a], **changes))
    assert response.status_code == 200
    html = response.content.decode()
    assert message in _field_error(html, field)
    assert 'data-testid="form-errors"' in html
    assert not Study.objects.exists()


def test_a_taken_name_is_explained_next_to_the_name(
    coordinator: Client, study_ab: Study, hospital_a: Institution
) -> None:
    response = coordinator.post("/studies/new/", _study_form([hospital_a], name=study_ab.name))
    assert "exists already" in _field_error(response.content.decode(), "name")
    assert Study.objects.count() == 1


def test_study_page_shows_who_decided_what(
    observer: Client, study_ab: Study, hospital_a: Institution, hospital_b: Institution
) -> None:
    from studies.services import study_decide

    study_decide(study=study_ab, institution=hospital_a, approve=True, actor="user:alice")
    html = observer.get(f"/studies/{study_ab.pk}/").content.decode()
    rows = dict(re.findall(r'data-institution="(\d+)">(.*?)</tr>', html, re.S))
    assert 'data-state="approved"' in rows[str(hospital_a.pk)]
    assert "data owner of Hospital A" in rows[str(hospital_a.pk)]  # an observer: no user name
    assert "alice" not in html
    assert 'data-state="pending"' in rows[str(hospital_b.pk)]
    assert "1 / 2" in html
    for feature in STUDY_SCHEMA["features"]:  # type: ignore[attr-defined]
        assert feature["name"] in html
    assert ">none<" in html  # privacy


def test_a_data_owner_never_sees_another_institution_s_user_names(
    owner_a: Client, owner_b: Client, coordinator: Client, study_ab: Study, hospital_a: Institution
) -> None:
    assert owner_a.post(f"/studies/{study_ab.pk}/decision/", {"decision": "approve"}).status_code == 302
    for path in (f"/studies/{study_ab.pk}/", "/studies/", "/", "/audit/"):
        response = owner_b.get(path)
        assert response.status_code == 200
        assert b"alice" not in response.content, path
    html = owner_b.get(f"/studies/{study_ab.pk}/").content.decode()
    rows = dict(re.findall(r'data-institution="(\d+)">(.*?)</tr>', html, re.S))
    assert "data owner of Hospital A" in rows[str(hospital_a.pk)]
    # Coordinators administer the accounts: they see which one decided.
    assert "user:alice" in coordinator.get(f"/studies/{study_ab.pk}/").content.decode()


def test_data_owner_approves_then_declines(owner_a: Client, study_ab: Study, hospital_a: Institution) -> None:
    page = owner_a.get(f"/studies/{study_ab.pk}/").content.decode()
    assert page.count('data-testid="approve-button"') == 1  # only on their own row
    approved = owner_a.post(f"/studies/{study_ab.pk}/decision/", {"decision": "approve"}, follow=True)
    participant = study_ab.participants.get(institution=hospital_a)
    assert (participant.decision, participant.decided_by) == (Decision.APPROVED, "user:alice")
    html = approved.content.decode()
    assert "Hospital A approved" in html
    assert 'data-testid="approve-button"' not in html
    assert 'data-testid="decline-button"' in html
    owner_a.post(f"/studies/{study_ab.pk}/decision/", {"decision": "decline"})
    participant.refresh_from_db()
    assert participant.decision == Decision.DECLINED
    assert study_ab.participants.exclude(institution=hospital_a).get().decision == Decision.PENDING


def test_coordinators_do_not_decide_for_sites(coordinator: Client, study_ab: Study) -> None:
    assert 'data-testid="approve-button"' not in coordinator.get(f"/studies/{study_ab.pk}/").content.decode()
    assert coordinator.post(f"/studies/{study_ab.pk}/decision/", {"decision": "approve"}).status_code == 403
    assert set(study_ab.participants.values_list("decision", flat=True)) == {Decision.PENDING}


def test_a_decision_cannot_change_while_a_job_runs(owner_a: Client, running_job: Job) -> None:
    response = owner_a.post(
        f"/studies/{running_job.study_id}/decision/", {"decision": "decline"}, follow=True
    )
    assert "a job of this study is running" in response.content.decode()
    assert set(running_job.study.participants.values_list("decision", flat=True)) == {Decision.APPROVED}


def test_coordinator_creates_a_job(coordinator: Client, study_ab: Study) -> None:
    body = {
        "num_rounds": "5",
        "min_updates": "2",
        "round_deadline_seconds": "120",
        "max_deadline_extensions": "2",
    }
    response = coordinator.post(f"/studies/{study_ab.pk}/jobs/", body)
    job = Job.objects.get(study=study_ab)
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.num_rounds, job.min_updates, job.round_deadline_seconds, job.max_deadline_extensions) == (
        5,
        2,
        120,
        2,
    )
    assert job.created_by == "user:carol"


def test_a_quorum_above_the_participants_is_explained_next_to_it(
    coordinator: Client, study_ab: Study
) -> None:
    body = {
        "num_rounds": "5",
        "min_updates": "3",
        "round_deadline_seconds": "120",
        "max_deadline_extensions": "1",
    }
    response = coordinator.post(f"/studies/{study_ab.pk}/jobs/", body)
    assert response.status_code == 200
    assert "between 1 and the 2 participants" in _field_error(response.content.decode(), "min_updates")
    assert not Job.objects.exists()


def test_job_form_fields_are_validated(coordinator: Client, study_ab: Study) -> None:
    body = {
        "num_rounds": "0",
        "min_updates": "1",
        "round_deadline_seconds": "120",
        "max_deadline_extensions": "1",
    }
    response = coordinator.post(f"/studies/{study_ab.pk}/jobs/", body)
    assert "greater than or equal to 1" in _field_error(response.content.decode(), "num_rounds")
    assert not Job.objects.exists()


def test_a_study_with_an_update_norm_bound_shows_it(
    coordinator: Client, hospital_a: Institution, hospital_b: Institution
) -> None:
    form = _study_form([hospital_a, hospital_b], update_norm_bound='{"max_ratio": 10, "action": "clip"}')
    response = coordinator.post("/studies/new/", form, follow=True)
    study = Study.objects.get(name="Readmission risk")
    assert study.update_norm_bound == {"max_ratio": 10, "action": "clip"}
    assert "clip beyond 10 × the model" in response.content.decode()


def test_the_form_offers_the_typed_schema_editor_beside_the_json(coordinator: Client) -> None:
    html = coordinator.get("/studies/new/").content.decode()
    # Shown by console.js (the browser test drives it); without JavaScript the JSON field alone.
    assert '<div class="schema-builder" id="schema-builder" data-testid="schema-builder" hidden>' in html
    assert 'id="schema-header"' in html
    assert 'id="id_data_schema"' in html
