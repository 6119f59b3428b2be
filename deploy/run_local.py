"""A whole federation on this machine, as separate processes talking HTTP.

Starts the control plane (gunicorn), a Celery worker and Celery beat, and one silo agent
per site, each holding one share of a built-in data set; sets up institutions, a study and
a job through the REST API exactly as a coordinator would; follows the job round by round;
then evaluates the final model on rows that no site ever saw and compares it with pooled
and local-only training. The last line printed is one JSON object with the figures.

    python deploy/run_local.py                          # embedded default: SQLite, no broker server
    python deploy/run_local.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --broker-url redis://127.0.0.1:6379/0           # the production stack
    python deploy/run_local.py --privacy '{"secure_aggregation": true}'   # docs/privacy.md
    python deploy/run_local.py --csv a.csv b.csv c.csv --schema schema.json --test test.csv
                                                        # the consortium's own files, one per site

Every process it starts is stopped when it ends, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The pieces, importable from here too (the crash drills, the browser tests and the benches
# use them through this module): deploy/local/ holds them.
from deploy.local.bootstrap import (  # noqa: E402
    Api,
    Json,
    Site,
    agent_command,
    agree_scaling,
    agreed_scaling,
    approve_study,
    builtin_schema,
    create_user,
    enroll_sites,
    follow_job,
    run_agent_command,
    split_data,
    start_agents,
    study_body,
    write_site,
    write_sites,
)
from deploy.local.figures import figures, privacy_figures, timing_figures  # noqa: E402
from deploy.local.own_data import (  # noqa: E402
    OwnData,
    own_figures,
    own_study_body,
    write_csv_sites,
)
from deploy.local.processes import (  # noqa: E402
    BIN,
    Processes,
    Settings,
    beat_command,
    control_plane_env,
    free_port,
    log,
    manage,
    reset_database,
    running_control_plane,
    start_control_plane,
    wait_until_healthy,
    web_command,
    worker_command,
)
from deploy.local.queries import cross_site_evaluation  # noqa: E402
from federation.data import Dataset, load_builtin  # noqa: E402
from federation.data.text import TextSchema, parse_data_schema  # noqa: E402
from federation.errors import FederationError  # noqa: E402
from federation.wire import sha256_hex  # noqa: E402

__all__ = [
    "BIN",
    "Api",
    "Processes",
    "Settings",
    "Site",
    "agent_command",
    "agree_scaling",
    "agreed_scaling",
    "approve_study",
    "beat_command",
    "builtin_schema",
    "control_plane_env",
    "create_user",
    "enroll_sites",
    "free_port",
    "load_builtin",
    "log",
    "main",
    "manage",
    "parse_args",
    "reset_database",
    "run",
    "run_agent_command",
    "split_data",
    "start_control_plane",
    "study_body",
    "wait_until_healthy",
    "web_command",
    "worker_command",
    "write_site",
    "write_sites",
]


@dataclass(frozen=True)
class Federation:
    """The coordinator's client, the data owners' and their institutions, the study and the job."""

    api: Api
    owners: list[Api]
    institution_ids: list[int]
    study: Json
    job: Json

    def evaluate_across_sites(self, versions: list[Json]) -> Json:
        """The first and the last model versions, scored by every site's agent."""
        ids = [versions[0]["id"], versions[-1]["id"]]
        return cross_site_evaluation(self.api, self.owners, self.institution_ids, self.study["id"], ids)


def set_up_job(
    processes: Processes,
    settings: Settings,
    dataset: Dataset,
    shares: list[np.ndarray],
    args: argparse.Namespace,
) -> Federation:
    """The coordinator, the enrolled sites, the approved study, the agents and the started job."""
    api = Api(settings.url, create_user(settings, "coordinator", "coordinator"))
    sites = write_sites(settings.data_dir, shares, args.dataset, settings.url)
    institution_ids, owners = enroll_sites(api, settings, sites)
    # Running from here on, as at a hospital: ready (libraries, data) before any job exists.
    start_agents(processes, settings, sites, "--exit-when-idle", "300")
    study = api.call("POST", "studies/", json=study_body(dataset, args, "agents", institution_ids))
    approve_study(owners, institution_ids, study["id"])
    log(f"{len(sites)} sites enrolled and approved; agreeing the feature scaling through their agents")
    study = agree_scaling(api, study["id"])
    job_body = {"study": study["id"], "num_rounds": args.rounds, "min_updates": args.sites}
    job = api.call("POST", "jobs/", json={**job_body, "round_deadline_seconds": 120})
    api.call("POST", f"jobs/{job['id']}/start/")
    log(f"job {job['id']} started: {args.rounds} rounds of {args.strategy} with {len(sites)} agents")
    return Federation(api, owners, institution_ids, study, job)


