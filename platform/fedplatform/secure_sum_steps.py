"""The parts of an agent's answer to a secure sum that the data agreement and federated
queries read alike: a refusal, a public key for the question, a masked vector
(``federation.privacy.secure_sum``). Each raises the API error that names what is wrong."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from federation.errors import FederationError
from federation.privacy.secure_sum import from_text, masked_length
from fedplatform.errors import Conflict, InvalidInput

#: Longest refusal reason kept from an agent.
MAX_REASON_CHARS = 2000
#: An X25519 public key.
KEY_BYTES = 32


class SecurePhase:
    """The two steps of a secure sum: every site's key, then every site's masked input."""

    KEYS = "keys"
    MASK = "mask"


def refusal_of(body: Mapping[str, object]) -> str | None:
    """The site's reason to refuse, if it refuses."""
    refusal = body.get("refused")
    if refusal is None:
        return None
    if not isinstance(refusal, str) or not refusal.strip():
        raise InvalidInput("refused must be the reason, a non-empty string")
    return refusal.strip()[:MAX_REASON_CHARS]


def public_key_of(body: Mapping[str, object], *, asks: str = "public_key") -> str:
    """The site's base64 X25519 key for the question."""
    if "public_key" not in body:
        raise Conflict(f"this step asks for {asks} (or refused)", code="wrong_phase")
    try:
        key = base64.b64decode(str(body["public_key"]), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("public_key must be base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidInput(f"public_key must be {KEY_BYTES} bytes")
    return str(body["public_key"])


def masked_of(body: Mapping[str, object], num_values: int) -> str:
    """The site's masked input of ``num_values`` values, as sent (checked, not decoded)."""
    if "masked" not in body:
        raise Conflict("this step asks for masked (or refused)", code="wrong_phase")
    try:
        from_text(body["masked"], masked_length(num_values))
    except FederationError as error:
        raise InvalidInput(f"masked: {error}") from None
    return str(body["masked"])
