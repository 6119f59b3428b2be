"""The control plane and the simulator aggregate the same inputs into the same bytes: both
call the job's round plan (federation.rounds), and nothing else decides a round."""

from __future__ import annotations

import numpy as np
import pytest
from platform_world import Site, spec_of, start_job, trained

from federation import simulation
from federation.privacy import dp
from federation.privacy.accounting import PrivacyLedgerState
from federation.types import ClientUpdate
from federation.wire import deserialize_weights
from training.blobs import blob_store
from training.models import Job, ModelVersion

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_world")]

NUM_EXAMPLES = [10, 20, 40]
SHIFTS = [0.5, -1.0, 2.0]
CLIENT_DP = {
    "differential_privacy": {"level": "client", "clipping_norm": 0.5, "noise_multiplier": 1.0},
    "epsilon": 100.0,
}
NOISE_SEED = 20260


@pytest.fixture
def sites() -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]


def _weights(version: ModelVersion) -> dict[str, np.ndarray]:
    blob = blob_store().read(version.sha256)
    return deserialize_weights(blob, spec=spec_of(blob))


def _answer_round(sites: list[Site], capture) -> list[ClientUpdate]:  # type: ignore[no-untyped-def]
    """Every site uploads its base model moved by its shift; the updates as the simulator holds them."""
    updates = []
    for site, shift, num_examples in zip(sites, SHIFTS, NUM_EXAMPLES, strict=True):
        task = site.work()
        assert task is not None
        base = site.model(task)
        blob = trained(base, shift=shift)
        with capture(execute=True):
            response = site.upload(task, blob, num_examples=num_examples)
        assert response.status_code == 201, response.content
        updates.append(ClientUpdate(deserialize_weights(blob, spec=spec_of(base)), num_examples))
    return updates


def _simulated(job: Job, updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    """What the simulator's aggregation makes of the same updates under the job's plan."""
    start = _weights(ModelVersion.objects.get(job=job, number=0))
    plan = job.plan
    privacy = None
    if plan.privacy.uses_client_dp:
        mechanism = plan.privacy.differential_privacy
        assert mechanism is not None
        assert plan.client_noise_multiplier is not None
        privacy = simulation._PrivacyRun(
            settings=mechanism,
            noise_multipliers=[plan.client_noise_multiplier],
            ledgers=[PrivacyLedgerState()],
            rng=np.random.default_rng(NOISE_SEED),
        )
    return simulation._aggregate(plan, start, updates, {}, privacy).weights


@pytest.mark.parametrize(
    ("strategy", "privacy"),
    [("fedavg", {}), ("fedadam", {}), ("median", {}), ("fedavg", CLIENT_DP), ("fedavgm", CLIENT_DP)],
    ids=["fedavg", "fedadam", "median", "client-dp-fedavg", "client-dp-fedavgm"],
)
def test_the_control_plane_and_the_simulator_make_the_same_model(
    sites: list[Site], django_capture_on_commit_callbacks, monkeypatch, strategy: str, privacy: dict
) -> None:  # type: ignore[no-untyped-def]
    # The control plane draws its DP noise from the OS; seeded here so both sides draw alike.
    monkeypatch.setattr(dp, "secure_generator", lambda: np.random.default_rng(NOISE_SEED))
    job = start_job(
        [s.institution for s in sites], name=f"parity-{strategy}", strategy=strategy, privacy=privacy
    )
    updates = _answer_round(sites, django_capture_on_commit_callbacks)
    job.refresh_from_db()
    assert job.plan.model_spec is not None  # filled in when the initial model was written
    stored = _weights(ModelVersion.objects.get(job=job, number=1))
    expected = _simulated(job, updates)
    assert stored.keys() == expected.keys()
    for name, array in expected.items():
        assert stored[name].dtype == array.dtype
        np.testing.assert_array_equal(stored[name], array, err_msg=name)
