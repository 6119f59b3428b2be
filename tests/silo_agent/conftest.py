"""Fixtures of the silo agent's tests: a fake server and one hospital's files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import FakeServer, RunnerHarness, Site, write_site

from silo_agent.client import RetryPolicy


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return write_site(tmp_path)


@pytest.fixture
def make_harness(server: FakeServer, site: Site) -> Callable[..., RunnerHarness]:
    """A fresh agent process on the same state folder (as after a restart)."""

    def make(retry: RetryPolicy | None = None) -> RunnerHarness:
        return RunnerHarness(server, site, retry or RetryPolicy(max_attempts=3))

    return make
