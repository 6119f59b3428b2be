"""A secure sum for one-off questions (the data agreement's summaries): the server learns
the sum of the sites' vectors and nothing about any one of them.

Each site draws an X25519 key pair for the question and advertises the public key; once
every site has, each adds to its fixed-point vector the pairwise masks it shares with every
other site (the masks of :mod:`federation.privacy.secagg`, seeded by key agreement and bound
to the question), so the masks cancel in the sum. Unlike a training round there is no
recovery from a site that stops between the two steps (no secret shares): the question then
fails and is asked again, which costs a second. Values are encoded with
:data:`FRACTION_BITS` fraction bits; counts stay exact, sums are exact to ``n * 2^-17``.

The server is trusted to hand every site the same list of keys (as for training rounds:
docs/privacy.md).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from federation.errors import SecureAggregationError
from federation.privacy import secagg

FRACTION_BITS = 16


def question_context(question: str) -> bytes:
    """The bytes the masks are bound to: one question's masks never cancel another's."""
    return f"federation.secure_sum/{question}".encode()


def masked_input(
    vector: NDArray[np.floating],
    *,
    site_id: int,
    private_key: bytes,
    roster: Mapping[int, bytes],
    question: str,
) -> NDArray[np.uint64]:
    """``vector`` in fixed point plus the pairwise masks with every other site of ``roster``
    (site id to public key, this site's own included)."""
    if site_id not in roster or roster[site_id] != secagg.public_key_bytes(private_key):
        raise SecureAggregationError("the list of keys does not hold this site's own key")
    if len(roster) < 2:
        raise SecureAggregationError("a secure sum needs at least two sites")
    encoded = secagg.encode(np.asarray(vector, dtype=np.float64), FRACTION_BITS, num_summands=len(roster))
    context = question_context(question)
    seeds = {
        peer: secagg.pairwise_mask_seed(
            private_key, key, round_context=context, site_id=site_id, peer_id=peer
        )
        for peer, key in roster.items()
        if peer != site_id
    }
    secagg.add_pairwise_masks(encoded, site_id, seeds)
    return encoded


def unmasked_sum(inputs: Sequence[NDArray[np.uint64]]) -> NDArray[np.float64]:
    """The sum of every site's masked input (all of them: a missing one leaves masks in)."""
    if not inputs:
        raise SecureAggregationError("no input to sum")
    total = np.zeros_like(inputs[0])
    for masked in inputs:
        np.add(total, masked, out=total)  # modulo 2^64
    return secagg.decode(total, FRACTION_BITS)


def to_text(values: NDArray[np.uint64]) -> str:
    return base64.b64encode(values.astype("<u8").tobytes()).decode()


def from_text(text: object, length: int) -> NDArray[np.uint64]:
    """A masked input sent as base64 of ``length`` little-endian uint64 values."""
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise SecureAggregationError("a masked input must be base64") from None
    if len(raw) != 8 * length:
        raise SecureAggregationError(
            f"a masked input holds {length} values ({8 * length} bytes), got {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)
