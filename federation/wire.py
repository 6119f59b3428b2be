"""The wire and storage format of model updates: safetensors, checked before use.

A model update travels and rests as one safetensors file: an 8-byte little-endian header
length, a JSON header naming every tensor (dtype, shape, byte offsets), then the raw
little-endian tensor bytes. Nothing here ever unpickles anything.

Bytes that crossed a trust boundary are checked in this order, so that a hostile upload
costs no more memory than its (capped) size:

1. the total size against a cap;
2. the header length against a cap derived from the model spec;
3. the header's names, dtypes, shapes and byte offsets against the model spec (exactly
   the spec's tensors, contiguous, in bounds, nothing trailing);
4. only then are tensors materialized, and every value is checked to be finite.

Writing uses the ``safetensors`` package. Whole-file reads use it too, after the header
check. :class:`TensorFile` reads slices of a stored file with ``os.preadv`` into buffers the
caller owns, which keeps streaming aggregation's memory bounded and lets two threads read
at memory speed (the package's slice API allocates a new array per slice).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from federation.errors import InvalidUpdateError, NonFiniteValueError, UpdateTooLargeError
from federation.types import ModelSpec, TensorSpec, Weights

_LENGTH_PREFIX = 8
#: Header bytes allowed per tensor, on top of a fixed allowance for ``__metadata__``.
_HEADER_BYTES_PER_TENSOR = 512
_HEADER_BYTES_BASE = 16 * 1024
_METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor's bytes lie in a safetensors file (offsets from the file start)."""

    spec: TensorSpec
    start: int
    end: int


@dataclass(frozen=True)
class ParsedHeader:
    """A safetensors header that matched a model spec."""

    locations: dict[str, TensorLocation]
    metadata: dict[str, str]
    total_size: int


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 digest used to address and check model blobs."""
    return hashlib.sha256(data).hexdigest()


def max_update_bytes(spec: ModelSpec) -> int:
    """The largest serialized size an update of ``spec`` can legitimately have."""
    return _LENGTH_PREFIX + max_header_bytes(spec) + spec.nbytes


def max_header_bytes(spec: ModelSpec) -> int:
    return _HEADER_BYTES_BASE + _HEADER_BYTES_PER_TENSOR * len(spec.tensors)


def serialize_weights(
    weights: Mapping[str, NDArray[np.floating]],
    *,
    spec: ModelSpec | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialize ``weights`` to safetensors bytes, checking them against ``spec`` first.

    >>> import numpy as np
    >>> blob = serialize_weights({"w": np.ones(3, dtype=np.float32)})
    >>> deserialize_weights(blob, spec=ModelSpec.from_weights({"w": np.ones(3, np.float32)}))["w"]
    array([1., 1., 1.], dtype=float32)
    """
    spec = spec or ModelSpec.from_weights(weights)
    check_weights(weights, spec, finite=False)
    ordered = {t.name: np.ascontiguousarray(weights[t.name], dtype=t.numpy_dtype) for t in spec.tensors}
    # Checked for NaN/inf after the cast: a finite float64 beyond float32's range becomes inf.
    _check_finite(ordered)
    return safetensors_save(ordered, metadata=dict(metadata) if metadata else None)


def deserialize_weights(data: bytes, *, spec: ModelSpec, max_bytes: int | None = None) -> Weights:
    """Parse untrusted safetensors bytes into weights matching ``spec`` exactly.

    Raises :class:`InvalidUpdateError` (or a subclass) with a clear message on any mismatch.
    """
    parse_header_bytes(data, spec=spec, max_bytes=max_bytes)
    try:
        loaded = safetensors_load(data)
    except Exception as error:  # the package raises its own error types on corrupt data
        raise InvalidUpdateError(f"the safetensors payload is corrupt: {error}") from error
    weights = {name: loaded[name] for name in spec.names}
    check_weights(weights, spec)
    return weights


def read_metadata(data: bytes, *, spec: ModelSpec, max_bytes: int | None = None) -> dict[str, str]:
    """The ``__metadata__`` of untrusted safetensors bytes, after the full header check."""
    return parse_header_bytes(data, spec=spec, max_bytes=max_bytes).metadata


