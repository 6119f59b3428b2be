"""A secure sum for one-off questions (the data agreement's summaries): the server learns
the sum of the sites' vectors and nothing about any one of them.

Each site draws an X25519 key pair for the question and advertises the public key; once
every site has, each adds to its encoded vector the pairwise masks it shares with every
other site (the masks of :mod:`federation.privacy.secagg`, seeded by key agreement and bound
to the question), so the masks cancel in the sum. Unlike a training round there is no
recovery from a site that stops between the two steps (no secret shares): the question then
fails and is asked again, which costs a second.

Summaries hold sums of squares, which outgrow one 64-bit fixed-point word (a platelet count
squared over a thousand rows is about 6e13), so each value is encoded wide: ``round(x *
2^24)`` modulo ``2^128``, split into four 32-bit limbs, each in its own 64-bit lane. The
lanes of up to ``2^32`` sites add up without wrapping, and the masks (modulo ``2^64`` per
lane) still cancel exactly; the total is put back together from its limbs. Counts stay
exact, sums are exact to ``n * 2^-25``, and values up to about ``2^103`` fit.

The server is trusted to hand every site the same list of keys (as for training rounds:
docs/privacy.md).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from federation.errors import SecureAggregationError
from federation.privacy import secagg

FRACTION_BITS = 24
LIMBS = 4
LIMB_BITS = 32
_RING = 1 << (LIMBS * LIMB_BITS)
_LIMB_MASK = (1 << LIMB_BITS) - 1
#: Values beyond this do not fit the ring with room for every site's addend.
MAX_ABS_VALUE = math.ldexp(1.0, LIMBS * LIMB_BITS - FRACTION_BITS - 25)


def question_context(question: str) -> bytes:
    """The bytes the masks are bound to: one question's masks never cancel another's."""
    return f"federation.secure_sum/{question}".encode()


def encode_wide(values: NDArray[np.floating]) -> NDArray[np.uint64]:
    """Each value as :data:`LIMBS` lanes of 32-bit limbs of ``round(x * 2^24) mod 2^128``."""
    lanes: list[int] = []
    for value in np.asarray(values, dtype=np.float64):
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            raise SecureAggregationError(
                f"cannot encode {value!r}: a finite value within ±{MAX_ABS_VALUE:.3g}"
            )
        fixed = round(float(value) * (1 << FRACTION_BITS)) % _RING
        lanes.extend((fixed >> (LIMB_BITS * limb)) & _LIMB_MASK for limb in range(LIMBS))
    return np.asarray(lanes, dtype=np.uint64)


def decode_wide(lanes: NDArray[np.uint64]) -> NDArray[np.float64]:
    """The values a sum of :func:`encode_wide` lanes stands for."""
    if lanes.size % LIMBS:
        raise SecureAggregationError(f"a wide encoding has a multiple of {LIMBS} lanes")
    values = []
    for start in range(0, lanes.size, LIMBS):
        fixed = sum(int(lanes[start + limb]) << (LIMB_BITS * limb) for limb in range(LIMBS)) % _RING
        signed = fixed - _RING if fixed >= _RING // 2 else fixed
        values.append(signed / (1 << FRACTION_BITS))
    return np.asarray(values, dtype=np.float64)


def masked_input(
    vector: NDArray[np.floating],
    *,
    site_id: int,
    private_key: bytes,
    roster: Mapping[int, bytes],
    question: str,
) -> NDArray[np.uint64]:
    """``vector`` encoded wide plus the pairwise masks with every other site of ``roster``
    (site id to public key, this site's own included)."""
    if site_id not in roster or roster[site_id] != secagg.public_key_bytes(private_key):
        raise SecureAggregationError("the list of keys does not hold this site's own key")
    if len(roster) < 2:
        raise SecureAggregationError("a secure sum needs at least two sites")
    encoded = encode_wide(np.asarray(vector, dtype=np.float64))
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
        np.add(total, masked, out=total)  # modulo 2^64 per lane
    return decode_wide(total)


def masked_length(num_values: int) -> int:
    """The lanes of a masked input of ``num_values`` values."""
    return num_values * LIMBS


def to_text(values: NDArray[np.uint64]) -> str:
    return base64.b64encode(values.astype("<u8").tobytes()).decode()


def from_text(text: object, length: int) -> NDArray[np.uint64]:
    """A masked input sent as base64 of ``length`` little-endian uint64 lanes."""
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise SecureAggregationError("a masked input must be base64") from None
    if len(raw) != 8 * length:
        raise SecureAggregationError(
            f"a masked input holds {length} lanes ({8 * length} bytes), got {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)
