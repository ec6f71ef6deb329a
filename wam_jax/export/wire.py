"""Messages on the wire: msgpack, with numpy arrays as one extension type.

An ndarray (or numpy scalar) travels as ``ExtType(1, msgpack([dtype, shape, bytes]))``
with ``dtype`` a little-endian numpy type string from ``DTYPES`` (no object,
string or big-endian arrays) and C-order bytes. Decoding checks every part
(type, dtype, shape, byte count) before a buffer becomes an array, so a
malformed or hostile message raises ``WireError`` and never yields an array
that lies about its size. Decoded arrays are read-only views of the message.
"""

import msgpack
import numpy as np

NDARRAY_EXT = 1
MAX_NDIM = 8
DTYPES = frozenset(["|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"])


class WireError(ValueError):
  """A message that is not valid msgpack or holds a malformed array."""


def _default(obj):
  if isinstance(obj, (np.ndarray, np.generic)):
    arr = np.require(np.asarray(obj), requirements="C")  # (ascontiguousarray makes 0-d arrays 1-d)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype.str not in DTYPES:
      raise TypeError(f"cannot send a {arr.dtype} array; sendable dtypes: {sorted(DTYPES)}")
    arr = arr.astype(dtype, copy=False)
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb([dtype.str, list(arr.shape), arr.tobytes()]))
  raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes):
  if code != NDARRAY_EXT:
    raise WireError(f"unknown msgpack extension type {code} (arrays are type {NDARRAY_EXT})")
  try:
    parts = msgpack.unpackb(data, raw=False)
  except Exception as e:  # noqa: BLE001
    raise WireError(f"malformed array extension: {type(e).__name__}") from None
  if not (isinstance(parts, list) and len(parts) == 3):
    raise WireError("malformed array extension: expected [dtype, shape, bytes]")
  dtype, shape, buf = parts
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise WireError(f"array dtype {str(dtype)[:20]!r} is not one of {sorted(DTYPES)}")
  if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and
          all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
    raise WireError(f"array shape must be a list of at most {MAX_NDIM} non-negative ints")
  if not isinstance(buf, bytes):
    raise WireError("array data must be bytes")
  count = 1
  for d in shape:
    count *= d
  if count * np.dtype(dtype).itemsize != len(buf):
    raise WireError(f"array {dtype}{shape} needs {count * np.dtype(dtype).itemsize} bytes, got {len(buf)}")
  return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(tuple(shape))


def pack(obj) -> bytes:
  """Python/numpy structure -> bytes (maps, lists, str, bytes, numbers, bool, None, arrays)."""
  return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes):
  """bytes -> structure; raises WireError for anything malformed (truncated, bad arrays, bad UTF-8...)."""
  try:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True, use_list=True)
  except WireError:
    raise
  except Exception as e:  # noqa: BLE001 (msgpack raises several types: ExtraData, StackError, ValueError...)
    raise WireError(f"not a valid msgpack message ({type(e).__name__}: {str(e)[:100]})") from None
