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

Every process it starts is stopped when it ends, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from federation.data import Dataset, Standardizer, load_builtin  # noqa: E402
from federation.data.partition import partition_iid  # noqa: E402
from federation.data.scaling import FeatureMoments, combine_moments  # noqa: E402
from federation.metrics import compute_metrics  # noqa: E402
from federation.models import ModelConfig, ModelKind, TrainConfig, build_model  # noqa: E402
from federation.types import ModelSpec  # noqa: E402
from federation.wire import deserialize_weights, sha256_hex  # noqa: E402

BIN = Path(sys.executable).parent
_T = TypeVar("_T")


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------------------


@dataclass
class Processes:
    """Every child process, each in its own process group, stopped on exit."""

    logs: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, command: list[str], env: dict[str, str], cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        log_file = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen(  # noqa: S603
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children[name] = child
        with (self.logs.parent / PID_FILE).open("a") as pids:  # so that a later run can stop leftovers
            pids.write(f"{child.pid}\n")
        return child

    def check_alive(self) -> None:
        for name, child in self.children.items():
            if not name.startswith("agent") and child.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {child.returncode}; its log ends with:\n{tail}")

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        chosen = [n for n in (names or list(self.children)) if n in self.children]
        for name in chosen:
            _signal_group(self.children[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in chosen:
            child = self.children.pop(name)
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()


PID_FILE = "children.pid"


def stop_leftovers(data_dir: Path) -> None:
    """Stop process groups a killed earlier run left behind in the same data folder."""
    pid_file = data_dir / PID_FILE
    if not pid_file.exists():
        return
    for line in pid_file.read_text().split():
        pid = int(line)
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if str(data_dir).encode() in command_line or b"fedplatform" in command_line:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()


def _signal_group(child: subprocess.Popen[bytes], number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, number)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the control plane ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def control_plane_env(data_dir: Path, database_url: str | None, broker_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_BROKER_URL"))}
    env.update({"FEDHEALTH_DATA_DIR": str(data_dir), "FEDHEALTH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    # Never Django's debug pages, even on this machine: they show settings and tracebacks to
    # whoever triggers an error. WhiteNoise serves the collected static files without it.
    env["FEDHEALTH_DEBUG"] = "false"
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env


def manage(settings: Settings, *arguments: str) -> str:
    result = subprocess.run(  # noqa: S603
        [str(BIN / "python"), str(REPO / "manage.py"), *arguments],
        cwd=REPO,
        env=settings.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def reset_database(settings: Settings) -> None:
    """A clean slate on a server database too, so that a second run works like the first."""
    manage(settings, "flush", "--noinput")


def start_control_plane(processes: Processes, settings: Settings, workers: int) -> None:
    celery = [str(BIN / "celery"), "--workdir", str(REPO / "platform"), "-A", "fedplatform"]
    threads = max(16, 2 * workers)
    # Without DEBUG, WhiteNoise serves STATIC_ROOT only (not the apps' folders): fill it first.
    manage(settings, "collectstatic", "--noinput")
    processes.start(
        "web",
        [
            str(BIN / "gunicorn"),
            "--chdir",
            str(REPO / "platform"),
            "fedplatform.wsgi",
            "--bind",
            f"127.0.0.1:{settings.port}",
            "--worker-class",
            "gthread",
            "--workers",
            "2",
            "--threads",
            str(threads),
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
        ],
        # The control plane lets half of them wait in long polls (FEDHEALTH_LONG_POLL_PER_PROCESS).
        {**settings.env, "FEDHEALTH_WEB_THREADS": str(threads)},
    )
    # Threads, not prefork: a forked child of a parent that ran torch can deadlock.
    processes.start(
        "worker",
        [
            *celery,
            "worker",
            "--queues",
            "celery,aggregation",
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"worker-{settings.port}@%h",
        ],
        settings.env,
    )
    processes.start(
        "beat",
        [*celery, "beat", "--loglevel", "INFO", "--schedule", str(settings.data_dir / "celerybeat-schedule")],
        settings.env,
    )
    wait_until_healthy(processes, settings)


def wait_until_healthy(processes: Processes, settings: Settings, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if httpx.get(f"{settings.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the control plane did not become healthy in time")


# --- the coordinator's side, over the REST API ---------------------------------------------


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=f"{base_url}/api/v1/", headers={"Authorization": f"Token {token}"}, timeout=30
        )

    def call(self, method: str, path: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
        response = self.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )

    def download(self, path: str) -> tuple[bytes, str]:
        response = self.client.get(path)
        response.raise_for_status()
        return response.content, response.headers["X-Content-SHA256"]


def create_user(settings: Settings, name: str, role: str, institution: str | None = None) -> str:
    arguments = ["create_user", name, "--role", role, "--random-password", "--token"]
    if institution:
        arguments += ["--institution", institution]
    return manage(settings, *arguments).strip().splitlines()[-1].split()[-1]


# --- the sites -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    name: str
    folder: Path
    rows: np.ndarray

    @property
    def config(self) -> Path:
        return self.folder / "agent.toml"


def split_data(dataset: Dataset, num_sites: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Site shares of the training rows, and test rows that no site holds."""
    # The same draws as the simulator's, so that both hold out the same patients.
    rng = np.random.default_rng(seed)
    train_rows, test_rows = dataset.split_indices(0.2, rng, stratify=True)
    shares = [np.sort(train_rows[part]) for part in partition_iid(len(train_rows), num_sites, rng)]
    return shares, test_rows


def write_site(folder: Path, name: str, rows: np.ndarray, dataset: str, server_url: str) -> Site:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.json").write_text(json.dumps([int(r) for r in rows]))
    (folder / "agent.toml").write_text(
        f'server_url = "{server_url}"\n'
        'credential_file = "credential.json"\n'
        'state_dir = "state"\n'
        "poll_wait_seconds = 20\n\n"
        f'[data]\nbuiltin = "{dataset}"\nrows = "rows.json"\n\n'
        '[policy]\napproved_studies = ["*"]\nmax_rounds = 1000\nmax_epochs = 20\n'
    )
    return Site(name=name, folder=folder, rows=rows)


def agent_command(*arguments: str) -> list[str]:
    return [str(BIN / "silo-agent"), *arguments]


def run_agent_command(site: Site, env: dict[str, str], *arguments: str) -> str:
    result = subprocess.run(  # noqa: S603
        agent_command(*arguments, "--config", str(site.config)),
        cwd=site.folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"silo-agent {arguments[0]} at {site.name} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def in_parallel(function: Callable[[Site], _T], sites: list[Site]) -> list[_T]:
    """``function`` for each site, in threads (each mostly waits on a subprocess), in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(sites))) as pool:
        return list(pool.map(function, sites))


def enroll_sites(api: Api, settings: Settings, sites: list[Site]) -> tuple[list[int], list[Api]]:
    """Register each site's institution, enroll its agent and create its data owner."""
    institution_ids = [api.call("POST", "institutions/", json={"name": s.name})["id"] for s in sites]
    tokens = {
        site.name: api.call("POST", f"institutions/{institution_id}/enrollment-tokens/")["token"]
        for site, institution_id in zip(sites, institution_ids, strict=True)
    }
    owner_names = {site.name: f"owner-{i}" for site, i in zip(sites, institution_ids, strict=True)}

    def enroll(site: Site) -> str:
        # "--token=" because a token may begin with "-".
        run_agent_command(site, settings.env, "enroll", f"--token={tokens[site.name]}")
        return create_user(settings, owner_names[site.name], "data_owner", site.name)

    return institution_ids, [Api(settings.url, token) for token in in_parallel(enroll, sites)]


def agreed_scaling(sites: list[Site], env: dict[str, str]) -> dict[str, list[float]]:
    """Each site reports only count, sum and sum of squares per feature; combined here."""
    reports = in_parallel(lambda site: run_agent_command(site, env, "moments"), sites)
    moments = [FeatureMoments.from_json(json.loads(report)) for report in reports]
    scaler = Standardizer.from_moments(combine_moments(moments))
    return {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}


# --- the study and the job -----------------------------------------------------------------


def study_body(dataset: Dataset, args: argparse.Namespace, scaling: dict, institution_ids: list[int]) -> dict:  # type: ignore[type-arg]
    model = ModelConfig(
        kind=ModelKind(args.model),
        task=dataset.task,
        num_features=dataset.features.shape[1],
        num_classes=dataset.num_classes,
    )
    return {
        "name": f"{args.dataset} {args.strategy} {datetime.now():%Y%m%d-%H%M%S}",
        "description": "Local demonstration federation.",
        "model": model.to_json(),
        "data_schema": builtin_schema(dataset),
        "strategy": args.strategy,
        "strategy_params": {},
        "training": {"epochs": args.local_epochs, "batch_size": 32, "learning_rate": args.learning_rate},
        "feature_scaling": scaling,
        "privacy": args.privacy,
        "validation_fraction": 0.2,
        "seed": args.seed,
        "institutions": institution_ids,
    }


def builtin_schema(dataset: Dataset) -> dict:  # type: ignore[type-arg]
    classes = (
        ["malignant", "benign"] if dataset.num_classes == 2 else [str(c) for c in range(dataset.num_classes)]
    )
    return {
        "features": [{"name": name, "kind": "numeric"} for name in dataset.feature_names],
        "label": "target",
        "task": dataset.task.value,
        "classes": classes,
    }


def follow_job(api: Api, job_id: int, num_rounds: int, processes: Processes, timeout: float) -> dict:  # type: ignore[type-arg]
    """Print one line per closed round until the job ends; returns the last progress."""
    reported: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        progress = api.call("GET", f"jobs/{job_id}/progress/")
        for round_ in progress["rounds"]:
            if round_["state"] == "closed" and round_["number"] not in reported:
                reported.add(round_["number"])
                print_round(round_, num_rounds)
        if progress["job"]["state"] in {"completed", "failed", "cancelled"}:
            return progress
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def print_round(round_: dict, num_rounds: int) -> None:  # type: ignore[type-arg]
    metrics = round_.get("metrics") or {}
    label = f"round {round_['number']:>3}/{num_rounds}" if round_["kind"] == "train" else "final evaluation"
    shown = "  ".join(
        f"{name} {metrics[name]:.4f}"
        for name in ("global_accuracy", "local_accuracy", "accuracy", "global_log_loss")
        if name in metrics
    )
    done = min(round_["number"], num_rounds)
    bar = "#" * done + "." * (num_rounds - done)
    print(f"[{bar}] {label}: {round_['received']} sites  {shown}", flush=True)


# --- the figures ---------------------------------------------------------------------------


def evaluate(config: ModelConfig, weights: dict, data: Dataset) -> float:  # type: ignore[type-arg]
    model = build_model(config, seed=0)
    model.set_weights(weights)
    return compute_metrics(data.task, data.labels, model.predict(data.features))["accuracy"]


def baselines(
    config: ModelConfig,
    initial: dict,  # type: ignore[type-arg]
    shares: list[Dataset],
    test: Dataset,
    args: argparse.Namespace,
) -> tuple[float, list[float]]:
    """Pooled training and each site alone, from the same initial model, as many epochs."""
    train = TrainConfig(
        epochs=args.rounds * args.local_epochs,
        batch_size=32,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )

    def alone(data: Dataset) -> float:
        model = build_model(config, seed=0)
        model.set_weights(initial)
        model.fit(data.features, data.labels, train)
        return compute_metrics(test.task, test.labels, model.predict(test.features))["accuracy"]

    return alone(Dataset.concatenate(shares)), [alone(share) for share in shares]


def round_latencies(progress: dict) -> list[float]:  # type: ignore[type-arg]
    """Seconds from a round's last update to the next round being available to agents.

    With secure aggregation the last update is the last masked one, so this includes the
    round's unmask phase (one more poll and answer from every site) before aggregation.
    """
    rounds = {r["number"]: r for r in progress["rounds"]}
    latencies = []
    for number, round_ in rounds.items():
        following = rounds.get(number + 1)
        if round_["kind"] == "train" and following and round_["last_update_at"]:
            opened = datetime.fromisoformat(following["opened_at"])
            latencies.append((opened - datetime.fromisoformat(round_["last_update_at"])).total_seconds())
    return latencies


# --- the whole run -------------------------------------------------------------------------


@contextmanager
def federation(args: argparse.Namespace) -> Iterator[tuple[Processes, Settings]]:
    data_dir = Path(args.data_dir).resolve()
    stop_leftovers(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir, args.port or free_port(), control_plane_env(data_dir, args.database_url, args.broker_url)
    )
    processes = Processes(data_dir / "logs")
    try:
        manage(settings, "migrate", "--noinput")
        reset_database(settings)
        start_control_plane(processes, settings, args.sites)
        yield processes, settings
    finally:
        processes.stop()


def run(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    dataset = load_builtin(args.dataset)
    shares, test_rows = split_data(dataset, args.sites, args.seed)
    with federation(args) as (processes, settings):
        log(f"control plane at {settings.url}, data in {settings.data_dir}")
        api = Api(settings.url, create_user(settings, "coordinator", "coordinator"))
        sites = [
            write_site(
                settings.data_dir / f"site-{i + 1}",
                f"Hospital {chr(65 + i)}",
                rows,
                args.dataset,
                settings.url,
            )
            for i, rows in enumerate(shares)
        ]
        institution_ids, owners = enroll_sites(api, settings, sites)
        log(f"{len(sites)} sites enrolled; agreeing feature scaling from per-site sums")
        study = api.call(
            "POST",
            "studies/",
            json=study_body(dataset, args, agreed_scaling(sites, settings.env), institution_ids),
        )
        for owner, institution_id in zip(owners, institution_ids, strict=True):
            owner.call(
                "POST",
                f"studies/{study['id']}/decision/",
                json={"institution": institution_id, "decision": "approve"},
            )
        job = api.call(
            "POST",
            "jobs/",
            json={
                "study": study["id"],
                "num_rounds": args.rounds,
                "min_updates": args.sites,
                "round_deadline_seconds": 120,
            },
        )
        for site in sites:
            processes.start(
                f"agent-{site.folder.name}",
                agent_command("run", "--config", str(site.config), "--exit-when-idle", "300"),
                settings.env,
                cwd=site.folder,
            )
        api.call("POST", f"jobs/{job['id']}/start/")
        log(f"job {job['id']} started: {args.rounds} rounds of {args.strategy} with {len(sites)} agents")
        progress = follow_job(api, job["id"], args.rounds, processes, timeout=args.timeout)
        log(f"job {job['id']} {progress['job']['state']}")
        if progress["job"]["state"] != "completed":
            raise RuntimeError(
                f"job {job['id']} ended {progress['job']['state']}: {progress['job'].get('failure_reason')}"
            )
        versions = api.call("GET", f"jobs/{job['id']}/models/")
        versions = versions.get("results", versions) if isinstance(versions, dict) else versions
        final, initial = versions[-1], versions[0]
        final_blob, final_sha = api.download(f"models/{final['id']}/download/")
        initial_blob, _ = api.download(f"models/{initial['id']}/download/")
        finished_job = api.call("GET", f"jobs/{job['id']}/")
    if sha256_hex(final_blob) != final_sha:
        raise RuntimeError("the downloaded model does not match its checksum")
    log("computing the figures: pooled and local-only baselines")
    result = figures(dataset, shares, test_rows, study, final_blob, initial_blob, progress, args, started)
    return {**result, **privacy_figures(finished_job, versions)}


def privacy_figures(job: dict, versions: list[dict]) -> dict[str, object]:  # type: ignore[type-arg]
    """The privacy settings the job ran with (client-level noise resolved), what it spent,
    and how many of its models came out of a secure-aggregation round (their provenance)."""
    secure = [v for v in versions if "secure_aggregation_sites" in v["provenance"].get("details", {})]
    return {
        "privacy": job["privacy"],
        "epsilon_spent": job["epsilon_spent"],
        "training_stopped_after": job["training_stopped_after"],
        "secure_aggregation_rounds": len(secure),
    }


def figures(
    dataset: Dataset,
    shares: list[np.ndarray],
    test_rows: np.ndarray,
    study: dict,  # type: ignore[type-arg]
    final_blob: bytes,
    initial_blob: bytes,
    progress: dict,  # type: ignore[type-arg]
    args: argparse.Namespace,
    started: float,
) -> dict[str, object]:
    config = ModelConfig.from_json(study["model"])
    scaler = Standardizer(
        mean=np.array(study["feature_scaling"]["mean"]), std=np.array(study["feature_scaling"]["std"])
    )
    scaled = dataset.with_features(scaler.transform(dataset.features))
    spec = ModelSpec.from_weights(build_model(config, seed=0).get_weights())
    final = deserialize_weights(final_blob, spec=spec)
    test = scaled.subset(test_rows)
    centralized, local = baselines(
        config,
        deserialize_weights(initial_blob, spec=spec),
        [scaled.subset(rows) for rows in shares],
        test,
        args,
    )
    latencies = round_latencies(progress)
    durations = [r["duration_seconds"] for r in progress["rounds"] if r["kind"] == "train" and r["closed_at"]]
    return {
        "federated_accuracy": round(evaluate(config, final, test), 4),
        "centralized_accuracy": round(centralized, 4),
        "local_accuracy": [round(value, 4) for value in local],
        "rounds": sum(1 for r in progress["rounds"] if r["kind"] == "train" and r["state"] == "closed"),
        "sites": args.sites,
        "test_rows": len(test_rows),
        "round_latency_median_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "round_seconds_median": round(statistics.median(durations), 2) if durations else None,
        "seconds": round(time.monotonic() - started, 1),
    }


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
        "--privacy",
        type=json_object,
        default="{}",
        metavar="JSON",
        help="the study's privacy settings (docs/privacy.md), e.g. '{\"secure_aggregation\": true}'",
    )
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _exit_on_signal)
    try:
        result = run(args)
    except (RuntimeError, httpx.HTTPError) as error:
        log(f"error: {error}")
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
