"""msgpack + numpy on the wire: exact round trips, and malformed arrays refused."""

import msgpack
import numpy as np
import pytest

from wam_jax.export import wire


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32",
                                   "uint64", "int64", "float16", "float32", "float64"])
def test_arrays_round_trip_exactly(dtype):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
  out = wire.unpack(wire.pack({"x": x, "nested": [x[0], {"y": x[..., 1]}], "s": "é", "n": None}))
  for got, want in ((out["x"], x), (out["nested"][0], x[0]), (out["nested"][1]["y"], x[..., 1])):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  assert out["s"] == "é" and out["n"] is None


def test_scalars_empty_non_contiguous_and_big_endian_arrays():
  x = np.arange(24, dtype=np.float32).reshape(4, 6)
  out = wire.unpack(wire.pack([np.float32(1.5), np.zeros((0, 3), np.uint8), x[:, ::2], x.astype(">f4")]))
  assert out[0].shape == () and out[0] == np.float32(1.5)
  assert out[1].shape == (0, 3)
  np.testing.assert_array_equal(out[2], x[:, ::2])
  np.testing.assert_array_equal(out[3], x)


def test_unsendable_objects_are_a_type_error():
  with pytest.raises(TypeError, match="cannot send a object array"):
    wire.pack(np.array([object()]))
  with pytest.raises(TypeError, match="type set"):
    wire.pack({1, 2})


def _ext(parts):
  return msgpack.packb(msgpack.ExtType(wire.NDARRAY_EXT, msgpack.packb(parts)))


@pytest.mark.parametrize("data, message", [
    (b"\xc1", "not a valid msgpack"),
    (msgpack.packb([1, 2])[:-1], "incomplete input"),
    (msgpack.packb({1: 2}), "not a valid msgpack"),
    (b"\xa3\xff\xfe\xfd", "UnicodeDecodeError"),
    (b"\x91" * 5000 + b"\xc0", "StackError"),
    (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    (msgpack.packb(msgpack.ExtType(7, b"x")), "unknown msgpack extension type 7"),
    (msgpack.packb(msgpack.ExtType(wire.NDARRAY_EXT, b"\xc1")), "malformed array extension"),
    (_ext(["<f4", [2]]), "expected [dtype, shape, bytes]"),
    (_ext(["|O", [1], b"12345678"]), "array dtype '|O' is not one of"),
    (_ext([">f4", [1], b"1234"]), "array dtype '>f4'"),
    (_ext(["<f4", [2], b"1234"]), "needs 8 bytes, got 4"),
    (_ext(["<f4", [-1], b""]), "non-negative ints"),
    (_ext(["<f4", [True], b"1234"]), "non-negative ints"),
    (_ext(["<f4", [1] * 9, b"1234"]), "at most 8"),
    (_ext(["<f4", [2 ** 40, 2 ** 40], b"1234"]), "needs"),
    (_ext(["<f4", [1], "1234"]), "data must be bytes"),
])
def test_malformed_messages_raise_wire_error(data, message):
  with pytest.raises(wire.WireError, match=None) as e:
    wire.unpack(data)
  assert message in str(e.value), str(e.value)


def test_decoded_arrays_are_read_only_views():
  out = wire.unpack(wire.pack(np.arange(4, dtype=np.int32)))
  assert not out.flags.writeable
