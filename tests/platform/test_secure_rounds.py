"""Secure-aggregation rounds through the real agent API: each site runs the protocol with
its own SecAggClient, the server only ever stores masked vectors, and the model it makes
equals plaintext FedAvg within the stated error bound, with and without dropouts."""

from __future__ import annotations

import base64
import io
import json
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from platform_world import Site, spec_of, start_job

from federation.aggregation.strategies import FedAvg
from federation.privacy import secagg
from federation.privacy.secure_fedavg import flatten, secure_sum
from federation.types import ClientUpdate
from federation.wire import deserialize_weights
from training import services as training_services
from training.blobs import blob_store
from training.models import JobState, ModelVersion, Round, RoundState
from training.secure_rounds import encode_masked

pytestmark = [pytest.mark.django_db, pytest.mark.privacy, pytest.mark.usefixtures("agent_world")]

SECURE = {"secure_aggregation": True, "secure_aggregation_threshold": 3}
NUM_EXAMPLES = [10, 20, 30, 40, 50]


@pytest.fixture
def sites() -> list[Site]:
    return [Site(f"Hospital {name}") for name in "ABCDE"]


class SecureSite:
    """One site's side of the protocol, driven through the agent API."""

    def __init__(self, site: Site, index: int) -> None:
        self.site, self.index = site, index
        self.client: secagg.SecAggClient | None = None
        self.rng = np.random.default_rng(index)

    def post(self, round_id: int, step: str, body: dict) -> None:
        response = self.site.client.post(
            f"/api/agent/v1/rounds/{round_id}/secagg/{step}", body, format="json"
        )
        assert response.status_code in (200, 201), response.content

    def advertise(self) -> dict:
        task = self.site.work()
        assert task["secure_aggregation"]["phase"] == "advertise"
        config = secagg.SecAggConfig.from_json(task["secure_aggregation"]["config"])
        self.client = secagg.SecAggClient(site_id=self.site.institution.pk, config=config)
        self.post(task["round_id"], "keys", self.client.advertise_keys().to_json())
        return task

    def share(self) -> None:
        task = self.site.work()
        assert task["secure_aggregation"]["phase"] == "share"
        roster = secagg.roster_from_json(task["secure_aggregation"]["roster"])
        bundles = self.client.share_keys(roster)
        shares = {str(peer): base64.b64encode(bundle).decode() for peer, bundle in bundles.items()}
        self.post(task["round_id"], "shares", {"shares": shares})

    def trained_weights(self, task: dict) -> dict[str, np.ndarray]:
        blob = self.site.model(task)
        weights = deserialize_weights(blob, spec=spec_of(blob))
        return {
            name: array + self.rng.normal(0, 1, array.shape).astype(np.float32)
            for name, array in weights.items()
        }

    def mask(self, capture) -> tuple[dict, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        task = self.site.work()
        view = task["secure_aggregation"]
        assert view["phase"] == "mask"
        blob = self.site.model(task)
        spec = spec_of(blob)
        start = deserialize_weights(blob, spec=spec)
        weights = self.trained_weights(task)
        change = flatten(weights, spec) - flatten(start, spec)
        packed = secagg.pack_weighted(change, NUM_EXAMPLES[self.index])
        inbound = {int(sender): base64.b64decode(text) for sender, text in view["inbound"].items()}
        masked = self.client.masked_input(packed, inbound)
        meta = {
            "metrics": {"local_accuracy": 0.5},
            "base_model_sha256": task["model_version"]["sha256"],
            "job_id": task["job_id"],
            "round_number": task["round_number"],
        }
        with capture(execute=True):
            response = self.site.client.post(
                f"/api/agent/v1/rounds/{task['round_id']}/secagg/masked",
                {"meta": json.dumps(meta), "tensors": io.BytesIO(encode_masked(masked))},
                format="multipart",
            )
        assert response.status_code == 201, response.content
        return weights, change, masked

    def unmask(self, capture) -> None:  # type: ignore[no-untyped-def]
        task = self.site.work()
        view = task["secure_aggregation"]
        assert view["phase"] == "unmask"
        inbound = {int(sender): base64.b64decode(text) for sender, text in view["inbound"].items()}
        answer = self.client.unmasking_shares(
            survivors=view["survivors"], dropped=view["dropped"], inbound=inbound
        )
        with capture(execute=True):
            self.post(task["round_id"], "unmasking", answer.to_json())


def _sweep_past_deadline(job_id: int) -> training_services.SweepOutcome:
    Round.objects.filter(job_id=job_id).update(deadline_at=timezone.now() - timedelta(seconds=1))
    return training_services.rounds_sweep()


def _run_round(sites: list[Site], capture, *, drop_before_masking: int = 0, drop_before_unmasking: int = 0):  # type: ignore[no-untyped-def]
    secure = [SecureSite(site, index) for index, site in enumerate(sites)]
    job = start_job(
        sites_of(sites),
        name=f"secure-{drop_before_masking}-{drop_before_unmasking}",
        privacy=SECURE,
        min_updates=3,
    )
    for party in secure:
        party.advertise()
    for party in secure:
        party.share()
    maskers = secure[drop_before_masking:]
    sent = {party.index: party.mask(capture) for party in maskers}
    if drop_before_masking:
        with capture(execute=True):
            assert _sweep_past_deadline(job.pk).closed == 1  # the mask phase ends with the rest
    for party in maskers[drop_before_unmasking:]:
        party.unmask(capture)
    if drop_before_unmasking:
        with capture(execute=True):
            _sweep_past_deadline(job.pk)
    return job, sent


def sites_of(sites: list[Site]) -> list:
    return [site.institution for site in sites]


def _plaintext_fedavg(job_id: int, sent: dict) -> dict[str, np.ndarray]:
    blob = blob_store().read(ModelVersion.objects.get(job_id=job_id, number=0).sha256)
    start = deserialize_weights(blob, spec=spec_of(blob))
    updates = [
        ClientUpdate(weights, num_examples=NUM_EXAMPLES[index]) for index, (weights, _, _) in sent.items()
    ]
    return FedAvg().aggregate(start, updates).weights


@pytest.mark.parametrize(("drop_before_masking", "drop_before_unmasking"), [(0, 0), (1, 0), (2, 0), (0, 1)])
def test_the_secure_model_equals_plaintext_fedavg_within_the_bound(
    sites: list[Site],
    django_capture_on_commit_callbacks,
    drop_before_masking: int,
    drop_before_unmasking: int,
) -> None:  # type: ignore[no-untyped-def]
    job, sent = _run_round(
        sites,
        django_capture_on_commit_callbacks,
        drop_before_masking=drop_before_masking,
        drop_before_unmasking=drop_before_unmasking,
    )
    version = ModelVersion.objects.get(job=job, number=1)
    blob = blob_store().read(version.sha256)
    secure = deserialize_weights(blob, spec=spec_of(blob))
    expected = _plaintext_fedavg(job.pk, sent)
    # Error on the sum of n_i * change: at most sites * 2^-25; divided by sum(n_i) >= 90.
    bound = secagg.error_bound(5) / 90 + 1e-6  # plus float32 rounding of the stored model
    for name in expected:
        np.testing.assert_allclose(secure[name], expected[name], atol=bound, rtol=0)
    assert version.provenance["details"]["secure_aggregation_sites"] == 5 - drop_before_masking


def test_the_control_plane_makes_the_simulators_model_byte_for_byte(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """The masks cancel exactly in the ring, so the unmasked sum, and through the job's round
    plan the model, equal what the simulator's in-process protocol makes of the same updates."""
    job, sent = _run_round(sites, django_capture_on_commit_callbacks)
    job.refresh_from_db()
    start = deserialize_weights(
        blob_store().read(ModelVersion.objects.get(job=job, number=0).sha256), spec=job.plan.model_spec
    )
    updates = [
        ClientUpdate(weights, num_examples=NUM_EXAMPLES[index]) for index, (weights, _, _) in sent.items()
    ]
    expected = job.plan.aggregate(start, secure_sum(start, updates, plan=job.plan))
    blob = blob_store().read(ModelVersion.objects.get(job=job, number=1).sha256)
    stored = deserialize_weights(blob, spec=spec_of(blob))
    for name, array in expected.weights.items():
        np.testing.assert_array_equal(stored[name], array, err_msg=name)


def test_the_server_stores_only_masked_vectors_and_no_site_weight(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    job, sent = _run_round(sites, django_capture_on_commit_callbacks)
    round_ = Round.objects.get(job=job, number=1)
    for update in round_.updates.all():
        stored = secagg_vector(blob_store().read(update.sha256))
        index = next(i for i, s in enumerate(sites) if s.institution.pk == update.institution_id)
        _, change, masked = sent[index]
        np.testing.assert_array_equal(stored, masked)
        plain = secagg.encode(secagg.pack_weighted(change, NUM_EXAMPLES[index]), num_summands=5)
        # Every coordinate differs from the site's encoded input: the self mask alone sees to
        # it (equal by chance with probability 2^-64 each). The statistical test of
        # uncorrelatedness on large vectors is in tests/federation/privacy/test_secagg.py.
        assert np.all(stored != plain)
        assert update.num_examples == 1  # the weight travels inside the masked sum


def secagg_vector(data: bytes) -> np.ndarray:
    from safetensors.numpy import load

    return load(data)["masked"]


def test_fewer_survivors_than_the_threshold_fail_the_round_and_unmask_nothing(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    secure = [SecureSite(site, index) for index, site in enumerate(sites)]
    job = start_job(sites_of(sites), name="too-few", privacy=SECURE, min_updates=3)
    for party in secure:
        party.advertise()
    for party in secure:
        party.share()
    for party in secure[:2]:  # 2 masked inputs: below the threshold of 3
        party.mask(django_capture_on_commit_callbacks)
    assert _sweep_past_deadline(job.pk).extended == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert _sweep_past_deadline(job.pk).failed == 1
    job.refresh_from_db()
    round_ = Round.objects.get(job=job, number=1)
    assert (job.state, round_.state) == (JobState.FAILED, RoundState.FAILED)
    assert "secure aggregation needs 3" in round_.failure_reason
    assert not round_.secagg_messages.filter(kind="unmasking").exists()
    assert not ModelVersion.objects.filter(job=job, number=1).exists()


def test_a_site_that_dropped_out_gets_no_further_work_and_cannot_rejoin(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    secure = [SecureSite(site, index) for index, site in enumerate(sites)]
    job = start_job(sites_of(sites), name="rejoin", privacy=SECURE, min_updates=3)
    tasks = [party.advertise() for party in secure[1:]]
    _sweep_past_deadline(job.pk)  # the advertise phase ends with four sites
    assert sites[0].work() is None
    late = secagg.SecAggClient(
        site_id=sites[0].institution.pk,
        config=secagg.SecAggConfig.from_json(tasks[0]["secure_aggregation"]["config"]),
    )
    response = sites[0].client.post(
        f"/api/agent/v1/rounds/{tasks[0]['round_id']}/secagg/keys",
        late.advertise_keys().to_json(),
        format="json",
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "wrong_phase"


def test_a_masked_upload_of_the_wrong_form_is_refused_with_a_clear_error(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    secure = [SecureSite(site, index) for index, site in enumerate(sites)]
    start_job(sites_of(sites), name="wrong-form", privacy=SECURE, min_updates=3)
    for party in secure:
        party.advertise()
    for party in secure:
        party.share()
    task = sites[0].work()
    meta = {
        "metrics": {},
        "base_model_sha256": task["model_version"]["sha256"],
        "job_id": task["job_id"],
        "round_number": task["round_number"],
    }
    response = sites[0].client.post(
        f"/api/agent/v1/rounds/{task['round_id']}/secagg/masked",
        {"meta": json.dumps(meta), "tensors": io.BytesIO(encode_masked(np.zeros(3, np.uint64)))},
        format="multipart",
    )
    assert response.status_code == 400
    assert "exactly" in response.json()["error"]["message"]


def test_robust_rules_and_weight_caps_are_refused_with_secure_aggregation(sites: list[Site]) -> None:
    from fedplatform.errors import InvalidInput

    with pytest.raises(InvalidInput, match="needs every site's update on its own"):
        start_job(sites_of(sites), name="median", strategy="median", privacy=SECURE, min_updates=3)


def _through_share_phase(sites: list[Site], name: str, **job_options: object) -> list[SecureSite]:
    secure = [SecureSite(site, index) for index, site in enumerate(sites)]
    start_job(sites_of(sites), name=name, privacy=SECURE, **job_options)  # type: ignore[arg-type]
    for party in secure:
        party.advertise()
    for party in secure:
        party.share()
    return secure


def test_a_plain_update_is_refused_in_a_secure_round_and_nothing_is_stored(sites: list[Site]) -> None:
    _through_share_phase(sites, "plain-in-secure", min_updates=3)
    task = sites[0].work()
    blob = sites[0].model(task)
    response = sites[0].upload(task, blob)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "secure_round"
    assert not Round.objects.get(pk=task["round_id"]).updates.exists()


def test_a_retry_after_the_phase_moved_on_gets_its_first_answer(sites: list[Site]) -> None:
    secure = _through_share_phase(sites, "retry", min_updates=3)
    task = sites[0].work()
    assert task["secure_aggregation"]["phase"] == "mask"  # every site's keys moved the round on
    keys = secure[0].client.advertise_keys().to_json()
    response = sites[0].client.post(
        f"/api/agent/v1/rounds/{task['round_id']}/secagg/keys", keys, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {"duplicate": True}


def test_a_secure_round_never_ends_with_fewer_than_the_jobs_quorum(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    secure = _through_share_phase(sites, "quorum")  # min_updates: all 5 sites
    for party in secure[1:]:
        party.mask(django_capture_on_commit_callbacks)
    job_id = Round.objects.get(secure_aggregation__phase="mask").job_id
    assert _sweep_past_deadline(job_id).extended == 1
    assert _sweep_past_deadline(job_id).failed == 1
    assert "secure aggregation needs 5" in Round.objects.get(job_id=job_id).failure_reason


def test_an_unmasking_answer_must_hold_exactly_the_shares_asked_for(
    sites: list[Site], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    secure = _through_share_phase(sites, "exact-shares", min_updates=3)
    for party in secure:
        party.mask(django_capture_on_commit_callbacks)
    task = sites[0].work()
    view = task["secure_aggregation"]
    inbound = {int(sender): base64.b64decode(text) for sender, text in view["inbound"].items()}
    answer = secure[0].client.unmasking_shares(survivors=view["survivors"][:3], dropped=[], inbound=inbound)
    response = sites[0].client.post(
        f"/api/agent/v1/rounds/{task['round_id']}/secagg/unmasking", answer.to_json(), format="json"
    )
    assert response.status_code == 400
    assert "exactly the round's survivors" in response.json()["error"]["message"]
