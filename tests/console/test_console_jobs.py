"""Jobs in the console: the controls, the live page's JSON, and model downloads."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from console_support import approve_all, credential, record_update
from django.test import Client
from django.utils import timezone
from world import job_make

from audit.models import AuditEvent
from federation.wire import deserialize_weights, serialize_weights
from institutions.models import AgentCredential, Institution
from studies.models import Study
from training.blobs import blob_store
from training.models import Job, JobState, ModelVersion, RoundState
from training.selectors import job_model_spec_get
from training.services import UpdateMeta, job_begin, round_aggregate, update_submit

pytestmark = pytest.mark.django_db


def _message_after(client: Client, url: str) -> str:
    return client.post(url, follow=True).content.decode()


# --- the controls ------------------------------------------------------------------------


def test_start_is_refused_until_every_site_approved(
    coordinator: Client, draft_job: Job, isolated_model_storage: Path
) -> None:
    html = _message_after(coordinator, f"/jobs/{draft_job.pk}/start/")
    assert "every site must approve the study first" in html
    assert "Hospital A (pending)" in html
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT
    assert not ModelVersion.objects.filter(job=draft_job).exists()

    approve_all(draft_job.study)
    html = _message_after(coordinator, f"/jobs/{draft_job.pk}/start/")
    assert f"Job {draft_job.pk} started" in html
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.RUNNING
    assert not ModelVersion.objects.filter(job=draft_job).exists()  # a worker builds it
    job_begin(job_id=draft_job.pk)
    html = coordinator.get(f"/jobs/{draft_job.pk}/").content.decode()
    assert ModelVersion.objects.filter(job=draft_job, number=0).exists()
    assert 'data-testid="job-state" data-state="running"' in html
    assert 'data-testid="round-row" data-round="1"' in html


def test_pause_resume_and_cancel(coordinator: Client, running_job: Job) -> None:
    url = f"/jobs/{running_job.pk}"
    assert "is paused" in _message_after(coordinator, f"{url}/pause/")
    running_job.refresh_from_db()
    assert running_job.state == JobState.PAUSED

    assert "resumed" in _message_after(coordinator, f"{url}/resume/")
    running_job.refresh_from_db()
    assert running_job.state == JobState.RUNNING

    confirm = coordinator.get(f"{url}/cancel/")
    assert 'data-testid="confirm-cancel"' in confirm.content.decode()
    running_job.refresh_from_db()
    assert running_job.state == JobState.RUNNING  # the confirmation page changes nothing

    assert "is cancelled" in _message_after(coordinator, f"{url}/cancel/")
    running_job.refresh_from_db()
    assert running_job.state == JobState.CANCELLED
    assert running_job.rounds.get(number=1).state == RoundState.CANCELLED


def test_a_transition_the_state_does_not_allow_is_explained(coordinator: Client, draft_job: Job) -> None:
    html = _message_after(coordinator, f"/jobs/{draft_job.pk}/pause/")
    assert "cannot become paused" in html
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT


def test_buttons_follow_the_state(coordinator: Client, running_job: Job) -> None:
    html = coordinator.get(f"/jobs/{running_job.pk}/").content.decode()
    assert f'<form method="post" action="/jobs/{running_job.pk}/pause/" data-action="pause">' in html
    assert 'data-action="start" hidden' in html
    assert 'data-action="resume" hidden' in html
    assert 'data-action="cancel" data-testid="cancel-button">' in html


def test_controls_only_accept_post(coordinator: Client, running_job: Job) -> None:
    assert coordinator.get(f"/jobs/{running_job.pk}/pause/").status_code == 405
    running_job.refresh_from_db()
    assert running_job.state == JobState.RUNNING


# --- live.json -----------------------------------------------------------------------------


def test_live_json_structure(
    coordinator: Client, running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    round_ = running_job.rounds.get(number=1)
    metrics = {"global_accuracy": 0.7, "global_log_loss": 0.6, "local_accuracy": 0.8}
    record_update(round_, hospital_a, metrics)
    round_.metrics = metrics
    round_.save(update_fields=["metrics"])
    response = coordinator.get(f"/jobs/{running_job.pk}/live.json")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) >= {"job", "rounds", "sites", "models", "charts", "server_time"}
    job = body["job"]
    assert (job["id"], job["state"], job["num_rounds"], job["current_round"]) == (
        running_job.pk,
        "running",
        3,
        1,
    )
    assert job["actions"] == ["pause", "cancel"]
    assert job["terminal"] is False
    [round_row] = body["rounds"]
    assert (
        round_row["number"],
        round_row["state"],
        round_row["received"],
        round_row["expected_updates"],
    ) == (
        1,
        "open",  # a row recorded directly: the service would have moved it to collecting
        1,
        2,
    )
    assert round_row["summary"] == {
        "global_quality": 0.7,
        "local_quality": 0.8,
        "global_loss": 0.6,
        "local_loss": None,
    }
    assert body["charts"] == {"quality": "accuracy", "loss": "log_loss"}
    sites = {site["name"]: site for site in body["sites"]}
    assert sites["Hospital A"]["rounds"][0]["metrics"] == metrics
    assert sites["Hospital A"]["rounds"][0]["round"] == 1
    assert sites["Hospital B"]["rounds"] == []
    [model] = body["models"]
    assert (model["number"], model["strategy"], model["num_updates"]) == (0, "initial model", 0)
    assert model["download_url"] == f"/models/{model['id']}/download"


def test_live_json_counts_dropouts_of_finished_rounds(
    coordinator: Client, owner_a: Client, owner_b: Client, running_job: Job, hospital_a: Institution
) -> None:
    round_ = running_job.rounds.get(number=1)
    record_update(round_, hospital_a, {"local_accuracy": 0.9})
    assert coordinator.get(f"/jobs/{running_job.pk}/live.json").json()["rounds"][0]["dropouts"] == 0
    running_job.rounds.filter(pk=round_.pk).update(state=RoundState.CLOSED, closed_at=timezone.now())
    seen_by_coordinator = coordinator.get(f"/jobs/{running_job.pk}/live.json").json()["rounds"][0]
    assert (seen_by_coordinator["dropouts"], seen_by_coordinator["dropout_sites"]) == (1, ["Hospital B"])
    # Each data owner learns only about their own site.
    assert owner_a.get(f"/jobs/{running_job.pk}/live.json").json()["rounds"][0]["dropout_sites"] == []
    assert owner_b.get(f"/jobs/{running_job.pk}/live.json").json()["rounds"][0]["dropout_sites"] == [
        "Hospital B"
    ]


def test_live_json_shows_a_data_owner_only_their_site(
    owner_a: Client, running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    round_ = running_job.rounds.get(number=1)
    record_update(round_, hospital_a, {"local_accuracy": 0.9})
    record_update(round_, hospital_b, {"local_accuracy": 0.4})
    body = owner_a.get(f"/jobs/{running_job.pk}/live.json").json()
    assert [site["name"] for site in body["sites"]] == ["Hospital A"]
    assert body["sites"][0]["rounds"][0]["metrics"] == {"local_accuracy": 0.9}
    assert body["rounds"][0]["received"] == 2
    html = owner_a.get(f"/jobs/{running_job.pk}/").content.decode()
    assert "0.4000" not in html
    assert "Hospital B" not in html


def _submit_round(job: Job, institutions: list[Institution]) -> None:
    """Real updates through the service, then the round's aggregation."""
    round_ = job.rounds.get(number=1)
    spec = job_model_spec_get(job=job)
    base = deserialize_weights(blob_store().read(round_.base_version.sha256), spec=spec)
    for offset, institution in enumerate(institutions, start=1):
        weights = {name: (array + 0.01 * offset).astype(np.float32) for name, array in base.items()}
        meta = UpdateMeta(
            num_examples=50 * offset,
            metrics={"global_accuracy": 0.6, "local_accuracy": 0.7 + 0.1 * offset},
            base_model_sha256=round_.base_version.sha256,
            job_id=job.pk,
            round_number=1,
        )
        update_submit(
            round_id=round_.pk,
            credential=credential(institution),
            meta=meta,
            data=serialize_weights(weights, spec=spec),
        )
    round_aggregate(round_id=round_.pk)


