"""A hostile site: metric and count extremes in training, evaluation and secure rounds.

One enrolled site sends what an attacker would: finite but absurd metrics, example counts
of every wrong type and size, unknown metric names. Nothing may reach a 5xx, the honest
site's answers keep working, a round that cannot be processed fails with a reason, and a
failure in one round never stops the sweep from serving every other job.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from platform_world import Site, make_job, spec_of, start_job, trained
from safetensors.numpy import load as safetensors_load

from audit.models import AuditEvent
from federation.wire import deserialize_weights, serialize_weights
from training import queue as training_queue
from training.blobs import blob_store
from training.models import Job, JobState, Round, RoundKind, RoundState, Update
from training.services import aggregation as aggregation_services
from training.services import rounds as training_rounds
from training.tasks import round_aggregate_task, rounds_sweep_task

pytestmark = [pytest.mark.security, pytest.mark.django_db]

BAD_COUNTS = [10**9 + 1, 0, -1, "100", 100.0, True, None, [100], 2**63]
BAD_METRICS = [
    {"global_accuracy": 1e308},
    {"global_accuracy": 10**400},
    {"global_accuracy": 1.5},
    {"local_accuracy": -0.1},
    {"global_roc_auc": 2.0},
    {"global_log_loss": -1.0},
    {"global_mse": 1e300},
    {"global_r2": 1.5},
    {"global_accuracy": "0.9"},
    {"global_accuracy": True},
    {"favourite_colour": 0.5},
    {"accuracy_global": 0.5},
    {f"global_accuracy{index}": 0.5 for index in range(100)},
    [0.5],
]


@pytest.fixture(autouse=True)
def _isolated(agent_world: None) -> None:
    """Every test here drives agents through the API (tests/world_fixtures.py)."""


@pytest.fixture
def sites() -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B")]


def _evaluate(site: Site, task: dict, num_examples: object, metrics: object):  # type: ignore[no-untyped-def]
    return site.client.post(
        f"/api/agent/v1/rounds/{task['round_id']}/evaluation",
        {"num_examples": num_examples, "metrics": metrics},
        format="json",
    )


def _to_evaluation_round(sites: list[Site], capture) -> dict:  # type: ignore[no-untyped-def]
    """Round 1 trained by both sites; returns the hostile site's evaluation task."""
    for site in sites:
        task = site.work()
        with capture(execute=True):
            assert site.upload(task, trained(site.model(task), 0.1)).status_code == 201
    task = sites[1].work()
    assert task["kind"] == "evaluate"
    return task


@pytest.mark.parametrize("num_examples", BAD_COUNTS)
def test_a_training_update_with_a_bad_example_count_is_refused(
    sites: list[Site], num_examples: object
) -> None:
    make_job(sites)
    hostile = sites[1]
    task = hostile.work()
    response = hostile.upload(task, trained(hostile.model(task), 0.1), num_examples=num_examples)  # type: ignore[arg-type]
    assert response.status_code == 400, response.content
    assert "num_examples" in json.dumps(response.json())
    assert not Update.objects.exists()


@pytest.mark.parametrize("metrics", BAD_METRICS)
def test_a_training_update_with_absurd_or_unknown_metrics_is_refused(
    sites: list[Site], metrics: object
) -> None:
    make_job(sites)
    hostile = sites[1]
    task = hostile.work()
    response = hostile.upload(task, trained(hostile.model(task), 0.1), metrics=metrics)
    assert response.status_code == 400, response.content
    assert "metric" in json.dumps(response.json())
    assert not Update.objects.exists()


