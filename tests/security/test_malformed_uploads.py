"""Hundreds of malformed model updates through the real agent API: none is accepted.

:func:`malformed_uploads` generates the cases lazily (one ~1 MB body alive at a time):
truncated files, oversized bodies and lying ``Content-Length`` headers, length prefixes and
headers that lie, wrong names, shapes and dtypes, bad byte offsets, NaN and infinities,
pickle, numpy and other formats, broken ``meta`` and multipart bodies, and updates bound
to the wrong job, round or model or aimed at rounds site A must not touch. Each one must
get a 4xx JSON error with a message and leave no ``Update`` row; after the batch the
target round has no update, the blob store holds nothing new, no pickle ran, and the
peak of Python allocations stayed within :func:`memory_bound`. A correct update sent
last is accepted, so the refusals were for the malformations, not for a broken setup.
"""

from __future__ import annotations

import gc
import gzip
import io
import json
import logging
import pickle
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from malformed_support import World, build_world, meta_for, safetensors_bytes, split_safetensors
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from safetensors.numpy import save as safetensors_save

from agentapi.apis import MULTIPART_ALLOWANCE
from federation.wire import max_header_bytes, sha256_hex
from training.models import Update

pytestmark = [pytest.mark.security, pytest.mark.django_db]

MIN_CASES = 200
MULTIPART = "multipart/form-data; boundary=BoUnDaRy"
MiB = 1024 * 1024
#: Headroom for the request machinery, the database and the test client themselves.
MEMORY_CONSTANT = 16 * MiB


def memory_bound(limit: int) -> int:
    """Peak Python allocations (``tracemalloc``, from the batch's start) it may reach.

    One update in flight costs a few copies of it: the client's encoded multipart body,
    the parsed upload, the bytes read from it, the parsed arrays and their finiteness
    masks (measured: about 5.5 MiB for this 1 MiB model; the 3 MB ``meta`` field and a
    multipart body whose boundary never comes cost about 9 MiB). Eight copies of the
    largest acceptable update plus a constant covers that with room. The garbage
    collector runs between requests (DRF's request and view refer to each other, so a
    request's objects wait for it), which makes the peak the most one request needs plus
    anything kept from earlier ones: a leak, or an oversized upload read in full, would
    not fit.
    """
    return 8 * limit + MEMORY_CONSTANT


@dataclass(frozen=True)
class Upload:
    """One malformed request to ``POST rounds/<id>/update``.

    ``meta``: a dict (sent as JSON), a string (sent verbatim) or ``None`` (no meta part);
    by default a correct meta for the round. ``blob``: the tensors file, ``None`` for no
    tensors part. ``raw_body`` replaces the multipart body entirely. ``expect``: the exact
    status, where the case has one answer; any 4xx otherwise.
    """

    label: str
    blob: bytes | None = None
    meta: object = "correct"
    meta_changes: dict[str, object] = field(default_factory=dict)
    round_key: str = "target"
    round_path: str | None = None
    tensors_as_text: bool = False
    meta_as_file: bool = False
    raw_body: bytes | None = None
    content_type: str = MULTIPART
    content_length: str | None = None
    expect: int | None = None
    unparsed: bool = False  # refused before the multipart body is parsed
    unread: bool = False  # the uploaded file is never read()


# --- the cases ---------------------------------------------------------------------------