def test_provenance_after_a_real_round_is_scoped(
    coordinator: Client, owner_a: Client, running_job: Job, hospital_a: Institution, hospital_b: Institution
) -> None:
    _submit_round(running_job, [hospital_a, hospital_b])
    models = coordinator.get(f"/jobs/{running_job.pk}/live.json").json()["models"]
    assert [(m["number"], m["parent_number"], m["made_by_round"]) for m in models] == [
        (0, None, None),
        (1, 0, 1),
    ]
    assert (models[1]["strategy"], models[1]["num_updates"]) == ("fedavg", 2)
    assert models[0]["metrics"] == {"accuracy": 0.6}  # the sites rated the initial model
    own = owner_a.get(f"/jobs/{running_job.pk}/live.json").json()["models"][1]
    # The count matches the round's "2 / 2 answered"; the list holds only the owner's own.
    assert own["num_updates"] == 2
    assert [update["institution"] for update in own["updates"]] == ["Hospital A"]
    live = coordinator.get(f"/jobs/{running_job.pk}/live.json").json()
    assert [r["state"] for r in live["rounds"]] == ["closed", "open"]
    assert live["job"]["rounds_done"] == 1


# --- downloads -----------------------------------------------------------------------------


def test_model_download_matches_its_checksum(observer: Client, running_job: Job) -> None:
    version = ModelVersion.objects.get(job=running_job)
    html = observer.get(f"/jobs/{running_job.pk}/").content.decode()
    assert f'href="/models/{version.pk}/download" download data-testid="download-model"' in html
    response = observer.get(f"/models/{version.pk}/download")
    assert response.status_code == 200
    data = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert hashlib.sha256(data).hexdigest() == version.sha256 == response["X-Content-SHA256"]
    assert len(data) == version.size
    assert response["Content-Type"] == "application/octet-stream"
    assert f"model-{running_job.pk}-0-{version.sha256[:12]}.safetensors" in response["Content-Disposition"]
    [event] = AuditEvent.objects.filter(kind="model.downloaded")
    assert (event.actor, event.job_id, event.details) == (
        "user:oscar",
        running_job.pk,
        {"version": 0, "sha256": version.sha256, "form": "weights"},
    )
    assert f'href="/models/{version.pk}/bundle" download' in html
    bundle = observer.get(f"/models/{version.pk}/bundle")
    assert bundle["Content-Type"] == "application/zip"
    assert f"model-{running_job.pk}-0-bundle.zip" in bundle["Content-Disposition"]


