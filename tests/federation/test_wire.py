"""The safetensors wire format: round trips and refusal of bad input."""

import json
import pickle  # only to build a hostile payload
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.errors import InvalidUpdateError, NonFiniteValueError, UpdateTooLargeError
from federation.types import ModelSpec, TensorSpec
from federation.wire import (
    TensorFile,
    deserialize_weights,
    max_update_bytes,
    read_metadata,
    serialize_weights,
    sha256_hex,
)

SPEC = ModelSpec((TensorSpec("layer.weight", (3, 4)), TensorSpec("layer.bias", (3,))))


def good_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors}


def raw_safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5), elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(np.float64, st.integers(0, 7), elements=st.floats(-1e6, 1e6)),
)
def test_round_trip_preserves_every_value(first: np.ndarray, second: np.ndarray) -> None:
    weights = {"a": first, "b": second}
    spec = ModelSpec.from_weights(weights)
    restored = deserialize_weights(serialize_weights(weights, spec=spec), spec=spec)
    assert list(restored) == ["a", "b"]
    np.testing.assert_array_equal(restored["a"], first)
    np.testing.assert_array_equal(restored["b"], second)


def test_digest_changes_with_any_value() -> None:
    weights = good_weights()
    before = sha256_hex(serialize_weights(weights, spec=SPEC))
    weights["layer.bias"][0] += 1
    assert sha256_hex(serialize_weights(weights, spec=SPEC)) != before
    assert len(before) == 64


def test_metadata_travels_with_the_update() -> None:
    blob = serialize_weights(good_weights(), spec=SPEC, metadata={"round": "3"})
    assert read_metadata(blob, spec=SPEC) == {"round": "3"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.pop("layer.bias"), "missing tensors"),
        (lambda w: w.update(extra=np.zeros(2, np.float32)), "unexpected tensors"),
        (lambda w: w.update({"layer.bias": np.zeros(4, np.float32)}), "shape"),
    ],
)
def test_serializing_refuses_weights_off_the_spec(change, message: str) -> None:
    weights = good_weights()
    change(weights)
    with pytest.raises(InvalidUpdateError, match=message):
        serialize_weights(weights, spec=SPEC)


def test_reader_refuses_wrong_names_shapes_and_dtypes() -> None:
    other_name = {"layer.weight": np.zeros((3, 4), np.float32), "bias": np.zeros(3, np.float32)}
    other_shape = {"layer.weight": np.zeros((4, 3), np.float32), "layer.bias": np.zeros(3, np.float32)}
    other_dtype = {"layer.weight": np.zeros((3, 4), np.float64), "layer.bias": np.zeros(3, np.float32)}
    for weights, message in [(other_name, "missing"), (other_shape, "shape"), (other_dtype, "dtype")]:
        with pytest.raises(InvalidUpdateError, match=message):
            deserialize_weights(serialize_weights(weights), spec=SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_reader_refuses_non_finite_values(bad: float) -> None:
    weights = good_weights()
    weights["layer.weight"][1, 2] = bad
    # serialize_weights refuses non-finite values too, so the bytes are built directly.
    from safetensors.numpy import save

    blob = save(weights)
    with pytest.raises(NonFiniteValueError):
        deserialize_weights(blob, spec=SPEC)


def test_reader_refuses_oversized_payload_before_parsing() -> None:
    blob = serialize_weights(good_weights(), spec=SPEC) + b"\0" * max_update_bytes(SPEC)
    with pytest.raises(UpdateTooLargeError):
        deserialize_weights(blob, spec=SPEC)


def test_reader_refuses_a_huge_header_length_without_allocating_it() -> None:
    blob = struct.pack("<Q", 2**62) + b"{}"
    with pytest.raises(InvalidUpdateError, match="header"):
        deserialize_weights(blob, spec=SPEC)


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -13])
def test_reader_refuses_truncated_payloads(cut: int) -> None:
    blob = serialize_weights(good_weights(), spec=SPEC)
    with pytest.raises(InvalidUpdateError):
        deserialize_weights(blob[:cut], spec=SPEC)


def test_reader_refuses_pickle_payloads() -> None:
    blob = pickle.dumps(good_weights())
    with pytest.raises(InvalidUpdateError):
        deserialize_weights(blob, spec=SPEC)


def test_reader_refuses_overlapping_offsets() -> None:
    header = {
        "layer.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
        "layer.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
    }
    with pytest.raises(InvalidUpdateError, match="overlap"):
        deserialize_weights(raw_safetensors(header, b"\0" * 48), spec=SPEC)


def test_reader_refuses_a_byte_range_that_disagrees_with_the_shape() -> None:
    header = {
        "layer.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 40]},
        "layer.bias": {"dtype": "F32", "shape": [3], "data_offsets": [40, 52]},
    }
    with pytest.raises(InvalidUpdateError, match="byte range"):
        deserialize_weights(raw_safetensors(header, b"\0" * 52), spec=SPEC)


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b'{"__metadata__": {"a": 1}}'])
def test_reader_refuses_malformed_headers(header: bytes) -> None:
    blob = struct.pack("<Q", len(header)) + header
    with pytest.raises(InvalidUpdateError):
        deserialize_weights(blob, spec=SPEC)


def test_tensor_file_reads_slices_of_a_stored_update(tmp_path) -> None:
    weights = good_weights()
    path = tmp_path / "update.safetensors"
    path.write_bytes(serialize_weights(weights, spec=SPEC))
    with TensorFile(path, spec=SPEC) as stored:
        out = np.empty(5, np.float32)
        stored.read_into("layer.weight", 3, out)
        np.testing.assert_array_equal(out, weights["layer.weight"].reshape(-1)[3:8])
        np.testing.assert_array_equal(stored.read_tensor("layer.bias"), weights["layer.bias"])
        with pytest.raises(ValueError, match="outside"):
            stored.read_into("layer.weight", 10, out)


def test_tensor_file_checks_the_header_on_open(tmp_path) -> None:
    path = tmp_path / "update.safetensors"
    path.write_bytes(serialize_weights({"other": np.zeros(3, np.float32)}))
    with pytest.raises(InvalidUpdateError, match="missing tensors"):
        TensorFile(path, spec=SPEC)
