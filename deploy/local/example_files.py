"""Example hospital exports for trying the platform on one machine (docs/guide-own-data.md).

``python -m deploy.local.example_files FOLDER`` writes ``hospital-a/data.csv``,
``hospital-b/data.csv``, ``hospital-c/data.csv`` and ``test.csv``: the breast-cancer patients
that ship with scikit-learn, split four ways and written as an export might look, with an
identifier, a yes/no column, a categorical unit (one value only Hospital C has) and a named
diagnosis.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from federation.data import load_builtin

PARTS = ("hospital-a/data.csv", "hospital-b/data.csv", "hospital-c/data.csv", "test.csv")
UNITS = ("ward 1", "ward 2", "day clinic")


def _unit(part: str, row: int) -> str:
    if part.startswith("hospital-c") and row % 7 == 0:
        return "hospice"  # only Hospital C has it: a schema from another site's file lacks it
    return UNITS[row % 3]


def write_example_files(folder: Path) -> list[Path]:
    """The four files under ``folder``; returns their paths in the order of :data:`PARTS`."""
    data = load_builtin("breast_cancer")
    parts = np.array_split(np.random.default_rng(0).permutation(len(data)), len(PARTS))
    paths = []
    for name, rows in zip(PARTS, parts, strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["patient", *data.feature_names, "smoker", "unit", "diagnosis"])
            for row in rows:
                cells = [f"{value:.6g}" for value in data.features[row]]
                extra = ["yes" if row % 3 == 0 else "no", _unit(name, int(row))]
                writer.writerow([f"P{row:05d}", *cells, *extra, ["malignant", "benign"][data.labels[row]]])
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m deploy.local.example_files FOLDER")
    for written in write_example_files(Path(sys.argv[1])):
        print(written)
