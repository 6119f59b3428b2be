"""The control plane aggregates tensors: loading it loads neither torch nor scikit-learn.

A fresh interpreter (``manage.py shell``, so Django is set up as in production) imports the
URL configuration, the Celery app, every app's services, selectors, APIs, tasks and admin,
and the console's views, then reports which heavy libraries are in ``sys.modules``. The
import-linter contract in ``pyproject.toml`` says the same statically; this test catches
what it cannot see (a package ``__init__`` re-exporting a module that loads them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "sklearn", "opacus")

PROBE = f"""
import importlib, json, pkgutil, sys
heavy = {HEAVY!r}
modules = ["fedplatform.urls", "fedplatform.celery"]
for app in ("accounts", "agentapi", "audit", "institutions", "studies", "training", "console"):
    for part in ("services", "selectors", "apis", "tasks", "admin", "urls"):
        try:
            importlib.import_module(app + "." + part)
        except ModuleNotFoundError as error:
            if error.name != app + "." + part:
                raise
        else:
            modules.append(app + "." + part)
import console.views
for info in pkgutil.iter_modules(console.views.__path__):
    modules.append("console.views." + info.name)
    importlib.import_module(modules[-1])
loaded = [name for name in heavy if name in sys.modules]
import federation.metrics  # the probe sees a heavy import when there is one
print(json.dumps({{"modules": modules, "loaded": loaded,
                  "control": [name for name in heavy if name in sys.modules]}}))
"""


def test_loading_the_control_plane_loads_neither_torch_nor_scikit_learn() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "-c", PROBE],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"training.services", "training.tasks", "studies.services", "fedplatform.urls"} <= set(
        report["modules"]
    )
    assert report["loaded"] == []
    assert report["control"] == ["sklearn"]
