"""The hash chain of the audit trail: canonical serialization and hashing (docs/audit.md).

Each event's hash is the SHA-256 of a canonical JSON object holding its sequence number,
timestamp, actor, kind, institution and job ids, details and the previous event's hash.
Pure functions, no database: the data migration, the writer and the verifier share them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

#: The ``previous_hash`` of the first event.
GENESIS_HASH = "0" * 64

#: Python writes floats from 1e16 up in exponent form; PostgreSQL's jsonb gives them back as
#: integers. Such floats are stored as the integers they equal, so that what is read back
#: hashes the same as what was written, whatever the database.
_EXPONENT_FORM_FLOOR = 1e16

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, ASCII only (other characters as ``\\uXXXX`` escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds, e.g. ``2026-01-31T09:05:00.000000+00:00``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(
    *,
    sequence: int,
    at: datetime,
    actor: str,
    kind: str,
    institution_id: int | None,
    job_id: int | None,
    details: object,
    previous_hash: str,
) -> str:
    """The hex SHA-256 of the event's canonical serialization."""
    payload = {
        "sequence": sequence,
        "at": canonical_timestamp(at),
        "actor": actor,
        "kind": kind,
        "institution_id": institution_id,
        "job_id": job_id,
        "details": details,
        "previous_hash": previous_hash,
    }
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def details_normalize(details: object) -> JsonValue:
    """The details as the database will give them back: plain JSON (tuples become lists,
    keys strings), finite numbers only, no negative zero, large whole floats as integers.

    Raises ``ValueError`` for NaN or infinities and ``TypeError`` for what JSON cannot hold.
    """
    return _normalize(json.loads(json.dumps(details, allow_nan=False)))


def _normalize(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if isinstance(value, float):
        if abs(value) >= _EXPONENT_FORM_FLOOR and value.is_integer():
            return int(value)
        return value + 0.0  # -0.0 becomes 0.0, which is what jsonb keeps
    return value


def short_hash(hash_hex: str) -> str:
    """The first 12 hex digits, for messages."""
    return hash_hex[:12]
