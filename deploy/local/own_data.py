"""A local federation on the consortium's own CSV files: one file per site and the study's
data schema (``silo-agent schema suggest`` proposes one), optionally a test file that no
site holds. ``deploy/run_local.py --csv a.csv b.csv c.csv --schema schema.json``.

Each site's agent reads its own file; the feature scaling is agreed through the agents from
their per-feature sums (``silo-agent moments``), never rows; the coordinator sets the study
and the job up over the REST API. With a test file, the final model is scored on it against
pooled and single-site training (the local demonstration can read every file; a real
consortium cannot, and its sites report their own metrics, which the JSON line carries too).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.local.bootstrap import Json, Site, study_body_of
from deploy.local.figures import baselines, evaluate
from federation.data import DataSchema, Dataset, Standardizer, load_csv
from federation.data.agreement import widened_schema
from federation.data.csv_loader import categories_in
from federation.errors import FederationError
from federation.models import ModelConfig, ModelKind, build_model
from federation.types import ModelSpec
from federation.wire import deserialize_weights


@dataclass(frozen=True)
class OwnData:
    """The files of a run on the consortium's own data, checked before anything starts."""

    schema: DataSchema
    schema_json: Json
    site_files: list[Path]
    test_file: Path | None
    #: Each site file's row count, from the check.
    site_rows: list[int]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OwnData:
        """Read the schema and load every file once, so that a bad file fails here, naming
        the file, line and column, before any process starts."""
        try:
            schema_json = json.loads(Path(args.schema).read_text(encoding="utf-8"))
            schema = DataSchema.from_json(schema_json)
        except (OSError, ValueError, FederationError) as error:
            raise RuntimeError(f"--schema {args.schema}: {error}") from None
        files = [Path(path).resolve() for path in args.csv]
        test = Path(args.test).resolve() if args.test else None
        try:
            rows = [len(load_own(path, schema)) for path in files]
            if test is not None:
                load_own(test, schema)
        except FederationError as error:
            raise RuntimeError(str(error)) from None
        return cls(schema, schema.to_json(), files, test, rows)


def load_own(path: Path, schema: DataSchema) -> Dataset:
    """A file's rows, with the categories it holds (the agreement adds them to the study's)."""
    return load_csv(path, widened_schema(schema, categories_in(path, schema)))


def write_csv_sites(data_dir: Path, own: OwnData, server_url: str) -> list[Site]:
    """``site-1``, ``site-2``, ... each with a copy of its own file, named Hospital A, B, ..."""
    sites = []
    for index, source in enumerate(own.site_files):
        folder = data_dir / f"site-{index + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "data.csv")
        (folder / "agent.toml").write_text(
            f'server_url = "{server_url}"\n'
            'credential_file = "credential.json"\n'
            'state_dir = "state"\n'
            "poll_wait_seconds = 20\n\n"
            '[data]\npath = "data.csv"\n\n'
            '[policy]\napproved_studies = ["*"]\nmax_rounds = 1000\nmax_epochs = 20\n'
        )
        (folder / "schema.json").write_text(json.dumps(own.schema_json))
        rows = np.arange(own.site_rows[index])
        sites.append(Site(name=f"Hospital {chr(65 + index)}", folder=folder, rows=rows))
    return sites


def own_study_body(own: OwnData, args: argparse.Namespace, scaling: str, institution_ids: list[int]) -> Json:
    """The ``POST studies/`` body for the consortium's schema and run_local's options."""
    schema = own.schema
    model = ModelConfig(
        kind=ModelKind(args.model),
        task=schema.task,
        num_features=len(schema.encoded_feature_names()),
        num_classes=schema.num_classes,
    )
    name = f"{own.site_files[0].stem} {args.strategy}"
    description = "Local federation on the consortium's own files."
    return study_body_of(name, description, model, own.schema_json, args, scaling, institution_ids)


def own_figures(
    own: OwnData, study: Json, final_blob: bytes, initial_blob: bytes, args: argparse.Namespace
) -> dict[str, object]:
    """The final model on the test file against pooled and single-site training, or, without
    a test file, nothing here (the sites' own final evaluation is in the progress)."""
    if own.test_file is None:
        return {"test_rows": 0, "federated_accuracy": None}
    config = ModelConfig.from_json(study["model"])
    agreed = DataSchema.from_json(study["data_schema"])  # the union of the sites' categories
    shares = [_scaled(load_csv(path, agreed), study) for path in own.site_files]
    test = _scaled(load_csv(own.test_file, agreed), study)
    spec = ModelSpec.from_weights(build_model(config, seed=0).get_weights())
    initial = deserialize_weights(initial_blob, spec=spec)
    centralized, local = baselines(config, initial, shares, test, args)
    federated = evaluate(config, deserialize_weights(final_blob, spec=spec), test)
    return {
        "federated_accuracy": round(federated, 4),
        "centralized_accuracy": round(centralized, 4),
        "local_accuracy": [round(value, 4) for value in local],
        "test_rows": len(test),
    }


def _scaled(data: Dataset, study: Json) -> Dataset:
    """``data`` scaled as the study says (unchanged if it chose no scaling)."""
    scaling = study.get("feature_scaling")
    if not scaling:
        return data
    scaler = Standardizer(mean=np.array(scaling["mean"]), std=np.array(scaling["std"]))
    return data.with_features(scaler.transform(data.features))