def test_a_corrupt_model_is_not_served(coordinator: Client, running_job: Job) -> None:
    version = ModelVersion.objects.get(job=running_job)
    path = blob_store().path(version.sha256)
    path.write_bytes(b"\x00" + path.read_bytes()[1:])
    response = coordinator.get(f"/models/{version.pk}/download", follow=True)
    assert response.redirect_chain[-1][0] == f"/jobs/{running_job.pk}/"
    assert "cannot be downloaded" in response.content.decode()


def test_job_list_filters_by_state(observer: Client, running_job: Job, study_a: object) -> None:
    from training.services import job_create

    draft = job_create(
        study=study_a,  # type: ignore[arg-type]
        num_rounds=1,
        min_updates=1,
        round_deadline_seconds=60,
        max_deadline_extensions=0,
        actor="user:setup",
    )
    everything = observer.get("/jobs/").content.decode()
    assert everything.count('data-testid="job-row"') == 2
    running = observer.get("/jobs/?state=running").content.decode()
    assert running.count('data-testid="job-row"') == 1
    assert f"/jobs/{running_job.pk}/" in running
    assert f"/jobs/{draft.pk}/" not in running
    assert observer.get("/jobs/?state=bogus").content.decode().count('data-testid="job-row"') == 2


@pytest.mark.privacy
def test_the_job_page_shows_its_privacy_and_the_epsilon_spent(
    coordinator: Client, running_job: Job, hospital_a
) -> None:  # type: ignore[no-untyped-def]
    from federation.privacy.settings import PrivacySettings
    from training.models import PrivacySpend

    assert ">none<" in coordinator.get(f"/jobs/{running_job.pk}/").content.decode()
    privacy = {
        "secure_aggregation": True,
        "differential_privacy": {"level": "client", "clipping_norm": 1.0, "noise_multiplier": 1.0},
        "epsilon": 8.0,
    }
    # What the job shows is its own round plan, fixed when it was created.
    running_job.plan = replace(running_job.plan, privacy=PrivacySettings.from_json(privacy))
    running_job.save(update_fields=["plan"])
    PrivacySpend.objects.create(
        job=running_job, institution=hospital_a, level="client", epsilon=1.25, delta=1e-5, rounds=1, events=[]
    )
    html = coordinator.get(f"/jobs/{running_job.pk}/").content.decode()
    assert "secure aggregation, client-level DP" in html
    assert "epsilon 1.250 of 8.0" in html