def test_the_largest_allowed_report_keeps_the_combination_finite(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """The bounds hold each other in check: the extremes that are allowed cannot overflow."""
    job = make_job(sites)
    extremes = {"global_accuracy": 1.0, "global_mse": 1e12, "global_r2": -1e12, "local_log_loss": 1e12}
    for site, count in zip(sites, (1, 10**9), strict=True):
        task = site.work()
        with django_capture_on_commit_callbacks(execute=True):
            response = site.upload(task, trained(site.model(task), 0.1), num_examples=count, metrics=extremes)
        assert response.status_code == 201, response.content
    closed = job.rounds.get(number=1)
    assert closed.state == RoundState.CLOSED
    assert closed.metrics["global_mse"] == pytest.approx(1e12)
    assert closed.metrics["global_accuracy"] == 1.0


@pytest.mark.parametrize(
    ("num_examples", "metrics"),
    [(10**9, {"accuracy": 1e308}), ("2", {"accuracy": 0.9}), (10, {"accuracy": 10**400})],
)
def test_a_hostile_evaluation_is_refused_and_the_honest_one_still_closes_the_round(
    sites: list[Site], django_capture_on_commit_callbacks, num_examples: object, metrics: object
) -> None:  # type: ignore[no-untyped-def]
    job = make_job(sites, rounds=1)
    task = _to_evaluation_round(sites, django_capture_on_commit_callbacks)
    refused = _evaluate(sites[1], task, num_examples, metrics)
    assert refused.status_code == 400, refused.content
    honest_task = sites[0].work()
    with django_capture_on_commit_callbacks(execute=True):
        for attempt in range(2):  # a retry gets the first answer again, never a 500
            honest = _evaluate(sites[0], honest_task, 80, {"accuracy": 0.9, "log_loss": 0.3})
            assert honest.status_code == (201 if attempt == 0 else 200), honest.content
        late = _evaluate(sites[1], task, 20, {"accuracy": 0.5})
    assert late.status_code in {201, 409}, late.content
    job.refresh_from_db()
    evaluation = job.rounds.get(kind=RoundKind.EVALUATE)
    if late.status_code == 201:
        assert evaluation.state == RoundState.CLOSED
        assert evaluation.metrics["accuracy"] == pytest.approx((0.9 * 80 + 0.5 * 20) / 100)
    assert "1e+308" not in json.dumps(evaluation.metrics)


@pytest.mark.parametrize("metrics", [{"global_accuracy": 1e308}, {"colour": 1.0}, {"global_mse": 10**400}])
def test_a_masked_update_with_absurd_metrics_is_refused(sites: list[Site], metrics: object) -> None:
    make_job(sites)
    task = sites[1].work()
    meta = {
        "metrics": metrics,
        "base_model_sha256": task["model_version"]["sha256"],
        "job_id": task["job_id"],
        "round_number": task["round_number"],
    }
    response = sites[1].client.post(
        f"/api/agent/v1/rounds/{task['round_id']}/secagg/masked",
        {"meta": json.dumps(meta), "tensors": io.BytesIO(b"\x00" * 64)},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert "metric" in json.dumps(response.json())


def _poisoned_evaluation_round(job: Job, sites: list[Site]) -> Round:
    """An evaluation round past its deadline holding a report that overflows when combined.

    Written straight to the database, as a report accepted before the checks existed would be.
    """
    evaluation = job.rounds.get(kind=RoundKind.EVALUATE)
    for site, count in zip(sites, (10**9, 10**9), strict=True):
        Update.objects.create(
            round=evaluation,
            institution=site.institution,
            credential_id=site.credential_id,
            num_examples=count,
            metrics={"accuracy": 1e308},
            sha256="",
            size=0,
        )
    Round.objects.filter(pk=evaluation.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    return evaluation


def test_one_poisoned_round_fails_with_a_reason_and_the_sweep_serves_every_other_job(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    poisoned_job = make_job(sites, rounds=1)
    _to_evaluation_round(sites, django_capture_on_commit_callbacks)
    poisoned = _poisoned_evaluation_round(poisoned_job, sites)
    others = [Site("Hospital C"), Site("Hospital D")]
    other_job = make_job(others, rounds=2, min_updates=1)
    task = others[0].work()
    assert others[0].upload(task, trained(others[0].model(task), 0.1)).status_code == 201
    Round.objects.filter(job=other_job, number=1).update(deadline_at=timezone.now() - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        outcome = rounds_sweep_task()

    poisoned.refresh_from_db()
    assert poisoned.state == RoundState.FAILED
    assert "cannot be combined" in poisoned.failure_reason
    assert "accuracy" in poisoned.failure_reason
    other_job.refresh_from_db()
    assert other_job.state == JobState.RUNNING
    assert other_job.rounds.get(number=1).state == RoundState.CLOSED  # closed at its deadline
    assert other_job.rounds.get(number=2).state == RoundState.OPEN
    assert outcome["closed"] >= 1


def test_an_unexpected_error_in_one_round_never_stops_the_sweep(
    sites: list[Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_job(sites, rounds=2, min_updates=1), make_job(sites, rounds=3, min_updates=1)
    for job in (first, second):
        task = sites[0].work()
        assert sites[0].upload(task, trained(sites[0].model(task), 0.1)).status_code == 201
        Round.objects.filter(job=job, number=1).update(deadline_at=timezone.now() - timedelta(seconds=1))
    broken_round = first.rounds.get(number=1).pk
    real_deadline = training_rounds._round_deadline

    def deadline_that_breaks_on_one_round(round_id: int) -> str:
        if round_id == broken_round:
            raise RuntimeError("the kind of bug nobody foresaw")
        return real_deadline(round_id)

    monkeypatch.setattr(training_rounds, "_round_deadline", deadline_that_breaks_on_one_round)
    outcome = rounds_sweep_task()
    assert outcome["failed"] == 1
    broken = Round.objects.get(pk=broken_round)
    assert broken.state == RoundState.FAILED
    assert broken.failure_reason.startswith("internal error (RuntimeError)")
    first.refresh_from_db()
    assert first.state == JobState.FAILED
    assert second.rounds.get(number=1).state in {RoundState.AGGREGATING, RoundState.CLOSED}


def test_an_aggregation_that_raises_an_unexpected_error_fails_its_round_with_the_reason(
    sites: list[Site],
) -> None:
    job = make_job(sites, rounds=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_queue, "round_aggregate_enqueue", lambda round_id: None)
        for site in sites:
            task = site.work()
            assert site.upload(task, trained(site.model(task), 0.1)).status_code == 201
    round_ = job.rounds.get(number=1)
    assert round_.state == RoundState.AGGREGATING
    # A stored update vanished from the blob store: not a FederationError, yet no stall.
    blob_store().path(round_.updates.first().sha256).unlink()
    assert round_aggregate_task(round_.pk) is None
    round_.refresh_from_db()
    assert round_.state == RoundState.FAILED
    assert "internal error" in round_.failure_reason
    job.refresh_from_db()
    assert job.state == JobState.FAILED


# --- updates of absurd magnitude: the study's update norm bound --------------------------


def _absurd(blob: bytes) -> bytes:
    """Every value at the float32 limit: finite, so the wire format lets it through."""
    weights = deserialize_weights(blob, spec=spec_of(blob))
    return serialize_weights({name: np.full_like(array, 3.4e38) for name, array in weights.items()})


def _norm_bound_job(sites: list[Site], action: str) -> Job:
    return start_job(
        [site.institution for site in sites],
        name=f"bounded-{action}",
        rounds=2,
        update_norm_bound={"max_ratio": 2.0, "action": action},
    )


def test_without_a_bound_an_absurd_update_is_taken_as_it_is(sites: list[Site]) -> None:
    """What the bound is for: the wire format takes finite values of any size."""
    make_job(sites)
    task = sites[1].work()
    assert sites[1].upload(task, _absurd(sites[1].model(task))).status_code == 201


def test_an_update_beyond_the_refuse_bound_is_refused_and_audited(sites: list[Site]) -> None:
    _norm_bound_job(sites, "refuse")
    task = sites[1].work()
    base = sites[1].model(task)
    response = sites[1].upload(task, _absurd(base))
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "update_norm_exceeded"
    assert not Update.objects.exists()
    event = AuditEvent.objects.get(kind="update.refused_norm")
    global_norm = float(np.linalg.norm(_flat(base)))
    assert event.details["limit"] == pytest.approx(2.0 * max(global_norm, 1.0))
    assert event.details["change_norm"] > 1e38
    honest = sites[0].work()
    assert sites[0].upload(honest, trained(sites[0].model(honest), 0.01)).status_code == 201


def test_an_update_beyond_the_clip_bound_is_clipped_onto_it_and_audited(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = _norm_bound_job(sites, "clip")
    task = sites[1].work()
    base = sites[1].model(task)
    absurd = _absurd(base)
    first = sites[1].upload(task, absurd)
    assert first.status_code == 201, first.content
    assert sites[1].upload(task, absurd).status_code == 200  # a retry: the same clipped blob, once
    stored = blob_store().read(Update.objects.get().sha256)
    change = _flat(stored).astype(np.float64) - _flat(base)
    limit = 2.0 * max(float(np.linalg.norm(_flat(base))), 1.0)
    assert np.linalg.norm(change) == pytest.approx(limit, rel=1e-4)
    assert AuditEvent.objects.filter(kind="update.clipped").count() == 2
    honest = sites[0].work()
    with django_capture_on_commit_callbacks(execute=True):
        assert sites[0].upload(honest, trained(sites[0].model(honest), 0.01)).status_code == 201
    version = job.model_versions.get(number=1)
    assert np.all(np.isfinite(_flat(blob_store().read(version.sha256))))
    assert np.max(np.abs(_flat(blob_store().read(version.sha256)))) < 1e3


def _flat(blob: bytes) -> np.ndarray:
    weights = safetensors_load(blob)
    return np.concatenate([weights[name].ravel() for name in sorted(weights)]).astype(np.float64)


def test_a_lost_job_start_is_enqueued_again_once_per_delay_not_every_sweep(
    sites: list[Site], settings, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from studies.models import Study
    from training.services import job_create, job_start

    make_job(sites)  # a study to reuse
    job = job_create(
        study=Study.objects.get(),
        num_rounds=1,
        min_updates=1,
        round_deadline_seconds=60,
        max_deadline_extensions=0,
        actor="user:test",
    )
    job_start(job_id=job.pk, actor="user:test")  # its worker message never runs (no commit here)
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(hours=1))
    enqueued: list[int] = []
    monkeypatch.setattr(training_queue, "job_begin_enqueue", enqueued.append)
    for _ in range(3):
        rounds_sweep_task()
    assert enqueued == [job.pk]


def test_an_io_fault_during_aggregation_leaves_the_round_to_be_retried(
    sites: list[Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is the machine's fault, not the round's: the round stays AGGREGATING for
    the sweep to start again (up to MAX_AGGREGATION_ATTEMPTS), it is not failed at once."""
    job = make_job(sites, rounds=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_queue, "round_aggregate_enqueue", lambda round_id: None)
        for site in sites:
            task = site.work()
            assert site.upload(task, trained(site.model(task), 0.1)).status_code == 201
    round_ = job.rounds.get(number=1)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aggregation_services, "_aggregation_commit", disk_full)
    with pytest.raises(OSError, match="No space left"):
        round_aggregate_task(round_.pk)
    round_.refresh_from_db()
    assert round_.state == RoundState.AGGREGATING
    assert round_.aggregation_attempts == 1
