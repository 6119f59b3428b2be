"""A language-model federation on this machine: MiniLM with LoRA adapters on clinical notes.

The same stack as ``deploy/run_local.py`` (gunicorn, a Celery worker and beat, one silo
agent per site, everything over HTTP), with a text study: each site holds its own seeded
synthetic referral notes as a CSV file (sites differ in writing style and in specialty mix),
the study pins all-MiniLM-L6-v2 (which ships inside a package) and only the LoRA adapters
and the classification head travel. The final model is rated on notes no site ever saw.
The last line printed is one JSON object with the figures.

    python deploy/run_local_llm.py                      # 3 sites, 3 rounds (make demo-llm)
    python deploy/run_local_llm.py --rounds 1 --max-steps 2 --notes 40   # a quick check
    python deploy/run_local_llm.py --aggregation ffa --privacy '{"secure_aggregation": true}'

Every process it starts is stopped when it ends, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy.local.bootstrap import (  # noqa: E402
    Api,
    Json,
    Site,
    approve_study,
    create_user,
    enroll_sites,
    follow_job,
    start_agents,
)
from deploy.local.figures import privacy_figures, timing_figures  # noqa: E402
from deploy.local.processes import log, running_control_plane  # noqa: E402
from deploy.run_local import finished_models, json_object, run_and_report  # noqa: E402
from federation.data.clinical_notes import clinical_notes_federation, clinical_notes_schema  # noqa: E402
from federation.data.text import (  # noqa: E402
    TextDataset,
    TextSchema,
    load_text,
    parse_data_schema,
    write_text,
)
from federation.errors import FederationError  # noqa: E402
from federation.metrics import compute_metrics  # noqa: E402
from federation.models import SiteModelOptions, build_model, model_config_from_json  # noqa: E402
from federation.wire import deserialize_weights  # noqa: E402

BASE_MODEL = "all-MiniLM-L6-v2"


def write_text_site(folder: Path, name: str, notes: TextDataset, max_tokens: int, server_url: str) -> Site:
    """A site folder: its notes as CSV and an agent configuration that accepts text studies."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "notes.csv", notes, clinical_notes_schema(max_tokens=max_tokens))
    return _text_site(folder, name, "notes.csv", len(notes), server_url)


def copy_text_site(folder: Path, name: str, source: Path, rows: int, server_url: str) -> Site:
    """A site folder holding a copy of the consortium's own file (CSV or JSON Lines) of ``rows`` notes."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / f"notes{source.suffix}")
    return _text_site(folder, name, f"notes{source.suffix}", rows, server_url)


def _text_site(folder: Path, name: str, data_file: str, rows: int, server_url: str) -> Site:
    (folder / "agent.toml").write_text(
        f'server_url = "{server_url}"\n'
        'credential_file = "credential.json"\n'
        'state_dir = "state"\n'
        "poll_wait_seconds = 20\n\n"
        f'[data]\npath = "{data_file}"\n\n'
        '[models]\ndevice = "cpu"\n\n'
        '[policy]\napproved_studies = ["*"]\nmax_rounds = 1000\nmax_epochs = 20\n'
        'allowed_model_kinds = ["lora_encoder"]\n'
    )
    return Site(name=name, folder=folder, rows=np.arange(rows))


def study_body(args: argparse.Namespace, institution_ids: list[int], schema: TextSchema) -> Json:
    """A text study: the built-in MiniLM (pinned by the server), LoRA on query/key/value."""
    return {
        "name": f"clinical notes, MiniLM + LoRA ({args.aggregation}) {datetime.now():%Y%m%d-%H%M%S}",
        "description": "Local demonstration of federated fine-tuning on referral notes.",
        "model": {
            "kind": "lora_encoder",
            "task": schema.task.value,
            "num_classes": schema.num_classes,
            "base_model": BASE_MODEL,
            "lora": {"rank": args.rank, "alpha": 2 * args.rank, "aggregation": args.aggregation},
        },
        "data_schema": schema.to_json(),
        "strategy": "fedavg",
        "strategy_params": {},
        "training": {
            "epochs": 1,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "max_steps": args.max_steps,
        },
        "feature_scaling": None,
        "privacy": args.privacy,
        "validation_fraction": 0.2,
        "seed": args.seed,
        "institutions": institution_ids,
    }


def rate_final_model(study: Json, final_blob: bytes, test: TextDataset) -> dict[str, float]:
    """The final model's accuracy and macro-F1 on the held-out notes (here, off the sites)."""
    config = model_config_from_json(study["model"])
    model = build_model(config, seed=0, site=SiteModelOptions(device="cpu"))
    model.set_weights(deserialize_weights(final_blob, spec=model.model_spec()))
    return compute_metrics(test.task, test.labels, model.predict(test.features))


