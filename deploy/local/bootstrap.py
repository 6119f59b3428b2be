"""The coordinator's side of the local federation, over the REST API exactly as a
coordinator would: users, institutions, enrolled sites, feature scaling agreed from per-site
sums, the study, the data owners' approvals and the job; then following the job."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from deploy.local.processes import Processes, Settings, agent_command, manage
from federation.data import Dataset, Standardizer
from federation.data.partition import partition_iid
from federation.data.scaling import FeatureMoments, combine_moments
from federation.models import ModelConfig, ModelKind

_T = TypeVar("_T")
#: A JSON object as the REST API answers it.
Json = dict[str, Any]


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=f"{base_url}/api/v1/", headers={"Authorization": f"Token {token}"}, timeout=30
        )

    def call(self, method: str, path: str, **kwargs: object) -> Json:
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
    """A user with a random password; returns its API token."""
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


def write_sites(data_dir: Path, shares: list[np.ndarray], dataset: str, server_url: str) -> list[Site]:
    """``site-1``, ``site-2``, ... in ``data_dir``, named Hospital A, Hospital B, ..."""
    return [
        write_site(data_dir / f"site-{i + 1}", f"Hospital {chr(65 + i)}", rows, dataset, server_url)
        for i, rows in enumerate(shares)
    ]


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


def agreed_scaling(
    sites: list[Site], env: dict[str, str], *, schema: Path | None = None
) -> dict[str, list[float]]:
    """Each site reports only count, sum and sum of squares per feature; combined here.
    ``schema``: the study's data schema, for sites whose data are CSV files (relative to
    each site's folder)."""
    options = ("--schema", str(schema)) if schema is not None else ()
    reports = in_parallel(lambda site: run_agent_command(site, env, "moments", *options), sites)
    moments = [FeatureMoments.from_json(json.loads(report)) for report in reports]
    scaler = Standardizer.from_moments(combine_moments(moments))
    return {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}


def start_agents(processes: Processes, settings: Settings, sites: list[Site], *extra: str) -> None:
    """One ``silo-agent run`` per site, in its folder; ``extra`` are more of its options."""
    for site in sites:
        processes.start(
            f"agent-{site.folder.name}",
            agent_command("run", "--config", str(site.config), *extra),
            settings.env,
            cwd=site.folder,
        )


# --- the study and the job -----------------------------------------------------------------


def study_body(
    dataset: Dataset, args: argparse.Namespace, scaling: Json | str, institution_ids: list[int]
) -> Json:
    """The ``POST studies/`` body for run_local's command-line options ``args``."""
    model = ModelConfig(
        kind=ModelKind(args.model),
        task=dataset.task,
        num_features=dataset.features.shape[1],
        num_classes=dataset.num_classes,
    )
    name = f"{args.dataset} {args.strategy}"
    return study_body_of(
        name,
        "Local demonstration federation.",
        model,
        builtin_schema(dataset),
        args,
        scaling,
        institution_ids,
    )


def study_body_of(
    name: str,
    description: str,
    model: ModelConfig,
    data_schema: Json,
    args: argparse.Namespace,
    scaling: Json | str | None,
    institution_ids: list[int],
) -> Json:
    """A ``POST studies/`` body: ``name`` stamped with the time, run_local's training options."""
    return {
        "name": f"{name} {datetime.now():%Y%m%d-%H%M%S}",
        "description": description,
        "model": model.to_json(),
        "data_schema": data_schema,
        "strategy": args.strategy,
        "strategy_params": {},
        "training": {"epochs": args.local_epochs, "batch_size": 32, "learning_rate": args.learning_rate},
        "feature_scaling": scaling,
        "privacy": args.privacy,
        "validation_fraction": 0.2,
        "seed": args.seed,
        "institutions": institution_ids,
    }


def builtin_schema(dataset: Dataset) -> Json:
    classes = (
        ["malignant", "benign"] if dataset.num_classes == 2 else [str(c) for c in range(dataset.num_classes)]
    )
    return {
        "features": [{"name": name, "kind": "numeric"} for name in dataset.feature_names],
        "label": "target",
        "task": dataset.task.value,
        "classes": classes,
    }


def agree_scaling(api: Api, study_id: int, timeout: float = 120.0) -> Json:
    """Ask the sites' agents for their summaries (one API call) and wait for the agreement;
    returns the study as it then is (the union of categories, the scaling)."""
    api.call("POST", f"studies/{study_id}/summaries/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = api.call("GET", f"studies/{study_id}/summaries/")["request"]
        if request["state"] == "complete":
            return api.call("GET", f"studies/{study_id}/")
        if request["state"] in ("failed", "expired"):
            raise RuntimeError(
                f"the sites did not agree the feature scaling: {request['reason'] or 'expired'}"
            )
        time.sleep(0.2)
    raise RuntimeError(f"the sites did not answer the summary request within {timeout:.0f} s")


def approve_study(owners: list[Api], institution_ids: list[int], study_id: int) -> None:
    """Each site's data owner approves the study for its institution."""
    for owner, institution_id in zip(owners, institution_ids, strict=True):
        owner.call(
            "POST",
            f"studies/{study_id}/decision/",
            json={"institution": institution_id, "decision": "approve"},
        )


def follow_job(api: Api, job_id: int, num_rounds: int, processes: Processes, timeout: float) -> Json:
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


def print_round(round_: Json, num_rounds: int) -> None:
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
