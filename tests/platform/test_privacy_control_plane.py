"""The control plane's side of privacy: study checks, DP-FedAvg noise, the budget, the ledger."""

from __future__ import annotations

import numpy as np
import pytest
from platform_world import Site, spec_of, start_job, trained

from audit.models import AuditEvent
from federation.privacy import accounting
from federation.wire import deserialize_weights
from fedplatform.errors import InvalidInput
from training.models import ModelVersion, PrivacySpend, RoundKind

pytestmark = [pytest.mark.django_db, pytest.mark.privacy, pytest.mark.usefixtures("agent_world")]

CLIENT_DP = {
    "differential_privacy": {"level": "client", "clipping_norm": 0.5, "noise_multiplier": 1.0},
    "epsilon": 100.0,
}
SAMPLE_DP = {
    "differential_privacy": {"level": "sample", "clipping_norm": 1.0, "noise_multiplier": 1.2},
    "epsilon": 5.0,
}
DP_STEPS = {"noise_multiplier": 1.2, "sampling_rate": 0.25, "steps": 4}


@pytest.fixture
def sites() -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]


def _answer_round(sites: list[Site], capture, *, shift: float = 10.0, **meta: object) -> list[dict]:  # type: ignore[no-untyped-def]
    tasks = []
    for site in sites:
        task = site.work()
        assert task is not None
        assert task["kind"] == "train"
        with capture(execute=True):
            response = site.upload(task, trained(site.model(task), shift=shift), **meta)
        assert response.status_code == 201, response.content
        tasks.append(task)
    return tasks


def _model(job_id: int, number: int) -> dict[str, np.ndarray]:
    from training.blobs import blob_store

    blob = blob_store().read(ModelVersion.objects.get(job_id=job_id, number=number).sha256)
    return deserialize_weights(blob, spec=spec_of(blob))