def test_a_job_is_cloned_into_the_new_job_form(coordinator: Client, study_ab: Study) -> None:
    source = job_make(study_ab, num_rounds=7, min_updates=1, round_deadline_seconds=900)
    html = coordinator.get(f"/jobs/{source.pk}/").content.decode()
    clone_url = f"/studies/{study_ab.pk}/?clone={source.pk}#new-job"
    assert f'href="{clone_url}" data-testid="clone-button"' in html
    form = coordinator.get(clone_url.split("#")[0]).content.decode()
    for field, value in (("num_rounds", 7), ("min_updates", 1), ("round_deadline_seconds", 900)):
        assert re.search(rf'name="{field}" value="{value}"', form), field
    plain = coordinator.get(f"/studies/{study_ab.pk}/?clone=999").content.decode()
    assert re.search(r'name="num_rounds" value="10"', plain)  # an unknown job: the defaults


def test_the_best_version_is_marked_and_early_stopping_can_be_set(
    coordinator: Client, running_job: Job, study_ab: Study
) -> None:
    ModelVersion.objects.filter(job=running_job, number=0).update(metrics={"log_loss": 0.4})
    live = coordinator.get(f"/jobs/{running_job.pk}/live.json").json()
    assert [model["best"] for model in live["models"]] == [True]
    assert 'data-testid="best-version"' in coordinator.get(f"/jobs/{running_job.pk}/").content.decode()
    body = {"num_rounds": "5", "min_updates": "2", "round_deadline_seconds": "600"}
    body |= {"max_deadline_extensions": "1", "early_stopping_rounds": "3"}
    coordinator.post(f"/studies/{study_ab.pk}/jobs/", body)
    assert Job.objects.order_by("-pk").first().early_stopping_rounds == 3  # type: ignore[union-attr]


def test_a_draft_job_warns_which_site_will_refuse_it(
    coordinator: Client, draft_job: Job, hospital_a: Institution
) -> None:
    AgentCredential.objects.filter(pk=credential(hospital_a).pk).update(policy={"max_rounds": 1})
    html = coordinator.get(f"/jobs/{draft_job.pk}/").content.decode()
    assert 'data-testid="launch-warnings"' in html
    assert f"<strong>Hospital A</strong>: the job asks for {draft_job.num_rounds} rounds" in html
    assert "<strong>Hospital B</strong>: no agent of this site has reported its policy yet" in html
