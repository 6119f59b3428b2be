"""The silo agent: runs at a hospital behind its firewall, dials out to the control plane,
trains on local data and uploads only model updates and aggregate metrics.

The command line is :mod:`silo_agent.cli`; the user's guide is ``docs/agent.md``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedhealth")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
