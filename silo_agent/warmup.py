"""Get ready before the first task: the model libraries imported and the site's data read.

Importing torch and scikit-learn and reading the data took most of a first round's time
(about 10 s against 0.4 s for the rounds after it). The agent does this once at start, so
that the first task, like every later one, only trains.
"""

from __future__ import annotations

import importlib
import logging
import time

import numpy as np

from federation.models import ModelConfig, ModelKind, TrainConfig, build_model
from federation.types import Task
from silo_agent.config import AgentConfig, DataSourceKind
from silo_agent.local_data import load_dataset

logger = logging.getLogger(__name__)

#: The adapters of the tabular model kinds (torch and scikit-learn).
MODEL_MODULES = ("federation.models.torch_models", "federation.models.sklearn_models")


def warm_up(config: AgentConfig) -> float:
    """Import the model libraries, train a throwaway model for one step (torch sets its
    threads and autograd up on first use) and read a built-in data source; returns the
    seconds it took. A CSV source needs a study's schema to be read: its first task reads it."""
    started = time.perf_counter()
    for module in MODEL_MODULES:
        importlib.import_module(module)
    _train_a_throwaway_model()
    if config.data.kind is DataSourceKind.BUILTIN:
        load_dataset(config.data, None)
    seconds = time.perf_counter() - started
    logger.info("ready: model libraries loaded%s in %.1f s", _data_note(config), seconds)
    return seconds


def _data_note(config: AgentConfig) -> str:
    return " and local data read" if config.data.kind is DataSourceKind.BUILTIN else ""


def _train_a_throwaway_model() -> None:
    rows = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    labels = np.array([0, 1] * 4)
    model = build_model(ModelConfig(ModelKind.MLP, Task.BINARY, 4, 2, hidden_sizes=(4,)), seed=0)
    model.fit(rows, labels, TrainConfig(epochs=1, batch_size=4))
    model.predict(rows)
