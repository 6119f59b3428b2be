"""The agent's long-lived credential, written once by ``silo-agent enroll``.

The file is JSON ``{"server_url", "credential_id", "institution": {"id", "name"}, "key"}``
with mode 0600. The key is the only secret the agent holds; it is sent only to the server
that issued it and never logged.
"""

from __future__ import annotations

import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from silo_agent.errors import ConfigError
from silo_agent.files import atomic_write

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Institution:
    """The hospital this agent speaks for, as the server knows it."""

    id: int
    name: str


@dataclass(frozen=True)
class Credential:
    """What ``enroll`` returned. ``repr`` hides the key so it cannot leak into a log."""

    server_url: str
    credential_id: int
    institution: Institution
    key: str

    def __repr__(self) -> str:
        return (
            f"Credential(server_url={self.server_url!r}, credential_id={self.credential_id}, "
            f"institution={self.institution!r}, key=<hidden>)"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "server_url": self.server_url,
            "credential_id": self.credential_id,
            "institution": {"id": self.institution.id, "name": self.institution.name},
            "key": self.key,
        }


def write_credential(path: Path, credential: Credential) -> None:
    """Write the credential file atomically with mode 0600 (readable by the agent's user only)."""
    data = json.dumps(credential.to_json(), indent=2).encode() + b"\n"
    atomic_write(path, data, mode=0o600)


def read_credential(path: Path) -> Credential:
    """Read and check the credential file; raises :class:`ConfigError` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no credential file; run `silo-agent enroll` first") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the credential file ({error.strerror or error})") from None
    _warn_if_readable_by_others(path)
    try:
        return _parse_credential(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: not a valid credential file; enroll again with --force") from None


def _parse_credential(data: dict[str, object]) -> Credential:
    institution = data["institution"]
    if not isinstance(institution, dict):
        raise TypeError("institution must be an object")
    key, server_url = data["key"], data["server_url"]
    if not isinstance(key, str) or not key or not isinstance(server_url, str):
        raise TypeError("key and server_url must be strings")
    return Credential(
        server_url=server_url,
        credential_id=_as_int(data["credential_id"]),
        institution=Institution(id=_as_int(institution["id"]), name=str(institution["name"])),
        key=key,
    )


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _warn_if_readable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users; run: chmod 600 %s", path, path)