def traffic_figures(progress: Json) -> dict[str, object]:
    train = [r for r in progress["rounds"] if r["kind"] == "train" and r["state"] == "closed"]
    up = [r["bytes_up"] / max(r["received"], 1) for r in train]
    full = progress.get("full_model_bytes")
    update_bytes = round(statistics.median(up)) if up else None
    return {
        "update_bytes": update_bytes,
        "model_bytes": full,
        "bytes_ratio": round(full / update_bytes, 1) if full and update_bytes else None,
        "round_bytes_up": [r["bytes_up"] for r in train],
        "round_bytes_down": [r["bytes_down"] for r in train],
        "round_seconds": [round(r["duration_seconds"], 1) for r in train],
        "per_round_fedit_error": [r["metrics"].get("lora_fedit_error") for r in train],
    }


_AGENT_LINE = re.compile(r"^(\S+ \S+) INFO\s+\[job \d+ round (\d+)\] (received a train task|training )")


def training_start_delays(logs: list[Path]) -> list[float]:
    """Seconds from a training task's arrival to the start of training, in every agent's
    rounds after its first (the base model is loaded by then): from the agents' own logs."""
    delays = []
    for log_file in logs:
        received: dict[str, datetime] = {}
        for line in log_file.read_text(encoding="utf-8").splitlines():
            match = _AGENT_LINE.match(line)
            if match is None:
                continue
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            if match.group(3).startswith("received"):
                received[match.group(2)] = when
            elif match.group(2) in received and match.group(2) != "1":
                delays.append((when - received[match.group(2)]).total_seconds())
    return delays


OwnText = tuple[TextSchema, list[tuple[Path, int]], TextDataset | None]


def own_text_files(args: argparse.Namespace) -> OwnText:
    """The consortium's text schema, its files (``--csv``) with their note counts and the test
    notes, each file read once so that a bad one fails here, naming the file, line and column,
    before any process starts."""
    try:
        schema = parse_data_schema(json.loads(Path(args.schema).read_text(encoding="utf-8")))
    except (OSError, ValueError, FederationError) as error:
        raise RuntimeError(f"--schema {args.schema}: {error}") from None
    if not isinstance(schema, TextSchema):
        raise RuntimeError(f"--schema {args.schema}: not a text schema (tabular files: deploy/run_local.py)")
    try:
        files = [(path, len(load_text(path, schema))) for path in (Path(name).resolve() for name in args.csv)]
        test = load_text(Path(args.test), schema) if args.test else None
    except FederationError as error:
        raise RuntimeError(str(error)) from None
    return schema, files, test


def text_sites(
    args: argparse.Namespace, data_dir: Path, server_url: str, own: OwnText | None
) -> tuple[list[Site], TextSchema, TextDataset | None]:
    """The sites' folders: the consortium's own files (``own``), or each its synthetic notes."""
    if own is not None:
        schema, files, test = own
        sites = [
            copy_text_site(data_dir / f"site-{i + 1}", f"Hospital {chr(65 + i)}", path, rows, server_url)
            for i, (path, rows) in enumerate(files)
        ]
        return sites, schema, test
    silos, test_notes = clinical_notes_federation(
        num_sites=args.sites, notes_per_site=args.notes, test_notes_per_site=args.test_notes, seed=args.seed
    )
    sites = [
        write_text_site(
            data_dir / f"site-{i + 1}", f"Hospital {chr(65 + i)}", notes, args.max_tokens, server_url
        )
        for i, notes in enumerate(silos)
    ]
    return sites, clinical_notes_schema(max_tokens=args.max_tokens), test_notes