def finished_models(api: Api, job: Json) -> tuple[list[Json], bytes, bytes, Json]:
    """The job's model versions, the final and initial models' bytes, and the job itself."""
    versions = api.call("GET", f"jobs/{job['id']}/models/")
    versions = versions.get("results", versions) if isinstance(versions, dict) else versions
    final_blob, final_sha = api.download(f"models/{versions[-1]['id']}/download/")
    initial_blob, _ = api.download(f"models/{versions[0]['id']}/download/")
    if sha256_hex(final_blob) != final_sha:
        raise RuntimeError("the downloaded model does not match its checksum")
    return versions, final_blob, initial_blob, api.call("GET", f"jobs/{job['id']}/")


def check_completed(job: Json, progress: Json) -> None:
    state = progress["job"]["state"]
    log(f"job {job['id']} {state}")
    if state != "completed":
        raise RuntimeError(f"job {job['id']} ended {state}: {progress['job'].get('failure_reason')}")


def set_up_own_job(
    processes: Processes, settings: Settings, own: OwnData, args: argparse.Namespace
) -> Federation:
    """As :func:`set_up_job`, each site with its own CSV file and the consortium's schema."""
    api = Api(settings.url, create_user(settings, "coordinator", "coordinator"))
    sites = write_csv_sites(settings.data_dir, own, settings.url)
    institution_ids, owners = enroll_sites(api, settings, sites)
    start_agents(processes, settings, sites, "--exit-when-idle", "300")
    log(f"{len(sites)} sites enrolled ({', '.join(str(len(site.rows)) for site in sites)} rows)")
    scaling = "none" if args.no_scaling else "agents"
    study = api.call("POST", "studies/", json=own_study_body(own, args, scaling, institution_ids))
    approve_study(owners, institution_ids, study["id"])
    if args.no_scaling:
        log("no feature scaling (--no-scaling)")
    else:
        log("agreeing the feature scaling and categories through the agents")
        study = agree_scaling(api, study["id"])
    job_body = {"study": study["id"], "num_rounds": args.rounds, "min_updates": len(sites)}
    job = api.call("POST", "jobs/", json={**job_body, "round_deadline_seconds": 120})
    api.call("POST", f"jobs/{job['id']}/start/")
    log(f"job {job['id']} started: {args.rounds} rounds of {args.strategy} with {len(sites)} agents")
    return Federation(api, owners, institution_ids, study, job)


