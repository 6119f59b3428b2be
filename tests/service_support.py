"""Which real services the tests may use (imported by the tests that need them).

On CI (the ``CI`` variable is set) the services this machine kind runs (PostgreSQL and
Redis) must be there: a test that needs a missing one fails. Elsewhere it is skipped with
the reason.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get("FEDHEALTH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FEDHEALTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SERVICES = {"postgres": ("127.0.0.1", 5432), "redis": ("127.0.0.1", 6379)}


def service_reachable(name: str) -> bool:
    host, port = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def missing_on_this_machine(message: str) -> None:
    """Fail on CI, which must provide everything; elsewhere skip with the reason."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}, which CI must provide")
    pytest.skip(reason=f"{message}, not on this machine")


def require_services(*names: str) -> None:
    missing = [name for name in names if not service_reachable(name)]
    if missing:
        where = ", ".join(f"{SERVICES[m][0]}:{SERVICES[m][1]}" for m in missing)
        missing_on_this_machine(f"needs {', '.join(missing)} on {where}")


def main(names: list[str]) -> int:
    """``python tests/service_support.py postgres``: 0 if reachable, 3 to skip, 1 to fail (CI)."""
    missing = [name for name in names if not service_reachable(name)]
    if not missing:
        return 0
    print(f"not reachable: {', '.join(missing)}")
    return 1 if os.environ.get("CI") else 3


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
