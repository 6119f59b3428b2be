"""The command line end to end against the fake server: enroll, run, status, moments."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import stat

import httpx
import numpy as np
import pytest
from agent_fakes import INSTITUTION, KEY, FakeServer, global_model_bytes, make_task, write_site

from federation.data import DataSchema, FeatureSpec, load_builtin, load_csv, local_moments
from federation.types import Task
from silo_agent.cli import Runtime, main
from silo_agent.client import RetryPolicy
from silo_agent.state import STATE_FILE


def runtime_for(server: FakeServer, **overrides: object) -> Runtime:
    options: dict[str, object] = {
        "transport": server.transport,
        "sleep": server.clock.sleep,
        "clock": server.clock,
        "rng": random.Random(0),
        "retry": RetryPolicy(max_attempts=2),
        "setup_logging": False,
        "handle_signals": False,
    }
    options.update(overrides)
    return Runtime(**options)  # type: ignore[arg-type]


def run(server: FakeServer, *argv: str, **overrides: object) -> int:
    return main(list(argv), runtime_for(server, **overrides))


# --- enroll ----------------------------------------------------------------------------


def test_enroll_writes_a_private_credential_file(tmp_path, server, capsys):
    site = write_site(tmp_path, enrolled=False)

    assert run(server, "enroll", "--config", str(site.config_path), "--token", "enroll-token-1") == 0

    mode = stat.S_IMODE(site.credential_path.stat().st_mode)
    assert mode == 0o600
    saved = json.loads(site.credential_path.read_text())
    assert saved == {
        "server_url": "https://fl.example.org",
        "credential_id": 3,
        "institution": INSTITUTION,
        "key": KEY,
    }
    assert server.enroll_bodies[0]["token"] == "enroll-token-1"
    assert {"agent_version", "hostname"} <= set(server.enroll_bodies[0])
    output = capsys.readouterr().out
    assert "St. Example" in output
    assert KEY not in output


def test_enroll_refuses_to_overwrite_without_force_and_keeps_the_token_unused(tmp_path, server, capsys):
    site = write_site(tmp_path, enrolled=True)
    before = site.credential_path.read_text()

    assert run(server, "enroll", "--config", str(site.config_path), "--token", "enroll-token-1") == 2

    assert site.credential_path.read_text() == before
    assert server.enroll_bodies == []
    assert "--force" in capsys.readouterr().err


def test_enroll_with_force_replaces_the_credential(tmp_path, server):
    site = write_site(tmp_path, enrolled=True)
    server.key = "fha_4_a-new-key"
    arguments = ("enroll", "--config", str(site.config_path), "--token", "enroll-token-1", "--force")
    assert run(server, *arguments) == 0
    assert json.loads(site.credential_path.read_text())["key"] == "fha_4_a-new-key"


def test_a_refused_enrollment_token_exits_3(tmp_path, server, capsys):
    site = write_site(tmp_path, enrolled=False)
    assert run(server, "enroll", "--config", str(site.config_path), "--token", "wrong") == 3
    assert not site.credential_path.exists()
    assert "invalid_token" in capsys.readouterr().err


# --- run -------------------------------------------------------------------------------


def test_run_handles_a_whole_job_then_exits_when_idle(tmp_path, server):
    site = write_site(tmp_path)
    model = global_model_bytes()
    server.offer(make_task(model, round_id=1, round_number=1), model)
    server.offer(make_task(model, round_id=2, round_number=2), model)
    server.offer(make_task(model, kind="evaluate", round_id=3, round_number=2), model)

    assert run(server, "run", "--config", str(site.config_path), "--exit-when-idle", "100") == 0

    assert sorted(server.stored_updates) == [1, 2]
    assert list(server.evaluations) == [3]
    state = json.loads((site.state_dir / STATE_FILE).read_text())
    assert state["completed"] == ["train:1", "train:2", "evaluate:3"]


def test_run_heartbeats_at_start_and_at_most_every_30_seconds(tmp_path, server):
    site = write_site(tmp_path)
    started = server.clock()

    assert run(server, "run", "--config", str(site.config_path), "--exit-when-idle", "100") == 0

    times = server.heartbeat_times
    assert times[0] == started
    assert len(times) == 2  # polls of 25 s: a heartbeat at 0 s and at 50 s
    assert all(later - earlier >= 30 for earlier, later in itertools.pairwise(times))
    assert server.clock() - started >= 100


def test_heartbeats_report_the_limits_of_the_sites_policy(tmp_path, server):
    policy = 'approved_studies = ["*"]\nmax_rounds = 12\n[policy.privacy]\nrequire_secure_aggregation = true'
    site = write_site(tmp_path, policy=policy)
    assert run(server, "run", "--config", str(site.config_path), "--once") == 0
    reported = server.heartbeat_bodies[0]["policy"]
    assert (reported["max_rounds"], reported["require_secure_aggregation"]) == (12, True)
    assert reported["max_epsilon"] is None  # no cap
    assert "approved_studies" not in reported  # which studies it approves stays at the site


def test_run_once_handles_one_task_only(tmp_path, server):
    site = write_site(tmp_path)
    model = global_model_bytes()
    server.offer(make_task(model, round_id=1), model)
    server.offer(make_task(model, kind="evaluate", round_id=2), model)

    assert run(server, "run", "--config", str(site.config_path), "--once") == 0

    assert list(server.stored_updates) == [1]
    assert server.evaluations == {}


def test_run_once_without_work_polls_once(tmp_path, server):
    site = write_site(tmp_path)
    assert run(server, "run", "--config", str(site.config_path), "--once") == 0
    assert server.count("GET", "work") == 1


def test_a_revoked_credential_exits_3(tmp_path, server, capsys):
    site = write_site(tmp_path)
    server.revoked = True
    assert run(server, "run", "--config", str(site.config_path), "--exit-when-idle", "100") == 3
    assert "credential_revoked" in capsys.readouterr().err
    assert len(server.requests) == 1  # no retry loop against a revoked credential


def test_run_survives_an_outage_and_a_failed_task(tmp_path, server):
    site = write_site(tmp_path)
    model = global_model_bytes()
    server.offer(make_task(model, round_id=1), model)
    server.faults["work"] = [httpx.ConnectError("down"), httpx.ConnectError("down")]
    server.faults["models/12"] = [404]

    assert run(server, "run", "--config", str(site.config_path), "--exit-when-idle", "600") == 0

    assert list(server.stored_updates) == [1]


def test_run_refuses_a_credential_issued_by_another_server(tmp_path, server, capsys):
    site = write_site(tmp_path)
    credential = json.loads(site.credential_path.read_text())
    site.credential_path.write_text(json.dumps({**credential, "server_url": "https://elsewhere.example.org"}))

    assert run(server, "run", "--config", str(site.config_path), "--once") == 2
    assert server.requests == []
    assert "enroll again" in capsys.readouterr().err


def test_sigterm_stops_the_agent_cleanly(tmp_path, server):
    site = write_site(tmp_path)
    server.on_work = lambda: os.kill(os.getpid(), signal.SIGTERM)
    previous = signal.getsignal(signal.SIGTERM)

    assert run(server, "run", "--config", str(site.config_path), handle_signals=True) == 0

    assert server.count("GET", "work") == 1
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_missing_config_file_exits_2(tmp_path, server):
    assert run(server, "run", "--config", str(tmp_path / "absent.toml")) == 2


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "exit codes" in help_text
    assert "3  credential rejected or revoked" in help_text


# --- status ----------------------------------------------------------------------------


def test_status_shows_local_state_and_the_servers_view(tmp_path, server, capsys):
    site = write_site(tmp_path)
    model = global_model_bytes()
    server.offer(make_task(model, job_id=1, round_id=4, round_number=2), model)
    run(server, "run", "--config", str(site.config_path), "--once")
    capsys.readouterr()

    assert run(server, "status", "--config", str(site.config_path)) == 0

    output = capsys.readouterr().out
    assert "St. Example (institution 7)" in output
    assert "job 1 round 2 (round id 4, train): uploaded" in output
    assert "study 1 'breast-cancer-pilot': approved" in output
    assert KEY not in output


def test_status_when_the_server_is_unreachable_exits_4_after_printing_local_state(tmp_path, server, capsys):
    site = write_site(tmp_path)
    server.faults["me"] = [httpx.ConnectError("down"), httpx.ConnectError("down")]

    assert run(server, "status", "--config", str(site.config_path)) == 4

    output = capsys.readouterr().out
    assert "St. Example (institution 7)" in output
    assert "no round in progress" in output
    assert "unreachable" in output


# --- moments ---------------------------------------------------------------------------


def test_moments_of_a_builtin_share_are_its_local_moments(tmp_path, server, capsys):
    site = write_site(tmp_path)

    assert run(server, "moments", "--config", str(site.config_path)) == 0

    printed = json.loads(capsys.readouterr().out)
    expected = local_moments(load_builtin("breast_cancer").subset(site.rows).features)
    assert set(printed) == {"count", "sum", "sum_sq"}
    assert printed["count"] == len(site.rows) == expected.count
    np.testing.assert_allclose(printed["sum"], expected.sum)
    np.testing.assert_allclose(printed["sum_sq"], expected.sum_sq)


def _csv_site(tmp_path):
    schema = DataSchema(
        features=(
            FeatureSpec("age"),
            FeatureSpec("smoker", kind="boolean"),
            FeatureSpec("ward", kind="categorical", categories=("a", "b")),
        ),
        label="outcome",
        task=Task.BINARY,
        classes=("no", "yes"),
    )
    (tmp_path / "schema.json").write_text(json.dumps(schema.to_json()))
    (tmp_path / "site.csv").write_text("age,smoker,ward,outcome\n50,yes,a,no\n61,no,b,yes\n72,no,b,yes\n")
    config = (
        'server_url = "https://fl.example.org"\n[data]\npath = "site.csv"\n[policy]\napproved_studies = []\n'
    )
    (tmp_path / "agent.toml").write_text(config)
    return schema


def test_moments_of_a_csv_use_the_schemas_encoding(tmp_path, server, capsys):
    schema = _csv_site(tmp_path)
    arguments = (
        "moments",
        "--config",
        str(tmp_path / "agent.toml"),
        "--schema",
        str(tmp_path / "schema.json"),
    )

    assert run(server, *arguments) == 0

    printed = json.loads(capsys.readouterr().out)
    expected = local_moments(load_csv(tmp_path / "site.csv", schema).features)
    assert printed == expected.to_json()
    assert printed["sum"] == [183.0, 1.0, 1.0, 2.0]


def test_moments_of_a_csv_need_the_schema(tmp_path, server, capsys):
    _csv_site(tmp_path)
    assert run(server, "moments", "--config", str(tmp_path / "agent.toml")) == 2
    assert "--schema" in capsys.readouterr().err
