"""The agent protocol and the round state machine, through the real API and services."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.core.cache import cache
from django.test import override_settings
from django.utils import timezone
from platform_world import Site, make_job, spec_of, trained
from rest_framework.test import APIClient

from audit.models import AuditEvent
from federation.types import ModelSpec
from federation.wire import deserialize_weights, serialize_weights
from institutions import services as institution_services
from institutions.models import Institution
from training import services as training_services
from training.models import Job, JobState, ModelVersion, Refusal, Round, RoundKind, RoundState, Update

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated_storage(tmp_path, settings):  # type: ignore[no-untyped-def]
    settings.ENV = type(settings.ENV)(**{**settings.ENV.__dict__, "model_storage_dir": tmp_path / "models"})
    settings.CELERY_TASK_ALWAYS_EAGER = True
    cache.clear()  # enrollment throttling counts live in the cache


@pytest.fixture
def sites() -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]


def test_a_whole_job_runs_round_by_round_to_an_evaluated_final_model(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites, rounds=2)
    for round_number in (1, 2):
        for index, site in enumerate(sites):
            task = site.work()
            assert task["kind"] == "train"
            assert task["round_number"] == round_number
            with django_capture_on_commit_callbacks(execute=True):
                response = site.upload(
                    task, trained(site.model(task), shift=index + 1), num_examples=10 * (index + 1)
                )
            assert response.status_code == 201, response.content
            following = site.work()
            if index < len(sites) - 1:
                assert following is None  # answered: no more work this round
            else:  # the last update closes the round: the next one opens, or the evaluation
                assert following is not None
                expected = ("train", 2) if round_number == 1 else ("evaluate", 3)
                assert (following["kind"], following["round_number"]) == expected
    version = ModelVersion.objects.get(job=job, number=2)
    parent = ModelVersion.objects.get(job=job, number=1)
    assert version.parent == parent
    assert [u["num_examples"] for u in version.provenance["updates"]] == [10, 20, 30]
    # FedAvg of shifts 1, 2, 3 weighted 10, 20, 30: each round moves every weight by 14/6.
    initial = deserialize_weights(
        sites[0].model(
            {
                "model_version": {
                    "id": job.model_versions.get(number=0).pk,
                    "sha256": job.model_versions.get(number=0).sha256,
                }
            }
        ),
        spec=spec_of(sites[0].model({"model_version": {"id": version.pk, "sha256": version.sha256}})),
    )
    final_task = sites[0].work()
    assert final_task["kind"] == "evaluate"
    final = deserialize_weights(sites[0].model(final_task), spec=ModelSpec.from_weights(initial))
    for name in initial:
        np.testing.assert_allclose(final[name], initial[name] + 2 * 14 / 6, rtol=1e-5)
    for site in sites:
        task = site.work()
        with django_capture_on_commit_callbacks(execute=True):
            response = site.client.post(
                f"/api/agent/v1/rounds/{task['round_id']}/evaluation",
                {"num_examples": 40, "metrics": {"accuracy": 0.9}},
                format="json",
            )
        assert response.status_code == 201, response.content
    job.refresh_from_db()
    assert job.state == JobState.COMPLETED
    assert ModelVersion.objects.get(job=job, number=2).metrics == {"accuracy": pytest.approx(0.9)}
    kinds = set(AuditEvent.objects.filter(job=job).values_list("kind", flat=True))
    assert {
        "job.started",
        "round.opened",
        "update.received",
        "round.aggregating",
        "round.closed",
        "evaluation.received",
        "job.completed",
    } <= kinds
    # The final evaluation is named as such, never "round 3", and carries no empty digest.
    for event in AuditEvent.objects.filter(job=job, kind__in=["round.opened", "round.closed"]):
        assert ("round" in event.details) != ("final_evaluation" in event.details), event.details
    assert {e.details.get("round") for e in AuditEvent.objects.filter(job=job, kind="round.closed")} == {
        1,
        2,
        None,
    }
    answers = AuditEvent.objects.filter(job=job, kind="evaluation.received")
    assert [(e.details["final_evaluation"], "sha256" in e.details) for e in answers] == [(True, False)] * 3


def test_a_retried_upload_is_accepted_once_and_counted_once(sites: list[Site]) -> None:
    make_job(sites)
    site = sites[0]
    task = site.work()
    blob = trained(site.model(task), 1.0)
    first, again = site.upload(task, blob), site.upload(task, blob)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["update_id"] == first.json()["update_id"]
    assert Update.objects.filter(round_id=task["round_id"]).count() == 1
    different = site.upload(task, trained(site.model(task), 2.0))
    assert different.status_code == 409
    assert different.json()["error"]["code"] == "update_exists"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"base_model_sha256": "0" * 64}, "stale_update"),
        ({"round_number": 5}, "wrong_round"),
        ({"job_id": 999}, "wrong_round"),
        ({"num_examples": 0}, "invalid"),
        ({"num_examples": -5}, "invalid"),
        ({"num_examples": 10**12}, "invalid"),
    ],
)
def test_an_update_bound_to_anything_else_is_refused(sites: list[Site], change: dict, code: str) -> None:
    make_job(sites)
    task = sites[0].work()
    meta = {k: v for k, v in change.items() if k != "num_examples"}
    response = sites[0].upload(
        task, trained(sites[0].model(task), 1.0), num_examples=change.get("num_examples", 50), **meta
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"] == code
    assert not Update.objects.exists()


@pytest.mark.parametrize(
    ("blob", "status"),
    [
        (b"\x00" * 10, 400),
        (
            serialize_weights(
                {"linear.weight": np.zeros((1, 4), np.float32), "linear.bias": np.zeros(1, np.float32)}
            ),
            400,
        ),
        (b"\x80\x04\x95" + b"pickle" * 10, 400),
    ],
)
def test_malformed_tensors_are_refused_with_a_clear_message(
    sites: list[Site], blob: bytes, status: int
) -> None:
    make_job(sites)
    task = sites[0].work()
    response = sites[0].upload(task, blob)
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert not Update.objects.exists()


def test_non_finite_values_are_refused(sites: list[Site]) -> None:
    from safetensors.numpy import save

    make_job(sites)
    task = sites[0].work()
    weights = deserialize_weights(sites[0].model(task), spec=spec_of(sites[0].model(task)))
    weights["linear.bias"] = np.array([np.nan], np.float32)
    response = sites[0].upload(task, save(weights))
    assert response.status_code == 400
    assert "NaN" in response.json()["error"]["message"]


def test_an_agent_sees_only_its_own_institutions_rounds_and_models(sites: list[Site]) -> None:
    job = make_job(sites[:2])
    outsider = sites[2]
    assert outsider.work() is None
    task = sites[0].work()
    assert outsider.client.get(f"/api/agent/v1/models/{task['model_version']['id']}").status_code == 404
    response = outsider.upload(task, trained(sites[0].model(task), 1.0))
    assert response.status_code == 404
    assert (
        outsider.client.post(
            f"/api/agent/v1/jobs/{job.pk}/refuse", {"reason": "x"}, format="json"
        ).status_code
        == 404
    )


def test_a_revoked_credential_stops_working_at_once(sites: list[Site]) -> None:
    site = sites[0]
    assert site.client.get("/api/agent/v1/me").status_code == 200
    institution_services.credential_revoke(credential_id=site.credential_id, actor="user:test")
    response = site.client.get("/api/agent/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "credential_revoked"


def test_enrollment_tokens_are_single_use_and_expire() -> None:
    institution = Institution.objects.create(name="Hospital Z")
    issued = institution_services.enrollment_token_create(institution=institution, actor="user:test")
    client = APIClient()
    assert client.post("/api/agent/v1/enroll", {"token": issued.token}, format="json").status_code == 201
    reuse = client.post("/api/agent/v1/enroll", {"token": issued.token}, format="json")
    assert reuse.status_code == 401
    expired = institution_services.enrollment_token_create(institution=institution, actor="user:test")
    expired.record.expires_at = timezone.now() - timedelta(seconds=1)
    expired.record.save()
    assert client.post("/api/agent/v1/enroll", {"token": expired.token}, format="json").status_code == 401
    assert issued.token not in str(list(institution.enrollment_tokens.values()))


def test_bad_keys_get_clear_401s() -> None:
    client = APIClient()
    for header in ("Agent", "Agent fha_1_nope", "Agent something", "Agent fha_x_y extra"):
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.get("/api/agent/v1/me")
        assert response.status_code == 401
        assert response.json()["error"]["code"] in {"invalid_credential", "not_authenticated"}


def test_a_refusal_is_recorded_and_the_round_closes_without_that_site(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites, min_updates=2)
    for site in sites[:2]:
        task = site.work()
        with django_capture_on_commit_callbacks(execute=True):
            site.upload(task, trained(site.model(task), 1.0))
    assert Round.objects.get(job=job, number=1).state == RoundState.COLLECTING
    with django_capture_on_commit_callbacks(execute=True):
        response = sites[2].client.post(
            f"/api/agent/v1/jobs/{job.pk}/refuse", {"reason": "epochs above our policy"}, format="json"
        )
    assert response.status_code == 200
    assert Refusal.objects.get(job=job).reason == "epochs above our policy"
    assert Round.objects.get(job=job, number=1).state == RoundState.CLOSED
    assert Round.objects.get(job=job, number=2).expected_updates == 2
    assert sites[2].work() is None


def test_a_job_every_site_refuses_fails_with_each_site_and_its_reason(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites[:2], min_updates=2)
    reasons = ["the job asks for 2 rounds; the policy allows 1", "study not approved locally"]
    for site, reason in zip(sites[:2], reasons, strict=True):
        with django_capture_on_commit_callbacks(execute=True):
            site.client.post(f"/api/agent/v1/jobs/{job.pk}/refuse", {"reason": reason}, format="json")
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert job.failure_reason.startswith("round 1 failed: only 1 site still takes part; the job needs 2")
    assert f"Hospital A refused: {reasons[0]}" in job.failure_reason


def test_aggregating_twice_changes_nothing(sites: list[Site]) -> None:
    job = make_job(sites[:1], rounds=1)
    task = sites[0].work()
    with override_settings(CELERY_TASK_ALWAYS_EAGER=False):
        sites[0].upload(task, trained(sites[0].model(task), 1.0))
    round_ = Round.objects.get(pk=task["round_id"])
    assert round_.state == RoundState.AGGREGATING
    first = training_services.round_aggregate(round_id=round_.pk)
    second = training_services.round_aggregate(round_id=round_.pk)
    assert first.version_number == 1
    assert second.version_number is None
    assert job.model_versions.count() == 2
    assert Round.objects.filter(job=job, kind=RoundKind.EVALUATE).count() == 1


def test_the_sweep_closes_extends_or_fails_rounds_at_their_deadline(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites, min_updates=2)
    round_ = Round.objects.get(job=job, number=1)
    Round.objects.filter(pk=round_.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert training_services.rounds_sweep().extended == 1  # no updates yet: one extension allowed
    Round.objects.filter(pk=round_.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    for site in sites[:2]:
        task = site.work()
        site.upload(task, trained(site.model(task), 1.0))
    with django_capture_on_commit_callbacks(execute=True):
        assert training_services.rounds_sweep().closed == 1
    assert Round.objects.get(job=job, number=2).state == RoundState.OPEN
    Round.objects.filter(job=job, number=2).update(
        deadline_at=timezone.now() - timedelta(seconds=1), deadline_extensions=1
    )
    assert training_services.rounds_sweep().failed == 1
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert "deadline passed" in job.failure_reason


def test_long_poll_answers_within_its_bound(sites: list[Site]) -> None:
    import time

    started = time.monotonic()
    assert sites[0].work(wait=1) is None
    assert 0.9 <= time.monotonic() - started < 3
    response = sites[0].client.get("/api/agent/v1/work?wait=31")
    assert response.status_code == 400


def test_a_site_that_uploads_and_then_refuses_is_left_out_of_the_aggregate(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites, min_updates=2)
    first = sites[0].work()
    sites[0].upload(first, trained(sites[0].model(first), 100.0))
    with django_capture_on_commit_callbacks(execute=True):
        sites[0].client.post(f"/api/agent/v1/jobs/{job.pk}/refuse", {"reason": "withdrawn"}, format="json")
        task = sites[1].work()
        sites[1].upload(task, trained(sites[1].model(task), 1.0))
    round_ = Round.objects.get(job=job, number=1)
    assert round_.state == RoundState.COLLECTING  # waits for C: A's update no longer counts
    with django_capture_on_commit_callbacks(execute=True):
        task = sites[2].work()
        sites[2].upload(task, trained(sites[2].model(task), 1.0))
    version = ModelVersion.objects.get(job=job, number=1)
    assert [u["institution"] for u in version.provenance["updates"]] == ["Hospital B", "Hospital C"]
    response = sites[0].client.get(f"/api/agent/v1/models/{version.pk}")
    assert response.status_code == 404  # a site that refused gets no more models


def test_a_retry_after_a_pause_still_gets_its_first_answer(sites: list[Site]) -> None:
    job = make_job(sites)
    task = sites[0].work()
    blob = trained(sites[0].model(task), 1.0)
    first = sites[0].upload(task, blob)
    training_services.job_pause(job_id=job.pk, actor="user:test")
    again = sites[0].upload(task, blob)
    assert again.status_code == 200
    assert again.json()["update_id"] == first.json()["update_id"]
    late = sites[1].upload(task, trained(sites[1].model(task), 1.0))
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "job_not_running"


def test_an_upload_larger_than_the_model_allows_is_refused_before_it_is_read(sites: list[Site]) -> None:
    make_job(sites)
    task = sites[0].work()
    response = sites[0].upload(task, b"\0" * 200_000)
    assert response.status_code == 413
    assert "at most" in response.json()["error"]["message"]


def test_an_unanswered_final_evaluation_still_completes_the_job(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites[:1], rounds=1)
    task = sites[0].work()
    with django_capture_on_commit_callbacks(execute=True):
        sites[0].upload(task, trained(sites[0].model(task), 1.0))
    evaluation = Round.objects.get(job=job, kind=RoundKind.EVALUATE)
    Round.objects.filter(pk=evaluation.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert training_services.rounds_sweep().closed == 1
    job.refresh_from_db()
    assert job.state == JobState.COMPLETED


def test_an_aggregation_that_keeps_dying_fails_its_round_after_a_bounded_number_of_tries(
    sites: list[Site],
) -> None:
    job = make_job(sites[:1], rounds=1)
    task = sites[0].work()
    with override_settings(CELERY_TASK_ALWAYS_EAGER=False):
        sites[0].upload(task, trained(sites[0].model(task), 1.0))
    Round.objects.filter(pk=task["round_id"]).update(
        aggregation_attempts=training_services.MAX_AGGREGATION_ATTEMPTS
    )
    assert training_services.round_aggregate(round_id=task["round_id"]).version_number is None
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert "attempts" in job.failure_reason


def test_training_stops_early_once_the_validation_loss_stops_improving(
    sites: list[Site], coordinator_client: APIClient, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """Versions 0..3 score 0.7, 0.5, 0.6, 0.65 on the sites' validation rows: with a patience
    of 2, training ends after round 4 (version 1 unbeaten for two versions) and the final
    evaluation follows; version 1 is the best."""
    job = make_job(sites[:1], rounds=10)
    Job.objects.filter(pk=job.pk).update(early_stopping_rounds=2)
    for loss in (0.7, 0.5, 0.6, 0.65):
        task = sites[0].work()
        assert task["kind"] == "train"
        metrics = {"global_log_loss": loss, "global_accuracy": 0.8, "local_accuracy": 0.8}
        with django_capture_on_commit_callbacks(execute=True):
            assert (
                sites[0].upload(task, trained(sites[0].model(task), 0.1), metrics=metrics).status_code == 201
            )
    assert sites[0].work()["kind"] == "evaluate"
    job.refresh_from_db()
    assert job.training_stopped_after == 4
    event = AuditEvent.objects.get(job=job, kind="job.early_stopped")
    assert (event.details["best_version"], event.details["rounds_without_improvement"]) == (1, 2)
    assert coordinator_client.get(f"/api/v1/jobs/{job.pk}/").json()["best_version"] == 1
