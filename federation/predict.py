"""Apply a model bundle (:mod:`federation.bundle`) to a CSV file of patients::

    python -m federation.predict model-bundle.zip patients.csv [--output predictions.csv]

The file needs the schema's feature columns (a label column, if present, is not read). The
features are encoded and scaled exactly as the sites did in training, and each row gets the
predicted class and the probability of every class (regression: the predicted value).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from federation.bundle import Bundle, read_bundle
from federation.data import DataSchema, Standardizer, load_csv
from federation.errors import FederationError
from federation.models import ModelConfig, build_model
from federation.types import ModelSpec, Task
from federation.wire import deserialize_weights


def predict_file(bundle: Bundle, path: str | Path) -> NDArray[np.float64]:
    """The model's scores for each row of ``path``: P(class 1) for binary, class
    probabilities for multiclass, values for regression (as ``ModelAdapter.predict``)."""
    manifest = bundle.manifest
    schema = DataSchema.from_json(manifest["data_schema"])
    features = load_csv(path, schema, with_labels=False).features
    scaling = manifest.get("feature_scaling")
    if scaling:
        scaler = Standardizer(mean=np.array(scaling["mean"]), std=np.array(scaling["std"]))
        features = scaler.transform(features)
    config = ModelConfig.from_json(manifest["model"])
    model = build_model(config, seed=0)
    spec = ModelSpec.from_weights(model.get_weights())
    model.set_weights(deserialize_weights(bundle.weights, spec=spec))
    return model.predict(features)


def prediction_rows(bundle: Bundle, scores: NDArray[np.float64]) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of the predictions file."""
    schema = bundle.manifest["data_schema"]
    if schema["task"] == Task.REGRESSION.value:
        return ["row", f"predicted_{schema['label']}"], [[i + 1, float(v)] for i, v in enumerate(scores)]
    classes = [str(c) for c in schema["classes"]]
    probabilities = np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores
    header = ["row", f"predicted_{schema['label']}", *(f"p_{name}" for name in classes)]
    rows = [
        [i + 1, classes[int(np.argmax(p))], *(round(float(x), 6) for x in p)]
        for i, p in enumerate(probabilities)
    ]
    return header, rows


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation.predict", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the model bundle (.zip) downloaded from the platform")
    parser.add_argument("csv", type=Path, help="the rows to predict, with the schema's feature columns")
    parser.add_argument("--output", type=Path, help="write the predictions here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        bundle = read_bundle(args.bundle)
        header, rows = prediction_rows(bundle, predict_file(bundle, args.csv))
    except FederationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = (
        args.output.open("w", newline="", encoding="utf-8") if args.output else nullcontext(out or sys.stdout)
    )
    with target as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"{len(rows)} rows predicted with {args.bundle.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
