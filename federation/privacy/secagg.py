"""Secure aggregation: the server learns the sum of the sites' vectors, never one of them.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal and Seth, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017. This is the
semi-honest variant of its protocol: no consistency-check round and no signatures.

One round, as the control plane carries it (every message JSON/base64, stored in its
database; the server side is stateless functions, so any Celery worker can run them):

0. **Advertise keys.** Each site ``u`` draws two X25519 key pairs for this round: a "c"
   pair to encrypt share bundles and an "s" pair for pairwise masks, and sends the public
   halves. The server forwards the roster ``U1`` of advertised keys to every site.
1. **Share keys.** ``u`` draws a 32-byte self-mask seed ``b_u``, splits ``b_u`` and its
   mask private key ``s_sk_u`` into ``t``-out-of-``|U1|`` Shamir shares, and sends each
   peer ``v`` its two shares, AES-GCM-encrypted under a key that HKDF-SHA256 derives
   from ``X25519(c_sk_u, c_pk_v)``. ``U2`` is the set of sites whose bundles arrived.
2. **Masked input.** With ``s_uv`` = HKDF-SHA256(``X25519(s_sk_u, s_pk_v)``, bound to
   the round context and both site ids), ``u`` sends, in the ring Z_{2^64},
   ``y_u = encode(x_u) + PRG(b_u) + sum_{v in U2, v > u} PRG(s_uv)
   - sum_{v in U2, v < u} PRG(s_uv)``. ``U3`` is the set whose masked inputs arrived.
3. **Unmasking.** Every site still there answers with its share of ``b_v`` for each
   ``v`` in ``U3`` and of ``s_sk_v`` for each ``v`` in ``U2 \\ U3``, never both for one
   ``v``. From ``t`` answers the server rebuilds them, removes the self masks and the
   dropped sites' pairwise masks from the sum of the ``y_u``, and decodes it.

Threat model. The server, and whoever reads its database, is honest but curious: it
follows the protocol and looks at everything it stores. It sees public keys, share
bundles it cannot decrypt, masked vectors that are each uniformly distributed over the
ring (the self mask ``PRG(b_u)`` alone sees to that), and at the end the sum of the
inputs of ``U3``. It learns nothing about one site's input beyond what that sum reveals
(with two survivors, either site can subtract its own input from the sum: secure
aggregation hides a site inside the sum, not from it). The server together with fewer
than ``t`` sites learns nothing beyond the sum of the other sites' inputs. Out of scope:
an actively malicious server that forges dropouts or sends sites different rosters (the
paper's signatures and consistency check are not implemented), and sites that send
harmful inputs (the server cannot inspect inputs it cannot see).

Why ``t > n/2`` (see :func:`minimum_threshold`). Each site refuses to reveal both shares
of the same site, but that rule is local to the site. Without the consistency check, a
server that asks different sites about different survivor lists (through a bug, a task
run twice after a crash, or a curious operator) could collect ``t`` shares of ``b_v``
from one group and ``t`` shares of ``s_sk_v`` from another, and strip every mask from
``y_v``. Two groups of more than ``n/2`` sites always share a site, and that site
refuses. So a study must set ``t >= n // 2 + 1``; sites and server both check it.

Fixed point and error bound. A value ``x`` is encoded as the two's-complement integer
``round(x * 2^f)`` modulo 2^64 (``f`` = ``fraction_bits``, default 24). A site may encode
values with ``|x| <= (2^63 - 1) / (n * 2^f)`` (about ``2^(63 - f) / n``, where ``n`` is the
roster size; see :func:`max_abs_value`), so that the sum of ``n`` of them cannot wrap:
``|sum| < 2^(63 - f)`` (2^39, about 5.5e11, for ``f = 24``). Each coordinate's rounding
error is at most ``2^-(f+1)`` per site, so the decoded sum of ``n`` sites is within
``n * 2^-(f+1)`` of the exact sum of the float64 inputs (:func:`error_bound`), plus the
final rounding of that sum to float64 (relative ``2^-53``) that any float64 result has.

Randomness comes from ``random_bytes`` (``os.urandom`` unless a test passes another
source of bytes). A client's state (:meth:`SecAggClient.to_json`) holds its private keys,
its seed and its shares of them: it must stay on the site's own disk.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import math
import operator
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from federation.errors import ConfigurationError, SecureAggregationError

#: A source of cryptographically secure random bytes: ``random_bytes(n)`` returns ``n`` bytes.
RandomBytes = Callable[[int], bytes]

DEFAULT_FRACTION_BITS = 24
MAX_FRACTION_BITS = 62
#: Length of every secret, seed and X25519 key, in bytes.
SECRET_BYTES = 32
#: The Mersenne prime 2^521 - 1: the Shamir field, larger than any 32-byte secret.
SHAMIR_PRIME = (1 << 521) - 1
#: Length of one Shamir share value on the wire (big-endian).
SHARE_BYTES = 66
_INT64_MAX = (1 << 63) - 1
_NONCE_BYTES = 12
#: Size of one encrypted share bundle: nonce, two shares, the AES-GCM tag.
SHARE_BUNDLE_BYTES = _NONCE_BYTES + 2 * SHARE_BYTES + 16
_PRG_CHUNK_BYTES = 1 << 20
_CHACHA_ZERO_NONCE = bytes(16)
_LABEL = b"federation.secagg.v1/"


class Revealed(enum.StrEnum):
    """Which secret of a site a client has revealed its share of."""

    #: The self-mask seed ``b_v``: asked for sites whose masked input arrived.
    SELF_MASK = "self_mask"
    #: The mask private key ``s_sk_v``: asked for sites that dropped before sending it.
    MASK_KEY = "mask_key"


# ------------------------------------------------------------------------- validation


def _whole_number(name: str, value: int, *, minimum: int, maximum: int = _INT64_MAX) -> int:
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigurationError(f"{name} must be in [{minimum}, {maximum}], got {number}")
    return number


def _site_id(value: int) -> int:
    """A site id: a positive integer below 2^63 (it is a Shamir x-coordinate)."""
    try:
        return _whole_number("a site id", value, minimum=1)
    except ConfigurationError as error:
        raise SecureAggregationError(str(error)) from None


def _site_ids(values: Iterable[int]) -> frozenset[int]:
    return frozenset(_site_id(value) for value in values)


def _random(random_bytes: RandomBytes, length: int) -> bytes:
    drawn = random_bytes(length)
    if not isinstance(drawn, bytes) or len(drawn) != length:
        raise ConfigurationError(f"random_bytes({length}) must return {length} bytes")
    return drawn


# ---------------------------------------------------------------- thresholds and bounds


def minimum_threshold(num_sites: int) -> int:
    """The smallest safe threshold for ``num_sites`` sites: a strict majority, ``n // 2 + 1``.

    >>> [minimum_threshold(n) for n in (2, 3, 4, 5, 10)]
    [2, 2, 3, 3, 6]
    """
    return _whole_number("num_sites", num_sites, minimum=1) // 2 + 1


def error_bound(num_sites: int, fraction_bits: int = DEFAULT_FRACTION_BITS) -> float:
    """Largest per-coordinate error of a decoded sum of ``num_sites`` inputs: ``n * 2^-(f+1)``.

    Valid while the exact sum stays below ``2^(63 - f)`` in magnitude (see :func:`encode`);
    the decoded float64 may add its own final rounding (relative ``2^-53``).

    >>> error_bound(5, fraction_bits=24)
    1.4901161193847656e-07
    """
    sites = _whole_number("num_sites", num_sites, minimum=1)
    return sites * math.ldexp(1.0, -(_fraction_bits(fraction_bits) + 1))


def max_abs_value(fraction_bits: int = DEFAULT_FRACTION_BITS, num_summands: int = 1) -> float:
    """Largest ``|x|`` that :func:`encode` accepts when ``num_summands`` inputs will be added.

    About ``2^(63 - f) / num_summands``, so that the sum can never wrap around the ring.

    >>> max_abs_value(24, num_summands=1)  # 2^39 less one float64 step at 2^63
    549755813887.99994
    """
    return math.ldexp(_scaled_limit(fraction_bits, num_summands), -_fraction_bits(fraction_bits))


def _fraction_bits(value: int) -> int:
    return _whole_number("fraction_bits", value, minimum=0, maximum=MAX_FRACTION_BITS)


def _scaled_limit(fraction_bits: int, num_summands: int) -> float:
    """The largest integer-valued float ``k`` with ``num_summands * k <= 2^63 - 1``."""
    _fraction_bits(fraction_bits)
    largest = _INT64_MAX // _whole_number("num_summands", num_summands, minimum=1)
    limit = float(largest)
    while int(limit) > largest:  # float() rounded up; step down so the check stays exact
        limit = math.nextafter(limit, 0.0)
    return limit


# ------------------------------------------------------------------------ fixed point


def encode(
    values: NDArray[np.floating],
    fraction_bits: int = DEFAULT_FRACTION_BITS,
    *,
    num_summands: int = 1,
) -> NDArray[np.uint64]:
    """``round(x * 2^f)`` as two's-complement in Z_{2^64}, refusing values that could wrap.

    Raises :class:`SecureAggregationError` for NaN, infinity or ``|x| > max_abs_value``.

    >>> encode(np.array([1.5, -0.25]), fraction_bits=2)
    array([                   6, 18446744073709551615], dtype=uint64)
    """
    limit = _scaled_limit(fraction_bits, num_summands)
    scaled = np.asarray(values, dtype=np.float64) * math.ldexp(1.0, fraction_bits)  # exact: a power of 2
    np.rint(scaled, out=scaled)
    if scaled.size:
        highest, lowest = float(scaled.max()), float(scaled.min())
        if not (highest <= limit and -lowest <= limit):  # also false for NaN
            raise SecureAggregationError(
                f"cannot encode values outside [-{max_abs_value(fraction_bits, num_summands):.6g}, "
                f"{max_abs_value(fraction_bits, num_summands):.6g}] (or NaN/infinity) with "
                f"fraction_bits={fraction_bits} for {num_summands} summands: the sum could wrap"
            )
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: NDArray[np.uint64], fraction_bits: int = DEFAULT_FRACTION_BITS) -> NDArray[np.float64]:
    """The float64 value of a (summed) encoding, read as a two's-complement integer.

    >>> decode(encode(np.array([1.5, -0.25]), 2) + encode(np.array([0.25, 0.25]), 2), 2)
    array([1.75, 0.  ])
    """
    array = np.asarray(total)
    if array.dtype != np.uint64:
        raise SecureAggregationError(f"decode needs uint64 values, got {array.dtype}")
    result: NDArray[np.float64] = array.view(np.int64).astype(np.float64)
    result *= math.ldexp(1.0, -_fraction_bits(fraction_bits))
    return result


def pack_weighted(vector: NDArray[np.floating], weight: float) -> NDArray[np.float64]:
    """``[weight * vector..., weight]``: the weight is summed inside the protected sum too.

    >>> pack_weighted(np.array([0.5, -1.0]), 4)
    array([ 2., -4.,  4.])
    """
    number = float(weight)
    if not math.isfinite(number) or number <= 0:
        raise SecureAggregationError(f"the weight must be a finite number > 0, got {weight!r}")
    array = np.asarray(vector, dtype=np.float64).ravel()
    packed = np.empty(array.size + 1, dtype=np.float64)
    np.multiply(array, number, out=packed[:-1])
    packed[-1] = number
    return packed


def unpack_weighted_sum(total: NDArray[np.floating]) -> tuple[NDArray[np.float64], float]:
    """Split a decoded sum of packed inputs into ``(sum of weight * vector, sum of weights)``.

    >>> unpack_weighted_sum(np.array([2.0, -4.0, 4.0]))
    (array([ 2., -4.]), 4.0)
    """
    array = np.asarray(total, dtype=np.float64)
    if array.ndim != 1 or array.size < 1:
        raise SecureAggregationError(f"a packed sum is a vector of length >= 1, got shape {array.shape}")
    return array[:-1], float(array[-1])


# ---------------------------------------------------------------- key agreement and PRG


def private_key_bytes(random_bytes: RandomBytes = os.urandom) -> bytes:
    """A fresh X25519 private key, as its 32 raw bytes (any 32 bytes are a valid key)."""
    return _random(random_bytes, SECRET_BYTES)


def public_key_bytes(private_key: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def _exchange(private_key: bytes, peer_public_key: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public_key)
        return X25519PrivateKey.from_private_bytes(private_key).exchange(peer)
    except ValueError as error:  # wrong length, or a low-order point giving an all-zero secret
        raise SecureAggregationError(f"X25519 key agreement failed: {error}") from None


def _context(purpose: bytes, round_context: bytes, first: int, second: int) -> bytes:
    """Unambiguous bytes naming a purpose, a round and two sites (length-prefixed context)."""
    return b"".join(
        (
            _LABEL,
            purpose,
            len(round_context).to_bytes(8, "big"),
            round_context,
            first.to_bytes(8, "big"),
            second.to_bytes(8, "big"),
        )
    )


def _hkdf(shared_secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None, info=info).derive(shared_secret)


def pairwise_mask_seed(
    private_key: bytes, peer_public_key: bytes, *, round_context: bytes, site_id: int, peer_id: int
) -> bytes:
    """``s_uv``: the same 32 bytes for ``u`` and ``v`` (ids sorted), bound to the round."""
    low, high = sorted((_site_id(site_id), _site_id(peer_id)))
    return _hkdf(_exchange(private_key, peer_public_key), _context(b"mask-seed", round_context, low, high))


def share_encryption_key(
    private_key: bytes, peer_public_key: bytes, *, round_context: bytes, sender: int, receiver: int
) -> bytes:
    """The AES-256-GCM key of the share bundle sent from ``sender`` to ``receiver``.

    The sender's and the receiver's "c" keys give the same X25519 secret; the ordered pair
    makes the key one-directional, so each key encrypts a single bundle per round.
    """
    info = _context(b"share-key", round_context, _site_id(sender), _site_id(receiver))
    return _hkdf(_exchange(private_key, peer_public_key), info)


def prg_fill(seed: bytes, out: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Fill ``out`` (C-contiguous) with the ChaCha20 keystream of ``seed``, as uint64 values.

    The all-zero nonce is safe: each seed is a fresh 32-byte key used for one keystream
    (``b_u`` is drawn per round; ``s_uv`` comes from per-round keys and the round context),
    and ChaCha20 only leaks when one key and nonce encrypt two different messages. Both
    sites of a pair expand ``s_uv`` to the same stream on purpose: that is what cancels.
    """
    if len(seed) != SECRET_BYTES:
        raise SecureAggregationError(f"a PRG seed is {SECRET_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_ZERO_NONCE), mode=None).encryptor()
    target = out.data.cast("B")
    zeros = memoryview(bytes(min(_PRG_CHUNK_BYTES, len(target))))
    for start in range(0, len(target), _PRG_CHUNK_BYTES):  # chunks: no 8*d-byte zero buffer
        stop = min(start + _PRG_CHUNK_BYTES, len(target))
        encryptor.update_into(zeros[: stop - start], target[start:stop])
    if sys.byteorder == "big":  # the stream is read little-endian, so every machine agrees
        out.byteswap(inplace=True)
    return out


def prg(seed: bytes, length: int) -> NDArray[np.uint64]:
    """``length`` pseudo-random uint64 values expanded from a 32-byte seed.

    >>> prg(bytes(32), 3).dtype, prg(bytes(32), 3)[0] == prg(bytes(32), 5)[0]
    (dtype('uint64'), np.True_)
    """
    return prg_fill(seed, np.empty(_whole_number("length", length, minimum=0), dtype=np.uint64))


def add_pairwise_masks(target: NDArray[np.uint64], site_id: int, seeds: Mapping[int, bytes]) -> None:
    """``target += sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`` in place (mod 2^64).

    Summed over every site of a round, the pairwise masks cancel exactly.
    """
    scratch = np.empty_like(target)
    for peer_id, seed in seeds.items():
        prg_fill(seed, scratch)
        if peer_id > site_id:
            np.add(target, scratch, out=target)
        elif peer_id < site_id:
            np.subtract(target, scratch, out=target)
        else:
            raise SecureAggregationError(f"site {site_id} has no pairwise mask with itself")


def mask_vector(
    encoded: NDArray[np.uint64], *, self_mask_seed: bytes, site_id: int, pairwise_seeds: Mapping[int, bytes]
) -> NDArray[np.uint64]:
    """``y_u = encoded + PRG(b_u) + pairwise masks`` (a new array; ``encoded`` is unchanged)."""
    masked = prg(self_mask_seed, encoded.size)
    np.add(masked, encoded, out=masked)
    add_pairwise_masks(masked, site_id, pairwise_seeds)
    return masked


# -------------------------------------------------------------------- Shamir sharing


def _field_element(random_bytes: RandomBytes) -> int:
    """A uniform element of the Shamir field; uniform coefficients make t-1 shares uniform."""
    while True:  # rejection sampling: exact uniformity (a retry has probability 2^-521)
        candidate = int.from_bytes(_random(random_bytes, SHARE_BYTES), "big") & SHAMIR_PRIME
        if candidate < SHAMIR_PRIME:
            return candidate


def shamir_split(
    secret: bytes, *, threshold: int, share_ids: Collection[int], random_bytes: RandomBytes = os.urandom
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of a 32-byte secret, ``f`` random of degree ``threshold - 1``.

    Any ``threshold`` shares give the secret back; fewer are uniformly random and
    independent of it.
    """
    if len(secret) != SECRET_BYTES:
        raise SecureAggregationError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    ids = sorted(_site_ids(share_ids))
    if not ids:
        raise SecureAggregationError("a secret needs at least one share id")
    degree_plus_one = _whole_number("threshold", threshold, minimum=1, maximum=len(ids))
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_field_element(random_bytes) for _ in range(degree_plus_one - 1)]
    return {x: _evaluate(coefficients, x) for x in ids}


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner's rule, modulo the prime
        result = (result * x + coefficient) % SHAMIR_PRIME
    return result


def lagrange_interpolate(points: Mapping[int, int], at: int) -> int:
    """The value at ``at`` of the polynomial of degree < len(points) through ``points``.

    >>> lagrange_interpolate({1: 5, 2: 7}, 0)  # the line 3 + 2x
    3
    """
    if not points:
        raise SecureAggregationError("interpolation needs at least one share")
    for x, y in points.items():
        if not (0 <= x < SHAMIR_PRIME and 0 <= y < SHAMIR_PRIME):
            raise SecureAggregationError(f"the point ({x}, ...) is not in the Shamir field")
    result = 0
    for xi, yi in points.items():
        numerator, denominator = 1, 1
        for xj in points:
            if xj != xi:
                numerator = numerator * (at - xj) % SHAMIR_PRIME
                denominator = denominator * (xi - xj) % SHAMIR_PRIME
        result = (result + yi * numerator * pow(denominator, -1, SHAMIR_PRIME)) % SHAMIR_PRIME
    return result


def shamir_reconstruct(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares (the lowest ``threshold`` ids).

    Fewer shares raise :class:`SecureAggregationError`: they carry no information at all.
    """
    needed = _whole_number("threshold", threshold, minimum=1)
    if len(shares) < needed:
        raise SecureAggregationError(
            f"{len(shares)} shares cannot rebuild a secret shared with threshold {needed}"
        )
    value = lagrange_interpolate(dict(sorted(shares.items())[:needed]), 0)
    if value >> (8 * SECRET_BYTES):
        raise SecureAggregationError("the shares are inconsistent: they do not rebuild a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")


# ------------------------------------------------------------------ messages (JSON-ready)


def _text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise SecureAggregationError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SecureAggregationError(f"{name} is not valid base64") from None


def _mapping(value: object, name: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise SecureAggregationError(f"{name} must be a JSON object")
    return value


def _json_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecureAggregationError(f"{name} must be an integer")
    return value


def _json_site(key: str) -> int:
    if not (key.isascii() and key.isdigit()):
        raise SecureAggregationError(f"site ids are positive integers, got {key!r}")
    return _site_id(int(key))


def _share_text(share: int) -> str:
    return _text(share.to_bytes(SHARE_BYTES, "big"))


def _share_value(value: object, name: str) -> int:
    raw = _bytes(value, name)
    if len(raw) != SHARE_BYTES:
        raise SecureAggregationError(f"{name} must be {SHARE_BYTES} bytes")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True)
class SecAggConfig:
    """What every party of one round agrees on.

    ``round_context`` names the round (e.g. ``b"job=12;round=3"``) and is bound into every
    derived key; ``dimension`` is the length of the packed input (parameters + 1 weight).
    """

    round_context: bytes
    threshold: int
    dimension: int
    fraction_bits: int = DEFAULT_FRACTION_BITS

    def __post_init__(self) -> None:
        if not isinstance(self.round_context, bytes) or not self.round_context:
            raise ConfigurationError("round_context must be non-empty bytes naming the round")
        _whole_number("threshold", self.threshold, minimum=2)
        _whole_number("dimension", self.dimension, minimum=1)
        _fraction_bits(self.fraction_bits)

    def to_json(self) -> dict[str, object]:
        return {
            "round_context": _text(self.round_context),
            "threshold": self.threshold,
            "dimension": self.dimension,
            "fraction_bits": self.fraction_bits,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SecAggConfig:
        data = _mapping(data, "a secure-aggregation config")
        return cls(
            round_context=_bytes(data.get("round_context"), "round_context"),
            threshold=_json_int(data.get("threshold"), "threshold"),
            dimension=_json_int(data.get("dimension"), "dimension"),
            fraction_bits=_json_int(data.get("fraction_bits", DEFAULT_FRACTION_BITS), "fraction_bits"),
        )


@dataclass(frozen=True)
class AdvertisedKeys:
    """A site's two public keys for one round (raw 32-byte X25519 keys)."""

    cipher_public_key: bytes
    mask_public_key: bytes

    def __post_init__(self) -> None:
        for name in ("cipher_public_key", "mask_public_key"):
            key = getattr(self, name)
            if not isinstance(key, bytes) or len(key) != SECRET_BYTES:
                raise SecureAggregationError(f"{name} must be {SECRET_BYTES} bytes")

    def to_json(self) -> dict[str, str]:
        return {
            "cipher_public_key": _text(self.cipher_public_key),
            "mask_public_key": _text(self.mask_public_key),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AdvertisedKeys:
        data = _mapping(data, "advertised keys")
        return cls(
            cipher_public_key=_bytes(data.get("cipher_public_key"), "cipher_public_key"),
            mask_public_key=_bytes(data.get("mask_public_key"), "mask_public_key"),
        )


@dataclass(frozen=True)
class UnmaskingShares:
    """One site's answer to the unmasking request: Shamir share values, keyed by site.

    ``self_mask_shares[v]`` is its share of ``b_v`` (``v`` sent a masked input);
    ``mask_key_shares[v]`` its share of ``s_sk_v`` (``v`` dropped before that).
    """

    self_mask_shares: Mapping[int, int] = field(default_factory=dict)
    mask_key_shares: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = sorted(set(self.self_mask_shares) & set(self.mask_key_shares))
        if both:
            raise SecureAggregationError(f"an answer may not hold both shares of sites {both}")

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            "self_mask_shares": {str(v): _share_text(s) for v, s in self.self_mask_shares.items()},
            "mask_key_shares": {str(v): _share_text(s) for v, s in self.mask_key_shares.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> UnmaskingShares:
        data = _mapping(data, "unmasking shares")
        return cls(
            self_mask_shares=_shares_from_json(data.get("self_mask_shares", {}), "self_mask_shares"),
            mask_key_shares=_shares_from_json(data.get("mask_key_shares", {}), "mask_key_shares"),
        )


def _shares_from_json(value: object, name: str) -> dict[int, int]:
    entries = _mapping(value, name)
    return {_json_site(site): _share_value(share, f"{name}[{site}]") for site, share in entries.items()}


def roster_to_json(roster: Mapping[int, AdvertisedKeys]) -> dict[str, dict[str, str]]:
    """``{"<site id>": {...keys...}}``: JSON object keys are strings."""
    return {str(site): keys.to_json() for site, keys in sorted(roster.items())}


def roster_from_json(data: Mapping[str, object]) -> dict[int, AdvertisedKeys]:
    return {
        _json_site(site): AdvertisedKeys.from_json(_mapping(keys, f"roster[{site}]"))
        for site, keys in _mapping(data, "roster").items()
    }


def check_roster(roster: Mapping[int, AdvertisedKeys], config: SecAggConfig) -> dict[int, AdvertisedKeys]:
    """The roster, after checking its size against the threshold and that no key repeats."""
    checked = {_site_id(site): keys for site, keys in roster.items()}
    if len(checked) < config.threshold:
        raise SecureAggregationError(
            f"the roster has {len(checked)} sites, fewer than the threshold {config.threshold}"
        )
    if config.threshold < minimum_threshold(len(checked)):
        raise SecureAggregationError(
            f"threshold {config.threshold} is unsafe for {len(checked)} sites: it must be at least "
            f"{minimum_threshold(len(checked))} (a strict majority)"
        )
    keys = [k for entry in checked.values() for k in (entry.cipher_public_key, entry.mask_public_key)]
    if len(set(keys)) != len(keys):
        raise SecureAggregationError("a public key appears twice in the roster (a replayed key?)")
    return checked


# ------------------------------------------------------------------------ the client


@dataclass
class _ClientState:
    """Everything a site must remember during a round; secrets included."""

    cipher_private_key: bytes
    mask_private_key: bytes
    self_mask_seed: bytes
    roster: dict[int, AdvertisedKeys] | None = None
    #: This site's shares (of ``b_u``, of ``s_sk_u``) for every roster site, itself included.
    own_shares: dict[int, tuple[int, int]] | None = None
    #: The peers (``U2`` minus this site) whose pairwise masks are in the masked input.
    masked_peers: frozenset[int] | None = None
    #: SHA-256 of the encoded input and the peers: a second, different input is refused.
    input_digest: str | None = None
    revealed: dict[int, Revealed] = field(default_factory=dict)


class SecAggClient:
    """A site's side of one secure-aggregation round.

    Call :meth:`advertise_keys`, :meth:`share_keys`, :meth:`masked_input` and
    :meth:`unmasking_shares` in that order; a repeat of a step (after a retry or a
    restart) returns an equivalent answer and never reveals more. Save :meth:`to_json`
    after each step and *before* sending its answer: the saved state is what remembers
    which shares were revealed and which input was masked, so a site that crashed after
    sending cannot be led into revealing more. It holds this site's private keys and
    secrets: keep it on the site's own disk, never upload or log it.
    """

    def __init__(self, *, site_id: int, config: SecAggConfig, random_bytes: RandomBytes = os.urandom) -> None:
        self.site_id = _site_id(site_id)
        self.config = config
        self._random_bytes = random_bytes
        self._state = _ClientState(
            cipher_private_key=private_key_bytes(random_bytes),
            mask_private_key=private_key_bytes(random_bytes),
            self_mask_seed=_random(random_bytes, SECRET_BYTES),
        )

    def advertise_keys(self) -> AdvertisedKeys:
        """This round's two public keys, for the roster."""
        return AdvertisedKeys(
            cipher_public_key=public_key_bytes(self._state.cipher_private_key),
            mask_public_key=public_key_bytes(self._state.mask_private_key),
        )

    def share_keys(self, roster: Mapping[int, AdvertisedKeys]) -> dict[int, bytes]:
        """The encrypted share bundle for each other site of ``roster``, keyed by site id."""
        checked = check_roster(roster, self.config)
        if checked.get(self.site_id) != self.advertise_keys():
            raise SecureAggregationError(f"the roster does not hold site {self.site_id}'s own keys")
        state = self._state
        if state.roster is not None and state.roster != checked:
            raise SecureAggregationError("this site already shared its secrets with another roster")
        if state.own_shares is None:  # split once: fresh shares on a retry would leak more
            state.roster = checked
            state.own_shares = self._split_secrets(checked)
        return {peer: self._encrypt_bundle(peer) for peer in sorted(checked) if peer != self.site_id}

    def masked_input(self, vector: NDArray[np.floating], inbound: Mapping[int, bytes]) -> NDArray[np.uint64]:
        """``y_u`` for a packed input (see :func:`pack_weighted`) of length ``config.dimension``.

        ``inbound`` holds the bundles the other sites sent this site; their senders (``U2``)
        are the peers masked with. Only one input may be masked per round.
        """
        roster = self._require_roster()
        peers = frozenset(_site_id(sender) for sender in inbound)
        for sender in sorted(peers):
            self._decrypt_bundle(sender, inbound[sender])  # fail now on a bad bundle, not later
        if len(peers) + 1 < self.config.threshold:
            raise SecureAggregationError(
                f"only {len(peers) + 1} sites shared keys; the threshold is {self.config.threshold}"
            )
        encoded = encode(self._checked_vector(vector), self.config.fraction_bits, num_summands=len(roster))
        self._record_input(encoded, peers)
        seeds = {peer: self._pairwise_seed(peer) for peer in sorted(peers)}
        return mask_vector(
            encoded, self_mask_seed=self._state.self_mask_seed, site_id=self.site_id, pairwise_seeds=seeds
        )

    def unmasking_shares(
        self, *, survivors: Collection[int], dropped: Collection[int], inbound: Mapping[int, bytes]
    ) -> UnmaskingShares:
        """Shares of ``b_v`` for each survivor ``v`` and of ``s_sk_v`` for each dropped ``v``.

        Refuses to reveal both kinds for one site, in one call or across calls: with both,
        the server could strip every mask from that site's input.
        """
        peers = self._require_masked()
        wanted = self._requested(_site_ids(survivors), _site_ids(dropped), peers)
        conflicts = sorted(v for v, kind in wanted.items() if self._state.revealed.get(v, kind) != kind)
        if conflicts:
            raise SecureAggregationError(
                f"refusing: this site already revealed the other share of sites {conflicts}"
            )
        chosen = {v: self._share_of(v, kind, inbound) for v, kind in wanted.items()}
        self._state.revealed.update(wanted)
        return UnmaskingShares(
            self_mask_shares={v: s for v, s in chosen.items() if wanted[v] is Revealed.SELF_MASK},
            mask_key_shares={v: s for v, s in chosen.items() if wanted[v] is Revealed.MASK_KEY},
        )

    # -- persistence

    def to_json(self) -> dict[str, object]:
        """The client's whole state. It holds secrets: keep it on the site's disk only."""
        state = self._state
        return {
            "site_id": self.site_id,
            "config": self.config.to_json(),
            "cipher_private_key": _text(state.cipher_private_key),
            "mask_private_key": _text(state.mask_private_key),
            "self_mask_seed": _text(state.self_mask_seed),
            "roster": None if state.roster is None else roster_to_json(state.roster),
            "own_shares": None if state.own_shares is None else _own_shares_to_json(state.own_shares),
            "masked_peers": None if state.masked_peers is None else sorted(state.masked_peers),
            "input_digest": state.input_digest,
            "revealed": {str(site): kind.value for site, kind in sorted(state.revealed.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, random_bytes: RandomBytes = os.urandom) -> SecAggClient:
        """A client restored from :meth:`to_json`, e.g. after the agent restarted."""
        data = _mapping(data, "a secure-aggregation client state")
        client = cls.__new__(cls)
        client.site_id = _site_id(_json_int(data.get("site_id"), "site_id"))
        client.config = SecAggConfig.from_json(_mapping(data.get("config"), "config"))
        client._random_bytes = random_bytes
        client._state = _state_from_json(data)
        return client

    # -- helpers

    def _split_secrets(self, roster: Mapping[int, AdvertisedKeys]) -> dict[int, tuple[int, int]]:
        threshold, random_bytes = self.config.threshold, self._random_bytes
        self_mask = shamir_split(
            self._state.self_mask_seed, threshold=threshold, share_ids=list(roster), random_bytes=random_bytes
        )
        mask_key = shamir_split(
            self._state.mask_private_key,
            threshold=threshold,
            share_ids=list(roster),
            random_bytes=random_bytes,
        )
        return {site: (self_mask[site], mask_key[site]) for site in roster}

    def _bundle_key_and_context(self, peer: int, *, sending: bool) -> tuple[bytes, bytes]:
        sender, receiver = (self.site_id, peer) if sending else (peer, self.site_id)
        peer_keys = self._require_roster().get(peer)
        if peer_keys is None:
            raise SecureAggregationError(f"site {peer} is not in this round's roster")
        key = share_encryption_key(
            self._state.cipher_private_key,
            peer_keys.cipher_public_key,
            round_context=self.config.round_context,
            sender=sender,
            receiver=receiver,
        )
        return key, _context(b"share-bundle", self.config.round_context, sender, receiver)

    def _encrypt_bundle(self, peer: int) -> bytes:
        assert self._state.own_shares is not None
        self_mask_share, mask_key_share = self._state.own_shares[peer]
        plaintext = self_mask_share.to_bytes(SHARE_BYTES, "big") + mask_key_share.to_bytes(SHARE_BYTES, "big")
        key, associated_data = self._bundle_key_and_context(peer, sending=True)
        nonce = _random(self._random_bytes, _NONCE_BYTES)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)

    def _decrypt_bundle(self, sender: int, ciphertext: bytes) -> tuple[int, int]:
        if sender == self.site_id:
            raise SecureAggregationError("a site never receives a share bundle from itself")
        key, associated_data = self._bundle_key_and_context(sender, sending=False)
        try:
            nonce, body = bytes(ciphertext[:_NONCE_BYTES]), bytes(ciphertext[_NONCE_BYTES:])
            plaintext = AESGCM(key).decrypt(nonce, body, associated_data)
        except (InvalidTag, ValueError, TypeError):
            raise SecureAggregationError(
                f"the share bundle from site {sender} does not decrypt: it was altered, or it "
                "belongs to another site or round"
            ) from None
        if len(plaintext) != 2 * SHARE_BYTES:
            raise SecureAggregationError(f"the share bundle from site {sender} has the wrong length")
        return (
            int.from_bytes(plaintext[:SHARE_BYTES], "big"),
            int.from_bytes(plaintext[SHARE_BYTES:], "big"),
        )

    def _pairwise_seed(self, peer: int) -> bytes:
        return pairwise_mask_seed(
            self._state.mask_private_key,
            self._require_roster()[peer].mask_public_key,
            round_context=self.config.round_context,
            site_id=self.site_id,
            peer_id=peer,
        )

    def _checked_vector(self, vector: NDArray[np.floating]) -> NDArray[np.float64]:
        array = np.asarray(vector)
        if array.dtype.kind != "f":
            raise SecureAggregationError(f"the input must hold floats, got dtype {array.dtype}")
        if array.shape != (self.config.dimension,):
            raise SecureAggregationError(
                f"the input has shape {array.shape}, expected ({self.config.dimension},): the "
                "round's dimension (parameters + 1 for the weight, see pack_weighted)"
            )
        return array.astype(np.float64, copy=False)

    def _record_input(self, encoded: NDArray[np.uint64], peers: frozenset[int]) -> None:
        digest = hashlib.sha256(encoded.data.cast("B"))
        digest.update(b"".join(peer.to_bytes(8, "big") for peer in sorted(peers)))
        state = self._state
        if state.input_digest not in (None, digest.hexdigest()):
            raise SecureAggregationError(
                "this site already masked a different input or peer set this round; a second "
                "masked input would reveal the difference between the two"
            )
        state.input_digest, state.masked_peers = digest.hexdigest(), peers

    def _requested(
        self, survivors: frozenset[int], dropped: frozenset[int], peers: frozenset[int]
    ) -> dict[int, Revealed]:
        both = sorted(survivors & dropped)
        if both:
            raise SecureAggregationError(
                f"refusing: sites {both} are listed as survivors and as dropped; revealing both "
                "shares of a site would let the server unmask its input"
            )
        if self.site_id not in survivors:
            raise SecureAggregationError(f"site {self.site_id} sent its masked input: it is a survivor")
        if len(survivors) < self.config.threshold:
            raise SecureAggregationError(
                f"only {len(survivors)} survivors; the threshold is {self.config.threshold}"
            )
        unknown = sorted((survivors - peers - {self.site_id}) | (dropped - peers))
        if unknown:
            raise SecureAggregationError(f"sites {unknown} did not share keys with this site this round")
        wanted = dict.fromkeys(sorted(survivors), Revealed.SELF_MASK)
        return wanted | dict.fromkeys(sorted(dropped), Revealed.MASK_KEY)

    def _share_of(self, site: int, kind: Revealed, inbound: Mapping[int, bytes]) -> int:
        if site == self.site_id:
            assert self._state.own_shares is not None
            shares = self._state.own_shares[site]
        elif site in inbound:
            shares = self._decrypt_bundle(site, inbound[site])
        else:
            raise SecureAggregationError(f"the share bundle from site {site} is missing")
        return shares[0] if kind is Revealed.SELF_MASK else shares[1]

    def _require_roster(self) -> dict[int, AdvertisedKeys]:
        if self._state.roster is None:
            raise SecureAggregationError("share_keys must come first: this site has no roster yet")
        return self._state.roster

    def _require_masked(self) -> frozenset[int]:
        if self._state.masked_peers is None:
            raise SecureAggregationError("masked_input must come first: this site has sent no input")
        return self._state.masked_peers


def _own_shares_to_json(shares: Mapping[int, tuple[int, int]]) -> dict[str, list[str]]:
    return {str(site): [_share_text(pair[0]), _share_text(pair[1])] for site, pair in sorted(shares.items())}


def _own_shares_from_json(value: object) -> dict[int, tuple[int, int]] | None:
    if value is None:
        return None
    parsed = {}
    for site, pair in _mapping(value, "own_shares").items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise SecureAggregationError(f"own_shares[{site}] must be a pair")
        parsed[_json_site(site)] = (_share_value(pair[0], "a share"), _share_value(pair[1], "a share"))
    return parsed


def _state_from_json(data: Mapping[str, object]) -> _ClientState:
    roster, peers = data.get("roster"), data.get("masked_peers")
    if peers is not None and not isinstance(peers, list):
        raise SecureAggregationError("masked_peers must be a list of site ids")
    digest = data.get("input_digest")
    if digest is not None and not isinstance(digest, str):
        raise SecureAggregationError("input_digest must be a string")
    try:
        revealed = {
            _json_site(k): Revealed(str(v)) for k, v in _mapping(data.get("revealed", {}), "revealed").items()
        }
    except ValueError:
        raise SecureAggregationError("revealed holds an unknown kind of share") from None
    return _ClientState(
        cipher_private_key=_secret(data.get("cipher_private_key"), "cipher_private_key"),
        mask_private_key=_secret(data.get("mask_private_key"), "mask_private_key"),
        self_mask_seed=_secret(data.get("self_mask_seed"), "self_mask_seed"),
        roster=None if roster is None else roster_from_json(_mapping(roster, "roster")),
        own_shares=_own_shares_from_json(data.get("own_shares")),
        masked_peers=None if peers is None else frozenset(_site_id(_json_int(p, "a peer")) for p in peers),
        input_digest=digest,
        revealed=revealed,
    )


def _secret(value: object, name: str) -> bytes:
    raw = _bytes(value, name)
    if len(raw) != SECRET_BYTES:
        raise SecureAggregationError(f"{name} must be {SECRET_BYTES} bytes")
    return raw


# ------------------------------------------------------------------------ the server


def sum_masked(inputs: Iterable[NDArray[np.uint64]]) -> NDArray[np.uint64]:
    """The ring sum (mod 2^64) of masked inputs; streaming-friendly (one running total)."""
    total: NDArray[np.uint64] | None = None
    for masked in inputs:
        array = np.asarray(masked)
        if array.dtype != np.uint64 or array.ndim != 1:
            raise SecureAggregationError(
                f"a masked input is a 1-D uint64 vector, got {array.dtype} {array.shape}"
            )
        if total is None:
            total = array.copy()
        elif array.shape != total.shape:
            raise SecureAggregationError(
                f"masked inputs of shapes {total.shape} and {array.shape} cannot be added"
            )
        else:
            np.add(total, array, out=total)
    if total is None:
        raise SecureAggregationError("no masked input arrived: there is nothing to unmask")
    return total


def unmask_sum(
    config: SecAggConfig,
    roster: Mapping[int, AdvertisedKeys],
    masked_inputs: Mapping[int, NDArray[np.uint64]],
    unmasking_shares: Mapping[int, UnmaskingShares],
    dropped_after_sharing: Collection[int],
) -> NDArray[np.float64]:
    """The decoded sum of the inputs of every site in ``masked_inputs``.

    ``unmasking_shares`` maps each site that answered the unmasking request to its answer;
    ``dropped_after_sharing`` lists the sites that shared keys but sent no masked input.
    Raises :class:`SecureAggregationError` when fewer than ``threshold`` sites answered:
    the round then fails and reveals nothing about any single site's input.
    """
    for site, masked in masked_inputs.items():
        if np.asarray(masked).shape != (config.dimension,):
            raise SecureAggregationError(
                f"the masked input of site {site} has shape {np.asarray(masked).shape}, "
                f"expected ({config.dimension},)"
            )
    total = sum_masked(masked_inputs.values())
    _remove_masks(total, config, roster, list(masked_inputs), unmasking_shares, dropped_after_sharing)
    return decode(total, config.fraction_bits)


def unmask_total(
    config: SecAggConfig,
    roster: Mapping[int, AdvertisedKeys],
    masked_total: NDArray[np.uint64],
    *,
    survivors: Collection[int],
    unmasking_shares: Mapping[int, UnmaskingShares],
    dropped_after_sharing: Collection[int],
) -> NDArray[np.uint64]:
    """Every mask removed from the ring sum of the survivors' masked inputs (a new array).

    For a control plane that streams the stored masked inputs through :func:`sum_masked`
    itself; :func:`decode` the result (and :func:`unpack_weighted_sum` it).
    """
    array = np.asarray(masked_total)
    if array.dtype != np.uint64 or array.shape != (config.dimension,):
        raise SecureAggregationError(
            f"the masked total is {array.dtype} of shape {array.shape}, "
            f"expected uint64 of shape ({config.dimension},)"
        )
    total = array.copy()
    _remove_masks(total, config, roster, survivors, unmasking_shares, dropped_after_sharing)
    return total


def _remove_masks(
    total: NDArray[np.uint64],
    config: SecAggConfig,
    roster: Mapping[int, AdvertisedKeys],
    survivors: Collection[int],
    unmasking_shares: Mapping[int, UnmaskingShares],
    dropped_after_sharing: Collection[int],
) -> None:
    """In place: subtract each survivor's self mask and each dropped site's pairwise masks."""
    checked_roster = check_roster(roster, config)
    survivor_ids, dropped_ids = _check_unmasking(
        config, checked_roster, survivors, unmasking_shares, dropped_after_sharing
    )
    scratch = np.empty_like(total)
    for site in survivor_ids:
        shares = {
            responder: answer.self_mask_shares[site]
            for responder, answer in unmasking_shares.items()
            if site in answer.self_mask_shares
        }
        seed = _rebuild(shares, config, f"site {site}'s self mask")
        np.subtract(total, prg_fill(seed, scratch), out=total)
    for site in dropped_ids:
        mask_key = _rebuild_mask_key(site, checked_roster[site], unmasking_shares, config)
        _remove_dropped_site_masks(total, scratch, mask_key, site, survivor_ids, checked_roster, config)


def _check_unmasking(
    config: SecAggConfig,
    roster: Mapping[int, AdvertisedKeys],
    survivors: Collection[int],
    unmasking_shares: Mapping[int, UnmaskingShares],
    dropped_after_sharing: Collection[int],
) -> tuple[list[int], list[int]]:
    survivor_ids, dropped_ids = _site_ids(survivors), _site_ids(dropped_after_sharing)
    responders = _site_ids(unmasking_shares)
    if len(responders) < config.threshold:
        raise SecureAggregationError(
            f"only {len(responders)} sites answered the unmasking request; the threshold is "
            f"{config.threshold}: the round fails and reveals nothing about any single site's input"
        )
    if survivor_ids & dropped_ids:
        raise SecureAggregationError(
            f"sites {sorted(survivor_ids & dropped_ids)} are both survivors and dropped"
        )
    strangers = sorted((survivor_ids | dropped_ids) - set(roster))
    if strangers:
        raise SecureAggregationError(f"sites {strangers} are not in this round's roster")
    if not responders <= survivor_ids:
        raise SecureAggregationError(
            f"sites {sorted(responders - survivor_ids)} answered but sent no masked input"
        )
    return sorted(survivor_ids), sorted(dropped_ids)


def _rebuild(shares: Mapping[int, int], config: SecAggConfig, what: str) -> bytes:
    if len(shares) < config.threshold:
        raise SecureAggregationError(
            f"only {len(shares)} shares of {what} arrived; the threshold is {config.threshold}: "
            "the round cannot be unmasked"
        )
    return shamir_reconstruct(shares, threshold=config.threshold)


def _rebuild_mask_key(
    site: int, keys: AdvertisedKeys, unmasking_shares: Mapping[int, UnmaskingShares], config: SecAggConfig
) -> bytes:
    """``s_sk`` of a dropped site, checked against the public key it advertised."""
    shares = {
        w: answer.mask_key_shares[site]
        for w, answer in unmasking_shares.items()
        if site in answer.mask_key_shares
    }
    mask_key = _rebuild(shares, config, f"dropped site {site}'s mask key")
    if public_key_bytes(mask_key) != keys.mask_public_key:
        raise SecureAggregationError(f"the rebuilt mask key of site {site} does not match its public key")
    return mask_key


def _remove_dropped_site_masks(
    total: NDArray[np.uint64],
    scratch: NDArray[np.uint64],
    mask_key: bytes,
    site: int,
    survivors: Iterable[int],
    roster: Mapping[int, AdvertisedKeys],
    config: SecAggConfig,
) -> None:
    """Undo what each survivor ``u`` added for ``site``: ``+PRG(s_uv)`` if site > u, else minus."""
    for survivor in survivors:
        seed = pairwise_mask_seed(
            mask_key,
            roster[survivor].mask_public_key,
            round_context=config.round_context,
            site_id=site,
            peer_id=survivor,
        )
        prg_fill(seed, scratch)
        if site > survivor:
            np.subtract(total, scratch, out=total)
        else:
            np.add(total, scratch, out=total)
