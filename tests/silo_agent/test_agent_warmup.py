"""The agent gets ready at start: model libraries imported, torch used once, the built-in
data read, so that its first task only trains (figure: deploy/run_local.py's
``first_round_seconds`` against ``round_seconds_median``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from agent_fakes import write_site

from silo_agent.config import load_config
from silo_agent.warmup import MODEL_MODULES, warm_up


def test_warming_up_loads_the_model_libraries_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_site(tmp_path).config_path)
    with caplog.at_level(logging.INFO, logger="silo_agent"):
        seconds = warm_up(config)
    assert seconds > 0
    assert all(module in sys.modules for module in MODEL_MODULES)
    assert "ready: model libraries loaded and local data read in" in caplog.text