class WouldRunCode:
    """Unpickling this creates ``path``: the marker that code ran on the server."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def malformed_uploads(world: World, marker: Path) -> Iterator[Upload]:
    good = world.good_blob
    for generate in (
        _truncations,
        _oversized,
        _length_prefixes,
        _header_documents,
        _dtypes,
        _shapes,
        _names,
        _offsets,
        _metadata,
        _non_finite,
        _foreign_formats,
        _meta_problems,
        _binding_problems,
        _multipart_problems,
    ):
        yield from generate(world, good)
    yield from _pickles(world, marker)


def _truncations(world: World, good: bytes) -> Iterator[Upload]:
    header, _ = split_safetensors(good)
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    tensor_points = []
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            tensor_points += [header_end + begin + 1, header_end + (begin + end) // 2, header_end + end - 1]
    offsets = {1, 4, 7, 8, 9, 16, 64, header_end // 2}
    offsets |= {header_end + k for k in (-1, 0, 1, 3)}
    offsets |= {len(good) - k for k in (1, 2, 3, 4, 5, 1000)}
    offsets |= set(tensor_points)
    for offset in sorted(o for o in offsets if 0 < o < len(good)):
        yield Upload(f"truncated at byte {offset} of {len(good)}", blob=good[:offset], expect=400)
    yield Upload("empty file", blob=b"", expect=400)
    yield Upload("eight zero bytes", blob=bytes(8), expect=400)


def _oversized(world: World, good: bytes) -> Iterator[Upload]:
    limit = world.limit
    padded = good + bytes(limit + 1 - len(good))
    yield Upload("limit + 1 bytes", blob=padded, expect=413, unread=True)
    yield Upload("limit + 1000 bytes", blob=padded + bytes(999), expect=413, unread=True)
    yield Upload("a valid file with trailing bytes", blob=good + b"\0", expect=400)
    declared = {
        "twice the round's limit": 2 * limit,
        "just above limit + multipart allowance": limit + MULTIPART_ALLOWANCE + 1,
        "above the control plane's cap": settings.FEDHEALTH_MAX_UPLOAD_BYTES + 1,
        "10 GiB": 10 * 1024**3,
        "10**30 bytes": 10**30,
    }
    for label, length in declared.items():
        yield Upload(
            f"Content-Length {label}", blob=good, content_length=str(length), expect=413, unparsed=True
        )
    for lie in ("-1", "abc", "0", "100", "1e9"):
        yield Upload(f"Content-Length {lie!r}", blob=good, content_length=lie)


def _length_prefixes(world: World, good: bytes) -> Iterator[Upload]:
    header_length = struct.unpack("<Q", good[:8])[0]
    cap = max_header_bytes(world.spec)
    lies = {
        "zero": 0,
        "one": 1,
        "header - 1": header_length - 1,
        "header + 1": header_length + 1,
        "header + 8": header_length + 8,
        "header cap + 1": cap + 1,
        "the whole file": len(good),
        "past the end": len(good) + 1,
        "2**63": 2**63,
        "2**64 - 1": 2**64 - 1,
    }
    for label, length in lies.items():
        yield Upload(f"length prefix {label}", blob=struct.pack("<Q", length) + good[8:], expect=400)
    yield Upload("length prefix only", blob=good[:8], expect=400)


def _header_documents(world: World, good: bytes) -> Iterator[Upload]:
    _, data = split_safetensors(good)
    documents: dict[str, bytes] = {
        "not JSON": b"this is not json",
        "an unfinished object": b'{"hidden.0.weight": {',
        "a JSON array": b"[]",
        "a JSON string": b'"tensors"',
        "a JSON number": b"42",
        "JSON null": b"null",
        "JSON true": b"true",
        "an empty object": b"{}",
        "whitespace only": b"        ",
        "invalid UTF-8": b"\xff\xfe\xfd{}",
        "a NUL byte": b'{"\x00": 1}',
        "NaN": b"NaN",
        "nested 19000 deep": b"[" * 19000,
        "an integer of 5000 digits": b'{"hidden.0.weight": {"shape": [' + b"9" * 5000 + b"]}}",
    }
    for label, document in documents.items():
        yield Upload(f"header is {label}", blob=safetensors_bytes(document, data), expect=400)


def _with_entry(good: bytes, name: str, **changes: object) -> bytes:
    header, data = split_safetensors(good)
    header[name] = {**header[name], **changes}
    return safetensors_bytes(header, data)


def _dtypes(world: World, good: bytes) -> Iterator[Upload]:
    name = world.spec.tensors[0].name
    for dtype in ("F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "f32", "float32", "", None, 32, ["F32"]):
        yield Upload(f"header dtype {dtype!r}", blob=_with_entry(good, name, dtype=dtype), expect=400)
    weights = world.good_weights
    for dtype in ("float16", "int32", "int8", "uint8", "bool", "int64", "float64"):
        converted = {key: array.astype(dtype) for key, array in weights.items()}
        yield Upload(f"every tensor stored as {dtype}", blob=safetensors_save(converted))
    bias = world.spec.tensors[1].name
    yield Upload(
        f"{bias} stored as float64",
        blob=safetensors_save({**weights, bias: weights[bias].astype("float64")}),
        expect=400,
    )
    del weights


def _shapes(world: World, good: bytes) -> Iterator[Upload]:
    tensor = world.spec.tensors[0]
    rows, cols = tensor.shape
    for shape in ([cols, rows], [rows * cols], [rows, cols, 1], [], [rows], [rows, cols + 1], [-rows, -cols],
                  [float(rows), float(cols)], [str(rows), str(cols)], None, [True, cols]):  # fmt: skip
        yield Upload(f"header shape {shape!r}", blob=_with_entry(good, tensor.name, shape=shape), expect=400)
    weights = world.good_weights
    reshaped = {
        "transposed": weights[tensor.name].T,
        "flattened": weights[tensor.name].reshape(-1),
        "with an extra axis": weights[tensor.name][None],
        "one row short": weights[tensor.name][:-1],
        "one row long": np.concatenate([weights[tensor.name], weights[tensor.name][:1]]),
        "a single number": np.ones(1, np.float32),
    }
    for label, array in reshaped.items():
        yield Upload(
            f"{tensor.name} {label}",
            blob=safetensors_save({**weights, tensor.name: np.ascontiguousarray(array)}),
            expect=400,
        )
    del weights


def _names(world: World, good: bytes) -> Iterator[Upload]:
    weights = world.good_weights
    for name in world.spec.names:
        yield Upload(
            f"missing tensor {name}", blob=safetensors_save({k: v for k, v in weights.items() if k != name})
        )
    yield Upload(
        "an extra tensor", blob=safetensors_save({**weights, "evil": np.ones(4, np.float32)}), expect=400
    )
    first = world.spec.names[0]
    renamed = {
        "upper case": first.upper(),
        "a trailing space": first + " ",
        "a path": "../" + first,
        "a Cyrillic look-alike": first.replace("i", "\u0456", 1),
        "empty": "",
        "an empty-looking metadata key": "__metadata__ ",
    }
    header, data = split_safetensors(good)
    for label, name in renamed.items():
        changed = {(name if key == first else key): value for key, value in header.items()}
        yield Upload(f"tensor renamed: {label}", blob=safetensors_bytes(changed, data), expect=400)
    raw = json.dumps(header).encode()
    duplicated = raw[:-1] + b", " + json.dumps({first: header[first]}).encode()[1:]
    yield Upload("a tensor named twice", blob=safetensors_bytes(duplicated, data), expect=400)
    yield Upload("no tensors at all", blob=safetensors_save({}), expect=400)
    del weights


def _offsets(world: World, good: bytes) -> Iterator[Upload]:
    header, data = split_safetensors(good)
    offsets = {name: entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"}
    names = world.spec.names
    first, second, last = names[0], names[1], names[-1]
    start, end = offsets[first]
    size, second_size = end - start, offsets[second][1] - offsets[second][0]
    variants: dict[str, tuple[str, object]] = {
        "overlapping the first tensor": (second, [start, start + second_size]),
        "negative": (first, [-size, 0]),
        "beyond the data": (last, [len(data), len(data) + 4]),
        "reversed": (first, [end, start]),
        "floats": (first, [float(start), float(end)]),
        "strings": (first, [str(start), str(end)]),
        "null": (first, None),
        "one number": (first, [start]),
        "three numbers": (first, [start, end, end]),
        "enormous": (first, [2**70, 2**70 + size]),
        "booleans": (first, [False, True]),
    }  # fmt: skip
    for label, (name, lie) in variants.items():
        yield Upload(f"data_offsets {label}", blob=_with_entry(good, name, data_offsets=lie), expect=400)
    shifted = dict(header)
    for name in names:
        if offsets[name][0] >= end:  # every tensor after the first moves 4 bytes on
            shifted[name] = {**header[name], "data_offsets": [offsets[name][0] + 4, offsets[name][1] + 4]}
    gapped = data[:end] + bytes(4) + data[end:]
    yield Upload("a gap after the first tensor", blob=safetensors_bytes(shifted, gapped), expect=400)


def _metadata(world: World, good: bytes) -> Iterator[Upload]:
    header, data = split_safetensors(good)
    cap = max_header_bytes(world.spec)
    variants: dict[str, object] = {
        "a number": {"model_spec": 1},
        "a nested object": {"model_spec": {"a": "b"}},
        "a list": ["model_spec"],
        "larger than the header cap": {"padding": "x" * cap},
    }
    for label, metadata in variants.items():
        yield Upload(
            f"__metadata__ {label}", blob=safetensors_bytes({**header, "__metadata__": metadata}, data)
        )


def _non_finite(world: World, good: bytes) -> Iterator[Upload]:
    weights = world.good_weights
    values = {"NaN": np.nan, "+Inf": np.inf, "-Inf": -np.inf}
    placements: list[tuple[str, str, str]] = []
    for name in world.spec.names:
        placements += [(name, "first", label) for label in values]
        placements.append((name, "last", "NaN"))
    placements.append((world.spec.names[2], "middle", "+Inf"))
    for name, where, label in placements:
        array = weights[name].copy().reshape(-1)
        index = {"first": 0, "last": -1, "middle": array.size // 2}[where]
        array[index] = values[label]
        yield Upload(
            f"{label} at the {where} element of {name}",
            blob=safetensors_save({**weights, name: array.reshape(weights[name].shape)}),
            expect=400,
        )
    name = world.spec.names[1]
    for label, bits in {"a signalling NaN": 0x7F800001, "a negative NaN": 0xFFC00000}.items():
        array = weights[name].copy()
        array.view(np.uint32)[0] = bits
        yield Upload(f"{label} in {name}", blob=safetensors_save({**weights, name: array}), expect=400)
    all_nan = {**weights, name: np.full_like(weights[name], np.nan)}
    yield Upload(f"{name} all NaN", blob=safetensors_save(all_nan), expect=400)
    del weights, all_nan


def _foreign_formats(world: World, good: bytes) -> Iterator[Upload]:
    weights = world.good_weights
    first = world.spec.names[0]
    npy = io.BytesIO()
    np.save(npy, weights[first])
    npz, compressed = io.BytesIO(), io.BytesIO()
    np.savez(npz, **{k.replace(".", "_"): v for k, v in weights.items()})
    np.savez_compressed(compressed, **{k.replace(".", "_"): v for k, v in weights.items()})
    formats = {
        "a .npy array": npy.getvalue(),
        "an .npz archive": npz.getvalue(),
        "a compressed .npz archive": compressed.getvalue(),
        "the weights as JSON": json.dumps(
            {k: v.reshape(-1)[:64].tolist() for k, v in weights.items()}
        ).encode(),
        "a gzipped safetensors file": gzip.compress(good, mtime=0),
        "an HDF5 signature": b"\x89HDF\r\n\x1a\n" + bytes(1024),
        "random bytes": np.random.default_rng(0).bytes(65536),
        "one byte": b"\x01",
    }
    for label, blob in formats.items():
        yield Upload(f"tensors are {label}", blob=blob, expect=400)
    del weights


def _pickles(world: World, marker: Path) -> Iterator[Upload]:
    evil = WouldRunCode(str(marker))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        yield Upload(
            f"a code-running pickle, protocol {protocol}", blob=pickle.dumps(evil, protocol), expect=400
        )
    weights = world.good_weights
    for protocol in (2, 4, 5):
        yield Upload(f"pickled weights, protocol {protocol}", blob=pickle.dumps(weights, protocol))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:  # the layout torch.save writes
        zipped.writestr("archive/data.pkl", pickle.dumps(evil, 2))
        zipped.writestr("archive/version", "3\n")
    yield Upload("a torch.save-style zip holding a pickle", blob=archive.getvalue(), expect=400)
    payload = pickle.dumps(evil, 4)
    yield Upload("a pickle behind a length prefix", blob=struct.pack("<Q", 16) + payload, expect=400)
    yield Upload("a pickle as the safetensors header", blob=safetensors_bytes(payload, b""), expect=400)
    objects = io.BytesIO()
    np.save(objects, np.array([evil, 1], dtype=object), allow_pickle=True)
    yield Upload("a .npy object array (pickled inside)", blob=objects.getvalue(), expect=400)
    del weights


def _meta_problems(world: World, good: bytes) -> Iterator[Upload]:
    target = world.target
    for name in ("num_examples", "base_model_sha256", "job_id", "round_number"):
        meta = meta_for(target)
        del meta[name]
        yield Upload(f"meta without {name}", blob=good, meta=meta, expect=400)
    bad_values: dict[str, list[object]] = {
        "num_examples": [-1, 0, -(10**9), 10**9 + 1, 2**31, 2**63, 10**30, 10**400, 50.5, "fifty", "", None,
                         True, [], {}],
        "metrics": [["global_accuracy"], "0.5", 0.5, {"a": "high"}, {"a": None}, {"a": []}, {"a": {}},
                    {"a": "nan"}, {"a": "inf"}, {"a": "-inf"}, {"a": 10**400}, {"a": "1e999"},
                    {f"metric_{i}": 0.5 for i in range(101)}, {"m" * 101: 0.5}, {"m" * 50_000: 0.5}],
        "base_model_sha256": ["", "0" * 63, "0" * 65, target.base_version.sha256.upper(), "g" * 64, None, 123,
                              "x" * 99_000],
        "job_id": [0, -1, "one", None, 2**63, 10**30, [target.job_id]],
        "round_number": [0, -1, "x", None, 2**63, 1.5],
    }  # fmt: skip
    for name, values in bad_values.items():
        for value in values:
            shown = (
                repr(value) if len(repr(value)) < 40 else f"{repr(value)[:30]}... ({len(repr(value))} chars)"
            )
            yield Upload(f"meta {name} = {shown}", blob=good, meta_changes={name: value}, expect=400)
    correct = json.dumps(meta_for(target))
    raw_metas = {
        "empty": "",
        "not JSON": "not json",
        "an unfinished object": correct[:-1],
        "a JSON array": "[]",
        "a JSON array of the meta": "[" + correct + "]",
        "a JSON string": json.dumps(correct),
        "a JSON number": "42",
        "JSON null": "null",
        "JSON true": "true",
        "nested 50000 deep": "[" * 50_000,
        "an integer of 5000 digits": correct.replace('"num_examples": 50', '"num_examples": ' + "9" * 5000),
        "num_examples NaN": correct.replace('"num_examples": 50', '"num_examples": NaN'),
        "num_examples Infinity": correct.replace('"num_examples": 50', '"num_examples": Infinity'),
        "a metric NaN": correct.replace("0.5", "NaN"),
        "a metric -Infinity": correct.replace("0.5", "-Infinity"),
        "longer than 100000 characters": correct[:-1] + " " * 100_000 + "}",
        "a NUL byte": correct.replace('"num_examples"', '"num_\x00examples"'),
        "lone surrogates": correct.replace('"global_accuracy"', '"\\ud800"').replace("0.5", '"\\udfff"'),
    }
    for label, raw in raw_metas.items():
        yield Upload(f"meta is {label}", blob=good, meta=raw, expect=400)
    yield Upload("meta of 3 MB", blob=good, meta=correct[:-1] + " " * (3 * MiB) + "}", expect=413)


def _binding_problems(world: World, good: bytes) -> Iterator[Upload]:
    target, closed = world.target, world.rounds["closed"]
    changes: dict[str, dict[str, object]] = {
        "a stale base digest (the digest of another model)": {"base_model_sha256": sha256_hex(good)},
        "a base digest of zeros": {"base_model_sha256": "0" * 64},
        "the next round's number": {"round_number": target.number + 1},
        "round number 99": {"round_number": 99},
        "another job's id": {"job_id": world.rounds["foreign"].job_id},
        "a job id that does not exist": {"job_id": 987_654},
        "the binding of a closed round": {"job_id": closed.job_id, "round_number": closed.number},
    }
    for label, change in changes.items():
        yield Upload(f"bound to {label}", blob=good, meta_changes=change, expect=409)
    answers = {"foreign": 404, "closed": 409, "evaluation": 409, "paused": 409, "refused": 403}
    for key, status in answers.items():
        yield Upload(f"aimed at {key} round", blob=good, round_key=key, expect=status)
    for path, status in {"987654": 404, "0": 404, "1" + "0" * 30: 404, "-1": 404, "abc": 404}.items():
        yield Upload(f"aimed at round id {path[:12]}", blob=good, round_path=path, expect=status)


def _multipart_problems(world: World, good: bytes) -> Iterator[Upload]:
    yield Upload("no tensors part", blob=None, expect=400)
    yield Upload("no meta part", blob=good, meta=None, expect=400)
    yield Upload("neither part", blob=None, meta=None, expect=400)
    yield Upload("tensors sent as a text field", blob=good, tensors_as_text=True)
    yield Upload("the header sent as a text field", blob=good[:4096], tensors_as_text=True, expect=400)
    yield Upload("meta sent as a file", blob=good, meta_as_file=True, expect=400)
    correct = json.dumps(meta_for(world.target)).encode()
    raw = {
        "a JSON body": (correct, "application/json", 415),
        "a form body": (b"meta=" + correct, "application/x-www-form-urlencoded", 415),
        "a text/plain body": (good[:4096], "text/plain", 415),
        "multipart without a boundary": (b"--x\r\n\r\n", "multipart/form-data", 400),
        "multipart with the wrong boundary": (_multipart(correct, good, b"Other"), None, 400),
        "multipart cut inside the file": (_multipart(correct, good)[: len(good) // 2], None, 400),
        "multipart with no closing boundary": (_multipart(correct, good)[:-12], None, 400),
        "multipart garbage": (b"\x00\xff" * 512, None, 400),
    }
    for label, (body, content_type, status) in raw.items():
        yield Upload(label, raw_body=body, content_type=content_type or MULTIPART, expect=status)


def _multipart(meta: bytes, tensors: bytes, boundary: bytes = b"BoUnDaRy") -> bytes:
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="meta"\r\n\r\n' + meta + b"\r\n"
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="tensors"; filename="u.safetensors"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + tensors + b"\r\n--" + boundary + b"--\r\n"
    )


# --- sending them ------------------------------------------------------------------------


@dataclass
class Recorder:
    """Counts multipart parses and reads of uploaded files (per case)."""

    parses: int = 0
    reads: int = 0

    def reset(self) -> None:
        self.parses = self.reads = 0


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    record = Recorder()
    parse = MultiPartParser.parse

    def recording_parse(self: MultiPartParser, *args: object, **kwargs: object) -> object:
        record.parses += 1
        return parse(self, *args, **kwargs)  # type: ignore[arg-type]

    def recording_read(self: UploadedFile) -> Callable[..., bytes]:
        record.reads += 1
        return self.file.read  # type: ignore[union-attr]

    monkeypatch.setattr(MultiPartParser, "parse", recording_parse)
    monkeypatch.setattr(UploadedFile, "read", property(recording_read))
    return record


@pytest.fixture
def world(agent_world: None) -> World:
    return build_world()


def send(world: World, upload: Upload) -> Response:
    round_ = world.rounds[upload.round_key]
    path = upload.round_path if upload.round_path is not None else str(round_.pk)
    url = f"/api/agent/v1/rounds/{path}/update"
    extra = {} if upload.content_length is None else {"CONTENT_LENGTH": upload.content_length}
    client = world.uploader.client
    if upload.raw_body is not None:
        return client.generic("POST", url, upload.raw_body, upload.content_type, **extra)  # type: ignore[return-value]
    data: dict[str, object] = {}
    if upload.meta is not None:
        meta = meta_for(round_, **upload.meta_changes) if upload.meta == "correct" else upload.meta
        text = meta if isinstance(meta, str) else json.dumps(meta)
        data["meta"] = io.BytesIO(text.encode("utf-8", "surrogatepass")) if upload.meta_as_file else text
    if upload.blob is not None:
        data["tensors"] = upload.blob.decode("latin-1") if upload.tensors_as_text else io.BytesIO(upload.blob)
    return client.post(url, data, format="multipart", **extra)  # type: ignore[return-value]


def problems_with(upload: Upload, response: Response, recorder: Recorder) -> list[str]:
    status = response.status_code
    found = []
    if upload.expect is not None and status != upload.expect:
        found.append(f"status {status}, expected {upload.expect}")
    elif not 400 <= status < 500:
        found.append(f"status {status}")
    try:
        error = response.json()["error"]
        if not (
            isinstance(error["message"], str) and error["message"].strip() and isinstance(error["code"], str)
        ):
            found.append(f"error without a message: {error}")
    except (ValueError, KeyError, TypeError):
        found.append(f"not the JSON error shape: {response.content[:200]!r}")
    if upload.unparsed and (recorder.parses or recorder.reads):
        found.append(f"the body was parsed ({recorder.parses}) or read ({recorder.reads}) before refusing it")
    if upload.unread and recorder.reads:
        found.append("the oversized file was read before refusing it")
    return found


def blob_files(storage: Path) -> set[str]:
    return {str(path.relative_to(storage)) for path in storage.rglob("*") if path.is_file()}


def test_hundreds_of_malformed_uploads_are_refused_with_bounded_memory(
    world: World, recorder: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Django logs each 4xx with the request attached; pytest keeps every record, and with it
    # every upload, which would measure the test harness rather than the server. Server
    # errors are logged at ERROR and still recorded.
    caplog.set_level(logging.ERROR, logger="django.request")
    marker = tmp_path / "pickle-ran"
    storage = Path(settings.ENV.model_storage_dir)
    blobs_before, updates_before = blob_files(storage), Update.objects.count()
    labels: list[str] = []
    failures: list[str] = []
    statuses: dict[int, int] = {}
    gc.collect()
    gc.freeze()  # what exists now is never garbage: the per-request collections skip it
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for upload in malformed_uploads(world, marker):
            recorder.reset()
            response = send(world, upload)
            labels.append(upload.label)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            failures += [
                f"{upload.label}: {problem}" for problem in problems_with(upload, response, recorder)
            ]
            if Update.objects.count() != updates_before:
                failures.append(f"{upload.label}: an Update row was created")
                updates_before = Update.objects.count()
            del response
            gc.collect()  # DRF's request <-> view cycles: free each request's garbage now
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.unfreeze()
    assert not failures, "\n".join(failures)
    assert len(labels) == len(set(labels)), "every case is distinct"
    assert len(labels) >= MIN_CASES, len(labels)
    assert not marker.exists(), "an uploaded pickle was unpickled"
    assert world.target.updates.count() == 0
    assert blob_files(storage) == blobs_before, "a refused upload left a blob behind"
    assert peak < memory_bound(world.limit), (
        f"peak {peak / MiB:.1f} MiB over {memory_bound(world.limit) / MiB:.1f}"
    )
    print(
        f"\n{len(labels)} malformed uploads: 0 accepted, 0 server errors, "
        f"statuses {dict(sorted(statuses.items()))}, peak Python allocations {peak / MiB:.1f} MiB "
        f"(bound {memory_bound(world.limit) / MiB:.1f} MiB, model {world.spec.nbytes / MiB:.2f} MiB)"
    )
    # The round still takes a correct update: the refusals were for the malformations.
    correct = send(world, Upload("a correct update", blob=world.good_blob))
    assert correct.status_code == 201, correct.content


def test_an_oversized_upload_is_refused_before_the_service_reads_it(
    world: World, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size check comes before ``update_submit`` (and its ``read()``) is reached."""
    calls: list[int] = []
    monkeypatch.setattr("training.services.update_submit", lambda **kwargs: calls.append(1))
    padded = world.good_blob + bytes(world.limit + 1 - len(world.good_blob))
    response = send(world, Upload("limit + 1", blob=padded))
    assert response.status_code == 413, response.content
    assert response.json()["error"]["code"] == "too_large"
    assert (calls, recorder.reads) == ([], 0)


def test_the_pickle_canary_would_show_that_code_ran(tmp_path: Path) -> None:
    """Unpickling a :class:`WouldRunCode` (our own bytes, here only) does create its marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WouldRunCode(str(marker)))).close()
    assert marker.exists()