@pytest.mark.parametrize(
    ("strategy", "privacy", "message"),
    [
        ("median", {"secure_aggregation": True}, "needs every site's update on its own"),
        ("krum", {"secure_aggregation": True}, "secure aggregation"),
        (
            "fedavg",
            {"secure_aggregation": True, "secure_aggregation_threshold": 1},
            "secure_aggregation_threshold",
        ),
        ("fedavg", {"secure_aggregation": True, "secure_aggregation_threshold": 4}, "between 2"),
        ("fedavg", {"differential_privacy": {"level": "client", "clipping_norm": 1.0}}, "privacy.epsilon"),
        ("fedavg", {"epsilon": 3.0}, "differential_privacy"),
        ("trimmed_mean", CLIENT_DP, "not one"),
        ("fedavg", {"homomorphic": True}, "unknown privacy settings"),
    ],
)
def test_the_study_setup_refuses_privacy_the_study_cannot_honour(
    sites: list[Site], strategy: str, privacy: dict, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        start_job([s.institution for s in sites], name="refused", strategy=strategy, privacy=privacy)


def test_sample_level_dp_needs_a_torch_model(sites: list[Site]) -> None:
    sklearn_model = {"kind": "sklearn_sgd", "task": "binary", "num_features": 3, "num_classes": 2}
    with pytest.raises(InvalidInput, match="torch model"):
        start_job([s.institution for s in sites], name="sk", model=sklearn_model, privacy=SAMPLE_DP)


def test_sample_level_dp_refuses_class_weighting_with_the_reason(sites: list[Site]) -> None:
    training = {"epochs": 1, "class_weighting": True}
    with pytest.raises(InvalidInput, match="one patient's record would change every example's loss"):
        start_job([s.institution for s in sites], name="weighted", privacy=SAMPLE_DP, training=training)
    start_job([s.institution for s in sites], name="weighted", privacy=CLIENT_DP, training=training)


def test_client_level_dp_clips_each_update_and_adds_calibrated_noise(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job = start_job([s.institution for s in sites], name="client-dp", rounds=2, privacy=CLIENT_DP)
    _answer_round(sites, django_capture_on_commit_callbacks, shift=10.0)
    before, after = _model(job.pk, 0), _model(job.pk, 1)
    delta = np.concatenate([(after[name] - before[name]).ravel() for name in before])
    # Unclipped, every weight would move by 10; clipped to 0.5, plus noise of std z*C/n each.
    noise_std = 1.0 * 0.5 / 3
    assert np.linalg.norm(delta) < 0.5 + 6 * noise_std * np.sqrt(delta.size)
    assert np.abs(delta).max() < 5.0
    version = ModelVersion.objects.get(job=job, number=1)
    assert version.provenance["privacy"]["differential_privacy"]["noise_multiplier"] == 1.0


def test_each_site_spends_the_accounted_epsilon_and_the_ledger_shows_it(
    sites: list[Site], django_capture_on_commit_callbacks, coordinator_client
) -> None:  # type: ignore[no-untyped-def]
    job = start_job([s.institution for s in sites], name="ledger", rounds=2, privacy=CLIENT_DP)
    _answer_round(sites, django_capture_on_commit_callbacks)
    _answer_round(sites, django_capture_on_commit_callbacks)
    expected = accounting.client_level_epsilon(noise_multiplier=1.0, rounds=2, delta=1e-5)
    spends = PrivacySpend.objects.filter(job=job)
    assert spends.count() == 3
    assert all(spend.rounds == 2 and spend.epsilon == pytest.approx(expected) for spend in spends)
    body = coordinator_client.get(f"/api/v1/institutions/{sites[0].institution.pk}/privacy-ledger/").json()
    assert body["total_epsilon"] == pytest.approx(expected)
    assert [entry["job"] for entry in body["entries"]] == [job.pk]
    job_body = coordinator_client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert job_body["epsilon_spent"] == pytest.approx(expected)


def test_a_data_owner_reads_only_their_own_ledger(sites: list[Site], make_api_client) -> None:  # type: ignore[no-untyped-def]
    from accounts.models import Role

    owner = make_api_client("dora", Role.DATA_OWNER, sites[0].institution)
    assert owner.get(f"/api/v1/institutions/{sites[0].institution.pk}/privacy-ledger/").status_code == 200
    assert owner.get(f"/api/v1/institutions/{sites[1].institution.pk}/privacy-ledger/").status_code == 404


def test_the_budget_ends_training_before_a_round_would_exceed_it(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    one_round = accounting.client_level_epsilon(noise_multiplier=1.0, rounds=1, delta=1e-5)
    two_rounds = accounting.client_level_epsilon(noise_multiplier=1.0, rounds=2, delta=1e-5)
    budget = (one_round + two_rounds) / 2
    privacy = {**CLIENT_DP, "epsilon": budget}
    job = start_job([s.institution for s in sites], name="budget", rounds=5, privacy=privacy)
    _answer_round(sites, django_capture_on_commit_callbacks)
    job.refresh_from_db()
    assert job.training_stopped_after == 1
    assert job.rounds.order_by("-number").first().kind == RoundKind.EVALUATE
    assert sites[0].work()["kind"] == "evaluate"
    assert AuditEvent.objects.filter(kind="job.privacy_budget_reached", job=job).exists()
    assert max(PrivacySpend.objects.filter(job=job).values_list("epsilon", flat=True)) <= budget


def test_a_budget_too_small_for_one_round_is_refused_when_the_job_is_created(sites: list[Site]) -> None:
    privacy = {**CLIENT_DP, "epsilon": 0.01}
    with pytest.raises(InvalidInput, match="more than the study's budget"):
        start_job([s.institution for s in sites], name="tiny", privacy=privacy)


def test_without_a_noise_multiplier_the_job_gets_the_smallest_that_fits_its_rounds(sites: list[Site]) -> None:
    privacy = {"differential_privacy": {"level": "client", "clipping_norm": 1.0}, "epsilon": 8.0}
    job = start_job([s.institution for s in sites], name="derived", rounds=4, privacy=privacy)
    noise = job.plan.client_noise_multiplier
    assert noise is not None
    spent = accounting.client_level_epsilon(noise_multiplier=noise, rounds=4, delta=1e-5)
    assert spent <= 8.0 + 1e-6
    assert spent > 8.0 * 0.98


def test_sample_level_updates_must_declare_their_dp_steps_which_the_ledger_composes(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    mlp = {"kind": "mlp", "task": "binary", "num_features": 3, "num_classes": 2, "hidden_sizes": [4]}
    job = start_job([s.institution for s in sites], name="sample", model=mlp, rounds=3, privacy=SAMPLE_DP)
    task = sites[0].work()
    missing = sites[0].upload(task, trained(sites[0].model(task), shift=0.1))
    assert missing.status_code == 400
    assert "dp_steps" in missing.json()["error"]["message"]
    _answer_round(sites, django_capture_on_commit_callbacks, shift=0.1, dp_steps=DP_STEPS)
    expected = accounting.sample_level_epsilon(noise_multiplier=1.2, sampling_rate=0.25, steps=4, delta=1e-5)
    spend = PrivacySpend.objects.get(job=job, institution=sites[0].institution)
    assert spend.epsilon == pytest.approx(expected)
    assert spend.level == "sample"
