"""A model version handed over as one file: a zip a hospital can keep, read and apply.

::

    model.safetensors   the weights (the platform's wire format)
    model.json          what is needed to apply them: the model configuration, the data
                        schema, the feature scaling, the class map, the job and version
    provenance.json     which sites' updates made the version (digests, example counts)
    metrics.json        the sites' combined metrics of this version, and per round
    MODEL_CARD.md       the same for people: data, training, privacy, results, limits

This module writes and reads bundles without torch or scikit-learn (the control plane
builds them); :mod:`federation.predict` applies one to a CSV file.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import ConfigurationError

BUNDLE_FORMAT = 1
WEIGHTS, MANIFEST, PROVENANCE, METRICS, CARD = (
    "model.safetensors",
    "model.json",
    "provenance.json",
    "metrics.json",
    "MODEL_CARD.md",
)
#: Never read more than this from one member of a bundle (a zip bomb stops here).
MAX_MEMBER_BYTES = 4 * 1024**3

Json = dict[str, Any]


@dataclass(frozen=True)
class BundleContents:
    """What a bundle holds, as the control plane knows it."""

    weights: bytes
    study: Json  # name, description, model, data_schema, feature_scaling, strategy, privacy, training
    job: Json  # id, num_rounds, rounds_done, sites, state
    version: Json  # number, sha256, made_by_round
    provenance: Json
    metrics: Json  # this version's combined metrics
    rounds: Sequence[Json]  # per training round: number, received, metrics


def write_bundle(contents: BundleContents) -> bytes:
    """The bundle's zip bytes (deflated, except the weights, which do not compress)."""
    digest = hashlib.sha256(contents.weights).hexdigest()
    if digest != contents.version["sha256"]:
        raise ConfigurationError("the weights do not match the version's digest")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(WEIGHTS), contents.weights, compress_type=zipfile.ZIP_STORED)
        archive.writestr(MANIFEST, _json(manifest(contents)))
        archive.writestr(PROVENANCE, _json(contents.provenance))
        archive.writestr(METRICS, _json({"version": contents.metrics, "rounds": list(contents.rounds)}))
        archive.writestr(CARD, model_card(contents))
    return buffer.getvalue()


def manifest(contents: BundleContents) -> Json:
    """``model.json``: what applying the weights needs, and where they come from."""
    study = contents.study
    schema = study["data_schema"]
    return {
        "bundle_format": BUNDLE_FORMAT,
        "weights": {"file": WEIGHTS, "sha256": contents.version["sha256"]},
        "model": study["model"],
        "data_schema": schema,
        "feature_scaling": study.get("feature_scaling"),
        "classes": dict(enumerate(schema.get("classes") or [])),
        "study": {"name": study["name"], "strategy": study["strategy"]},
        "job": contents.job,
        "version": contents.version,
    }


@dataclass(frozen=True)
class Bundle:
    """A bundle as read back: its manifest and the weights' bytes, digest checked."""

    manifest: Json
    weights: bytes
    card: str


def read_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle: its format, and the weights against their digest."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest_json = json.loads(_member(archive, MANIFEST))
            weights = _member(archive, WEIGHTS)
            card = _member(archive, CARD).decode("utf-8")
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ConfigurationError(f"{path}: not a model bundle ({error})") from None
    found = manifest_json.get("bundle_format")
    if found != BUNDLE_FORMAT:
        raise ConfigurationError(f"{path}: bundle format {found!r}, not {BUNDLE_FORMAT}")
    if hashlib.sha256(weights).hexdigest() != manifest_json["weights"]["sha256"]:
        raise ConfigurationError(f"{path}: the weights do not match their SHA-256; the file is damaged")
    return Bundle(manifest_json, weights, card)


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    if archive.getinfo(name).file_size > MAX_MEMBER_BYTES:
        raise ValueError(f"{name} is larger than {MAX_MEMBER_BYTES} bytes")
    with archive.open(name) as member:
        return member.read(MAX_MEMBER_BYTES + 1)


def _json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


# --- the model card ----------------------------------------------------------------------


def model_card(contents: BundleContents) -> str:
    """A model card (Mitchell et al., FAT* 2019) from what the platform recorded."""
    study, job, version = contents.study, contents.job, contents.version
    schema = study["data_schema"]
    lines = [
        f"# Model card: {study['name']}, job {job['id']}, version {version['number']}",
        "",
        study.get("description") or "",
        "",
        "## Model",
        f"- kind: {study['model'].get('kind')}, task: {schema.get('task')}",
        f"- weights: `{WEIGHTS}`, SHA-256 `{version['sha256']}`",
        f"- made by round {version.get('made_by_round') or '—'} of {job['num_rounds']}",
        "",
        "## Data",
        f"- {job['sites']} sites trained on their own rows; no row left a site",
        f"- label `{schema.get('label')}`" + _classes_text(schema),
        f"- features: {_features_text(schema)}",
        f"- feature scaling agreed from the sites' sums: {'yes' if study.get('feature_scaling') else 'none'}",
        "",
        "## Training",
        f"- strategy {study['strategy']}, {job['rounds_done']} rounds done",
        f"- local training: {_compact(study.get('training') or {})}",
        f"- privacy: {_compact(study.get('privacy') or {}) or 'none'}",
        f"- updates combined into this version: {len(contents.provenance.get('updates') or [])}",
        "",
        "## Results (the sites' own validation rows, combined by example counts)",
        *_metrics_lines(contents.metrics),
        "",
        "## Use and limits",
        "- Apply it only to data laid out as the schema says, scaled as `model.json` says",
        "  (`python -m federation.predict` does both).",
        "- The metrics come from the participating sites' validation rows; a hospital outside",
        "  the consortium should validate it on its own patients first.",
        "- It is not a medical device; decisions stay with clinicians.",
        "",
    ]
    return "\n".join(lines)


def _classes_text(schema: Mapping[str, Any]) -> str:
    classes = schema.get("classes")
    return f", classes {', '.join(map(str, classes))}" if classes else " (regression)"


def _features_text(schema: Mapping[str, Any]) -> str:
    features = schema.get("features") or []
    if schema.get("kind") == "text":
        return f"text column `{schema.get('text', {}).get('name')}`"
    return ", ".join(f"{f['name']} ({f.get('kind', 'numeric')})" for f in features)


def _metrics_lines(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["- none reported for this version"]
    numbers = sorted((name, value) for name, value in metrics.items() if isinstance(value, int | float))
    return [f"- {name}: {value:.4f}" for name, value in numbers]


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if value else ""