def run_own_data(args: argparse.Namespace) -> dict[str, object]:
    """The whole federation on the consortium's files (``--csv``), ending with its figures."""
    started = time.monotonic()
    own = OwnData.from_args(args)
    with running_control_plane(
        Path(args.data_dir).resolve(), args.port, args.database_url, args.broker_url, len(own.site_files)
    ) as (processes, settings):
        federation = set_up_own_job(processes, settings, own, args)
        api, study, job = federation.api, federation.study, federation.job
        progress = follow_job(api, job["id"], args.rounds, processes, timeout=args.timeout)
        check_completed(job, progress)
        versions, final_blob, initial_blob, finished_job = finished_models(api, job)
        evaluation = (
            federation.evaluate_across_sites(versions) if study["model"].get("num_classes", 0) >= 2 else None
        )
    final = [r for r in progress["rounds"] if r["kind"] == "evaluate"]
    return {
        **own_figures(own, study, final_blob, initial_blob, args),
        "sites_final_evaluation": final[0]["metrics"] if final else {},
        "cross_site_evaluation": evaluation,
        "rounds": sum(1 for r in progress["rounds"] if r["kind"] == "train" and r["state"] == "closed"),
        "sites": len(own.site_files),
        "feature_scaling": study["feature_scaling"] is not None,
        "features": study["model"]["num_features"],
        **timing_figures(progress),
        **privacy_figures(finished_job, versions),
        "seconds": round(time.monotonic() - started, 1),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.csv:
        return run_own_data(args)
    started = time.monotonic()
    dataset = load_builtin(args.dataset)
    shares, test_rows = split_data(dataset, args.sites, args.seed)
    data_dir = Path(args.data_dir).resolve()
    with running_control_plane(data_dir, args.port, args.database_url, args.broker_url, args.sites) as (
        processes,
        settings,
    ):
        log(f"control plane at {settings.url}, data in {settings.data_dir}")
        federation = set_up_job(processes, settings, dataset, shares, args)
        api, study, job = federation.api, federation.study, federation.job
        progress = follow_job(api, job["id"], args.rounds, processes, timeout=args.timeout)
        check_completed(job, progress)
        versions, final_blob, initial_blob, finished_job = finished_models(api, job)
        evaluation = federation.evaluate_across_sites(versions)
    log("computing the figures: pooled and local-only baselines")
    result = figures(dataset, shares, test_rows, study, final_blob, initial_blob, progress, args, started)
    final = [r for r in progress["rounds"] if r["kind"] == "evaluate"]
    return {
        **result,
        **privacy_figures(finished_job, versions),
        "sites_final_evaluation": final[0]["metrics"] if final else {},
        "cross_site_evaluation": evaluation,
    }


def serve(args: argparse.Namespace) -> dict[str, object]:
    """Only the control plane and a coordinator, until stopped (Ctrl-C or SIGTERM): for trying
    the platform step by step (docs/guide-own-data.md). The URL, the coordinator's console
    password and API token go to ``coordinator.json`` in the data folder (mode 0600)."""
    data_dir = Path(args.data_dir).resolve()
    with running_control_plane(data_dir, args.port, args.database_url, args.broker_url, 2) as (_, settings):
        lines = manage(
            settings, "create_user", "coordinator", "--role", "coordinator", "--random-password", "--token"
        ).split()
        password, token = lines[-2], lines[-1]
        details = {"url": settings.url, "username": "coordinator", "password": password, "api_token": token}
        target = data_dir / "coordinator.json"
        target.touch(mode=0o600)
        target.write_text(json.dumps(details, indent=2))
        log(f"control plane at {settings.url}; console: coordinator / {details['password']}")
        log(f"the coordinator's API token and URL are in {target}; stop with Ctrl-C")
        while True:
            time.sleep(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dataset", default="breast_cancer", choices=["breast_cancer", "digits"])
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--model", default="logistic")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO / "var" / "demo"))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--database-url", help="default: SQLite in the data folder")
    parser.add_argument("--broker-url", help="default: the filesystem transport in the data folder")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the job may take")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="start only the control plane and a coordinator, until stopped (docs/guide-own-data.md)",
    )
    own = parser.add_argument_group("the consortium's own data (instead of --dataset)")
    own.add_argument("--csv", nargs="+", metavar="FILE", help="one CSV file per site")
    own.add_argument("--schema", metavar="FILE", help="the study's data schema (silo-agent schema suggest)")
    own.add_argument("--test", metavar="FILE", help="rows no site holds, to score the final model on")
    own.add_argument(
        "--no-scaling", action="store_true", help="send no feature scaling (an explicit choice; often worse)"
    )
    parser.add_argument(
        "--privacy",
        type=json_object,
        default="{}",
        metavar="JSON",
        help="the study's privacy settings (docs/privacy.md), e.g. '{\"secure_aggregation\": true}'",
    )
    args = parser.parse_args(argv)
    if args.csv and not args.schema:
        parser.error("--csv needs --schema, the study's data schema (silo-agent schema suggest proposes one)")
    if (args.schema or args.test or args.no_scaling) and not args.csv:
        parser.error("--schema, --test and --no-scaling go with --csv")
    return args


def json_object(text: str) -> dict[str, object]:
    """An argparse type: one JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{}'")
    return value


def _exit_on_signal(number: int, frame: object) -> None:
    raise SystemExit(128 + number)  # unwinds through the finally blocks that stop the children


def run_and_report(
    run_federation: Callable[[argparse.Namespace], dict[str, object]], args: argparse.Namespace
) -> int:
    """Run one local federation, every child stopped on SIGTERM or SIGHUP; print its figures
    as the last line (exit 0), or the error (exit 1)."""
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _exit_on_signal)
    try:
        result = run_federation(args)
    except (RuntimeError, httpx.HTTPError) as error:
        log(f"error: {error}")
        return 1
    print(json.dumps(result), flush=True)
    return 0


def is_text_schema(path: str) -> bool:
    """Whether ``--schema`` names a text schema (read again, with its errors, by the runner)."""
    try:
        return isinstance(parse_data_schema(json.loads(Path(path).read_text(encoding="utf-8"))), TextSchema)
    except (OSError, ValueError, FederationError):
        return False


def text_runner_argv(args: argparse.Namespace) -> list[str]:
    """The options of ``deploy/run_local_llm.py`` that run the same files and settings."""
    argv = [
        "--csv",
        *args.csv,
        "--schema",
        args.schema,
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
    ]
    argv += ["--data-dir", args.data_dir, "--port", str(args.port), "--timeout", str(args.timeout)]
    argv += ["--privacy", json.dumps(args.privacy)]
    optional = (
        ("--test", args.test),
        ("--database-url", args.database_url),
        ("--broker-url", args.broker_url),
    )
    for option, value in optional:
        if value:
            argv += [option, value]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.csv and is_text_schema(args.schema):
        # Text files: the language-model federation (MiniLM with LoRA adapters) runs them.
        from deploy import run_local_llm

        return run_local_llm.main(text_runner_argv(args))
    return run_and_report(serve if args.serve else run, args)


if __name__ == "__main__":
    sys.exit(main())
