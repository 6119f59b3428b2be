"""The site's side of a secure-aggregation round: state kept on disk between phases, the
same keys after a restart, and refusals of settings that name another round."""

from __future__ import annotations

import stat
from dataclasses import replace

import numpy as np
import pytest
from agent_fakes import global_model_bytes, make_task
from safetensors.numpy import load

from federation.privacy import secagg
from federation.types import ModelSpec, TensorSpec
from silo_agent.errors import ApiError, TaskError
from silo_agent.runner import TaskOutcome
from silo_agent.secure_round import SecureRound
from silo_agent.tasks import TaskKind, parse_task

pytestmark = pytest.mark.privacy

MODEL = global_model_bytes()


def _raw_task(phase: str, *, round_number: int = 1, **view: object) -> dict[str, object]:
    raw = make_task(MODEL, job_id=4, round_id=21, round_number=round_number)
    sha = raw["model_version"]["sha256"]  # type: ignore[index]
    config = secagg.SecAggConfig(
        round_context=f"fedhealth;job=4;round=1;base={sha}".encode(), threshold=2, dimension=5
    )
    raw["secure_aggregation"] = {"phase": phase, "config": config.to_json(), **view}
    return raw


def _task(phase: str, *, round_number: int = 1, **view: object) -> object:
    return parse_task(_raw_task(phase, round_number=round_number, **view))


def test_a_restarted_agent_advertises_the_same_keys_and_keeps_its_secrets_private(tmp_path):
    first = SecureRound(tmp_path, _task("advertise"), site_id=7).keys()
    again = SecureRound(tmp_path, _task("advertise"), site_id=7).keys()
    assert first == again
    state = tmp_path / "secagg" / "round-21.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def test_settings_that_name_another_round_are_refused(tmp_path):
    with pytest.raises(TaskError, match="another job, round or model"):
        SecureRound(tmp_path, _task("advertise", round_number=2), site_id=7)


def test_lost_keys_end_the_sites_part_in_the_round_with_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match="keys of this round are lost"):
        SecureRound(tmp_path, _task("share", roster={}), site_id=7).shares()


def test_three_sites_reach_the_plain_sum_through_the_phases(tmp_path):
    ids = (7, 8, 9)
    keys = {site: SecureRound(tmp_path / str(site), _task("advertise"), site).keys() for site in ids}
    roster = {str(site): value for site, value in keys.items()}
    bundles = {
        site: SecureRound(tmp_path / str(site), _task("share", roster=roster), site).shares() for site in ids
    }
    spec = ModelSpec((TensorSpec("w", (4,)),))
    start = {"w": np.zeros(4, np.float32)}
    trained = {site: {"w": np.arange(4, dtype=np.float32) * site} for site in ids}
    masked = {}
    for site in ids:
        inbound = {str(sender): bundles[sender][str(site)] for sender in ids if sender != site}
        task = _task("mask", roster=roster, inbound=inbound)
        blob = SecureRound(tmp_path / str(site), task, site).mask(trained[site], start, spec, weight=2.0)
        masked[site] = load(blob)["masked"]
    answers = {}
    for site in ids:
        inbound = {str(sender): bundles[sender][str(site)] for sender in ids if sender != site}
        view = {"roster": roster, "inbound": inbound, "survivors": list(ids), "dropped": []}
        answers[site] = secagg.UnmaskingShares.from_json(
            SecureRound(tmp_path / str(site), _task("unmask", **view), site).unmasking()
        )
    config = secagg.SecAggConfig.from_json(_task("advertise").secure_aggregation["config"])  # type: ignore[index]
    total = secagg.unmask_sum(
        config, secagg.roster_from_json(roster), masked, answers, dropped_after_sharing=[]
    )
    expected = np.concatenate([2.0 * np.arange(4) * sum(ids), [6.0]])
    np.testing.assert_allclose(total, expected, atol=secagg.error_bound(3))


def test_after_a_crash_in_the_mask_phase_the_same_masked_bytes_are_sent_again(tmp_path):
    ids = (7, 8, 9)
    keys = {site: SecureRound(tmp_path / str(site), _task("advertise"), site).keys() for site in ids}
    roster = {str(site): value for site, value in keys.items()}
    bundles = {
        site: SecureRound(tmp_path / str(site), _task("share", roster=roster), site).shares() for site in ids
    }
    inbound = {str(sender): bundles[sender]["7"] for sender in (8, 9)}
    spec = ModelSpec((TensorSpec("w", (4,)),))
    start = {"w": np.zeros(4, np.float32)}
    first = SecureRound(tmp_path / "7", _task("mask", roster=roster, inbound=inbound), 7).mask(
        {"w": np.ones(4, np.float32)}, start, spec, weight=1.0
    )
    # Retrained after a restart (DP-SGD noise differs): the first masked input is sent again.
    again = SecureRound(tmp_path / "7", _task("mask", roster=roster, inbound=inbound), 7).mask(
        {"w": np.full(4, 2.0, np.float32)}, start, spec, weight=1.0
    )
    assert again == first


def test_settings_that_merely_contain_this_rounds_name_are_refused(tmp_path):
    raw_task = _task("advertise")
    config = secagg.SecAggConfig.from_json(raw_task.secure_aggregation["config"])  # type: ignore[index]
    forged = secagg.SecAggConfig(
        round_context=b"other;x" + config.round_context + b"-more", threshold=2, dimension=5
    )
    view = {**raw_task.secure_aggregation, "config": forged.to_json()}  # type: ignore[dict-item]
    with pytest.raises(TaskError, match="another job, round or model"):
        SecureRound(tmp_path, replace(raw_task, secure_aggregation=view), site_id=7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "code", "left"), [(409, "wrong_phase", True), (409, "job_not_running", False)]
)
def test_the_agent_leaves_a_round_it_is_out_of_but_keeps_a_paused_rounds_secrets(
    server, make_harness, status, code, left
):  # type: ignore[no-untyped-def]
    harness = make_harness()
    advertise = _raw_task("advertise")
    assert harness.runner.handle(advertise) is TaskOutcome.SECURE_STEP
    assert server.secagg_messages[0][1] == "keys"
    state = harness.store.directory / "secagg" / "round-21.json"
    assert state.exists()
    server.secagg_error = (status, code)
    config = secagg.SecAggConfig.from_json(advertise["secure_aggregation"]["config"])  # type: ignore[index]
    other = secagg.SecAggClient(site_id=8, config=config).advertise_keys().to_json()
    share = _raw_task("share", roster={"7": server.secagg_messages[0][2], "8": other})
    if left:
        assert harness.runner.handle(share) is TaskOutcome.SECURE_STEP
        assert not state.exists()  # nothing left to protect: the secrets are gone
        assert harness.store.load().is_completed(TaskKind.TRAIN, 21)
    else:
        with pytest.raises(ApiError):
            harness.runner.handle(share)
        assert state.exists()  # a paused job resumes: the round still needs them