def parse_header_bytes(data: bytes, *, spec: ModelSpec, max_bytes: int | None = None) -> ParsedHeader:
    """Check the size and header of in-memory safetensors bytes against ``spec``."""
    limit = max_update_bytes(spec) if max_bytes is None else max_bytes
    if len(data) > limit:
        raise UpdateTooLargeError(f"update is {len(data)} bytes; the limit for this model is {limit}")
    header_length = _read_length_prefix(data[:_LENGTH_PREFIX])
    _check_header_length(header_length, spec, len(data))
    header_end = _LENGTH_PREFIX + header_length
    return _validate_header(data[_LENGTH_PREFIX:header_end], spec, header_end, len(data))


def check_weights(
    weights: Mapping[str, NDArray[np.floating]], spec: ModelSpec, *, finite: bool = True
) -> None:
    """Refuse weights whose names, shapes or dtypes differ from ``spec`` or (``finite``) hold NaN/inf."""
    expected, actual = set(spec.names), set(weights)
    if expected != actual:
        raise InvalidUpdateError(_name_mismatch_message(expected, actual))
    for tensor in spec.tensors:
        array = np.asarray(weights[tensor.name])
        if tuple(array.shape) != tensor.shape:
            raise InvalidUpdateError(
                f"tensor {tensor.name!r} has shape {tuple(array.shape)}, expected {tensor.shape}"
            )
        if array.dtype.kind != "f":
            raise InvalidUpdateError(f"tensor {tensor.name!r} has dtype {array.dtype}, expected floats")
    if finite:
        _check_finite(weights)


def _check_finite(weights: Mapping[str, NDArray[np.floating]]) -> None:
    for name, array in weights.items():
        if not np.isfinite(np.asarray(array)).all():
            raise NonFiniteValueError(f"tensor {name!r} holds NaN or infinite values")


def _read_length_prefix(prefix: bytes) -> int:
    if len(prefix) < _LENGTH_PREFIX:
        raise InvalidUpdateError("truncated safetensors payload: no header length")
    return int(struct.unpack("<Q", prefix)[0])


def _check_header_length(header_length: int, spec: ModelSpec, total_size: int) -> None:
    if header_length > max_header_bytes(spec):
        raise InvalidUpdateError(
            f"safetensors header of {header_length} bytes exceeds the {max_header_bytes(spec)} allowed"
        )
    if _LENGTH_PREFIX + header_length > total_size:
        raise InvalidUpdateError("truncated safetensors payload: header runs past the end")