def run(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    own = own_text_files(args) if args.csv else None  # a bad file fails before any process starts
    data_dir = Path(args.data_dir).resolve()
    with running_control_plane(data_dir, args.port, args.database_url, args.broker_url, args.sites) as (
        processes,
        settings,
    ):
        log(f"control plane at {settings.url}, data in {settings.data_dir}")
        api = Api(settings.url, create_user(settings, "coordinator", "coordinator"))
        sites, schema, test = text_sites(args, settings.data_dir, settings.url, own)
        institution_ids, owners = enroll_sites(api, settings, sites)
        study = api.call("POST", "studies/", json=study_body(args, institution_ids, schema))
        approve_study(owners, institution_ids, study["id"])
        job_body = {"study": study["id"], "num_rounds": args.rounds, "min_updates": len(sites)}
        job = api.call("POST", "jobs/", json={**job_body, "round_deadline_seconds": 600})
        # One thread each: the agents share two cores, and three agents of two threads
        # each would spend their time switching.
        agent_settings = replace(settings, env={**settings.env, "OMP_NUM_THREADS": "1"})
        start_agents(processes, agent_settings, sites, "--exit-when-idle", "300")
        training_started = time.monotonic()
        api.call("POST", f"jobs/{job['id']}/start/")
        log(f"job {job['id']} started: {args.rounds} rounds of MiniLM + LoRA with {len(sites)} agents")
        progress = follow_job(api, job["id"], args.rounds, processes, timeout=args.timeout)
        training_seconds = time.monotonic() - training_started
        state = progress["job"]["state"]
        if state != "completed":
            raise RuntimeError(f"job {job['id']} ended {state}: {progress['job'].get('failure_reason')}")
        versions, final_blob, _, finished_job = finished_models(api, job)
        delays = training_start_delays(sorted((settings.data_dir / "logs").glob("agent-*.log")))
    metrics = {}
    if test is not None:
        log("rating the final model on held-out notes")
        metrics = rate_final_model(study, final_blob, test)
    return {
        "metric": "accuracy",
        "federated": round(metrics["accuracy"], 4) if metrics else None,
        "federated_macro_f1": round(metrics["macro_f1"], 4) if metrics else None,
        "model": f"{BASE_MODEL} + LoRA r={args.rank}",
        "aggregation": args.aggregation,
        "rounds": args.rounds,
        "sites": len(sites),
        "test_rows": len(test) if test is not None else 0,
        **traffic_figures(progress),
        **timing_figures(progress),
        **privacy_figures(finished_job, versions),
        "training_seconds": round(training_seconds, 1),
        "training_start_max_seconds": round(max(delays), 3) if delays else None,
        "seconds": round(time.monotonic() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--notes", type=int, default=200, help="training notes per site")
    parser.add_argument("--test-notes", type=int, default=100, help="held-out notes per site's style")
    parser.add_argument("--max-steps", type=int, default=15, help="local optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--aggregation", choices=["fedit", "svd", "ffa"], default="fedit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO / "var" / "demo-llm"))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--database-url", help="default: SQLite in the data folder")
    parser.add_argument("--broker-url", help="default: the filesystem transport in the data folder")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the job may take")
    parser.add_argument("--privacy", type=json_object, default="{}", metavar="JSON")
    own = parser.add_argument_group("the consortium's own text files (instead of the synthetic notes)")
    own.add_argument("--csv", nargs="+", metavar="FILE", help="one file per site: CSV or JSON Lines (.jsonl)")
    own.add_argument("--schema", metavar="FILE", help="the study's text schema (docs/language-models.md)")
    own.add_argument("--test", metavar="FILE", help="notes no site holds, to rate the final model on")
    args = parser.parse_args(argv)
    if bool(args.csv) != bool(args.schema):
        parser.error("--csv and --schema go together")
    if args.test and not args.csv:
        parser.error("--test goes with --csv")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