def _validate_header(raw: bytes, spec: ModelSpec, data_start: int, total_size: int) -> ParsedHeader:
    try:
        header = json.loads(raw, object_pairs_hook=_object_without_duplicate_keys)
    except RecursionError:  # "[[[[..." within the header cap; never a legitimate header
        raise InvalidUpdateError("safetensors header is not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, integers of thousands of digits
        raise InvalidUpdateError(f"safetensors header is not valid JSON: {error}") from error
    if not isinstance(header, dict):
        raise InvalidUpdateError("safetensors header must be a JSON object")
    metadata = _validate_metadata(header.pop(_METADATA_KEY, None))
    expected, actual = set(spec.names), set(header)
    if expected != actual:
        raise InvalidUpdateError(_name_mismatch_message(expected, actual))
    locations = {t.name: _locate(t, header[t.name], data_start) for t in spec.tensors}
    _check_contiguous(locations, data_start, total_size)
    return ParsedHeader(locations=locations, metadata=metadata, total_size=total_size)


def _object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, refused if it names a key twice.

    Parsers disagree on which duplicate wins; this check and the safetensors package must
    read the same header, so an ambiguous one is refused outright.
    """
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidUpdateError("safetensors header names the same key twice")
    return dict(pairs)


def _validate_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidUpdateError("safetensors __metadata__ must map strings to strings")
    return metadata


def _locate(tensor: TensorSpec, entry: object, data_start: int) -> TensorLocation:
    if not isinstance(entry, dict):
        raise InvalidUpdateError(f"tensor {tensor.name!r}: header entry must be an object")
    if entry.get("dtype") != tensor.dtype:
        raise InvalidUpdateError(
            f"tensor {tensor.name!r} has dtype {entry.get('dtype')!r}, expected {tensor.dtype!r}"
        )
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _is_int_list(shape) or tuple(shape) != tensor.shape:  # type: ignore[arg-type]
        raise InvalidUpdateError(f"tensor {tensor.name!r} has shape {shape}, expected {list(tensor.shape)}")
    if not _is_int_list(offsets) or len(offsets) != 2:  # type: ignore[arg-type]
        raise InvalidUpdateError(f"tensor {tensor.name!r}: data_offsets must be two integers")
    begin, end = offsets  # type: ignore[misc]
    if end - begin != tensor.nbytes:
        raise InvalidUpdateError(f"tensor {tensor.name!r}: byte range does not match its shape and dtype")
    return TensorLocation(spec=tensor, start=data_start + begin, end=data_start + end)


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_contiguous(locations: dict[str, TensorLocation], data_start: int, total_size: int) -> None:
    position = data_start
    for location in sorted(locations.values(), key=lambda loc: (loc.start, loc.end)):
        if location.start != position:
            raise InvalidUpdateError("safetensors tensors overlap or leave gaps between them")
        position = location.end
    if position != total_size:
        raise InvalidUpdateError(
            f"safetensors payload size {total_size} does not match its header (expected {position})"
        )


def _name_mismatch_message(expected: set[str], actual: set[str]) -> str:
    missing, unexpected = sorted(expected - actual), sorted(actual - expected)
    parts = []
    if missing:
        parts.append(f"missing tensors {missing}")
    if unexpected:
        parts.append(f"unexpected tensors {unexpected[:10]}")
    return "update does not match the model spec: " + "; ".join(parts)


class TensorFile:
    """A stored safetensors file opened for slice reads, its header checked against a spec.

    Use as a context manager. Reads go into buffers the caller owns (``read_into``), so a
    caller decides how much memory a read costs. Safe to share between threads: reads use
    positional I/O and keep no file position.
    """

    def __init__(self, path: str | os.PathLike[str], *, spec: ModelSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.header = self._read_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _read_header(self) -> ParsedHeader:
        total_size = os.fstat(self._fd).st_size
        if total_size > max_update_bytes(self.spec):
            raise UpdateTooLargeError(
                f"{self.path.name}: {total_size} bytes exceeds the limit for this model"
            )
        header_length = _read_length_prefix(os.pread(self._fd, _LENGTH_PREFIX, 0))
        _check_header_length(header_length, self.spec, total_size)
        raw = os.pread(self._fd, header_length, _LENGTH_PREFIX)
        return _validate_header(raw, self.spec, _LENGTH_PREFIX + header_length, total_size)

    def read_into(self, name: str, start: int, out: NDArray[np.floating]) -> None:
        """Fill ``out`` with elements ``start .. start + out.size`` of the flattened tensor."""
        location = self.header.locations[name]
        itemsize = location.spec.numpy_dtype.itemsize
        if out.dtype != location.spec.numpy_dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous {location.spec.numpy_dtype} array")
        offset = location.start + start * itemsize
        if start < 0 or offset + out.nbytes > location.end:
            raise ValueError(f"slice [{start}, {start + out.size}) is outside tensor {name!r}")
        view = memoryview(out).cast("B")  # type: ignore[arg-type]
        done = 0
        while done < out.nbytes:  # preadv may return short reads
            count = os.preadv(self._fd, [view[done:]], offset + done)
            if count == 0:
                raise InvalidUpdateError(f"{self.path.name}: file shrank while being read")
            done += count

    def read_tensor(self, name: str) -> NDArray[np.floating]:
        """One whole tensor, in its spec's shape."""
        spec = self.header.locations[name].spec
        out = np.empty(spec.numel, dtype=spec.numpy_dtype)
        self.read_into(name, 0, out)
        return out.reshape(spec.shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
