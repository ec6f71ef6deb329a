"""bf16/f32-accumulate dot_general and the matmul peak measurement."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.models import matmul
from wam_jax.training import peak

BF16 = matmul.make_dot_general("bfloat16")
# bf16 operands carry 8 significant bits: relative errors ~2^-9 per element,
# averaging out over the contraction. Relative to max |ref|:
RTOL = 2e-2

# (lhs shape, rhs shape, dimension numbers)
CASES = {
    "dense_2d": ((16, 32), (32, 24), (((1,), (0,)), ((), ()))),
    "dense_3d": ((4, 8, 32), (32, 24), (((2,), (0,)), ((), ()))),
    "dense_general_2_axes": ((4, 8, 6, 5), (6, 5, 3, 7), (((2, 3), (0, 1)), ((), ()))),
    "contract_out_of_order": ((4, 8, 6, 5), (5, 3, 6), (((3, 2), (0, 2)), ((), ()))),
    "attention_qk": ((2, 10, 3, 8), (2, 12, 3, 8), (((3,), (3,)), ((0, 2), (0, 2)))),
    "attention_pv": ((2, 3, 10, 12), (2, 12, 3, 8), (((3,), (1,)), ((0, 1), (0, 2)))),
    "batch_not_leading": ((5, 2, 7), (7, 3, 2), (((2,), (0,)), ((1,), (2,)))),
    "tiny": ((3, 4), (4, 2), (((1,), (0,)), ((), ()))),
    "vector_row": ((1, 16), (16, 32), (((1,), (0,)), ((), ()))),
}


def _rel_err(x, ref):
  """Max abs error relative to max |ref| (numpy: no per-shape eager compiles)."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(x - ref)) / (np.max(np.abs(ref)) + 1e-30))


def _operands(*shapes, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_grads_match_f32(name):
  lhs_shape, rhs_shape, dims = CASES[name]
  lhs, rhs = _operands(lhs_shape, rhs_shape)
  ref = np.asarray(jax.lax.dot_general(lhs, rhs, dims))
  (cot,) = _operands(ref.shape, seed=1)

  def loss(dot):
    return lambda a, b: jnp.sum(dot(a, b, dims) * cot)

  out, grads = jax.jit(lambda a, b: (BF16(a, b, dims), jax.grad(loss(BF16), (0, 1))(a, b)))(lhs, rhs)
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  assert _rel_err(out, ref) < RTOL
  ref_grads = jax.jit(jax.grad(loss(jax.lax.dot_general), (0, 1)))(lhs, rhs)
  for g, r in zip(grads, ref_grads):
    assert g.dtype == jnp.float32 and g.shape == r.shape
    assert _rel_err(g, r) < RTOL


def test_negative_axes_and_bf16_inputs():
  lhs, rhs = _operands((16, 32), (32, 8))
  out = BF16(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), (((-1,), (0,)), ((), ())))
  assert out.dtype == jnp.float32
  assert _rel_err(out, lhs @ rhs) < RTOL
  g = jax.grad(lambda a: jnp.sum(BF16(a, rhs, (((1,), (0,)), ((), ())))))(
      lhs.astype(jnp.bfloat16))
  assert g.dtype == jnp.bfloat16  # cotangent in the operand's own dtype


def test_preferred_element_type_is_honoured():
  lhs, rhs = _operands((16, 32), (32, 8))
  dims = (((1,), (0,)), ((), ()))
  assert BF16(lhs, rhs, dims, preferred_element_type=jnp.float32).dtype == jnp.float32
  assert BF16(lhs, rhs, dims, None, jnp.bfloat16).dtype == jnp.bfloat16


def test_compute_dtype_selection():
  assert matmul.make_dot_general("float32") is jax.lax.dot_general
  assert matmul.make_dot_general(jnp.bfloat16) is matmul.bf16_dot_general
  with pytest.raises(ValueError, match="compute_dtype"):
    matmul.make_dot_general("float16")


def _all_dots_bf16(compiled_text):
  """Every dot in optimized HLO takes bf16 operands (none upcast to f32)."""
  lines = compiled_text.splitlines()
  dots = [l for l in lines if " dot(" in l]
  assert dots
  for line in dots:
    operands = line.split(" dot(")[1].split(")")[0].split(", ")
    for op in operands:
      decl = next(l for l in lines if l.strip().startswith(op + " = "))
      assert decl.split(" = ")[1].startswith("bf16["), (line, decl)


@pytest.mark.parametrize("shape", [(64, 32), (4, 16, 32)])
def test_linen_dense_jit_grad(shape):
  (x,) = _operands(shape)
  fast, ref = (nn.Dense(48, dot_general=matmul.make_dot_general(c))
               for c in ("bfloat16", "float32"))
  params = jax.jit(ref.init)(jax.random.key(1), x)
  assert jax.tree.leaves(params)[0].dtype == jnp.float32

  def loss(layer):
    return lambda p, x: jnp.mean(jnp.square(layer.apply(p, x)))

  step = jax.jit(jax.value_and_grad(loss(fast), argnums=(0, 1)))
  (val, grads), (ref_val, ref_grads) = (
      step(params, x), jax.jit(jax.value_and_grad(loss(ref), argnums=(0, 1)))(params, x))
  assert abs(float(val) - float(ref_val)) < RTOL * abs(float(ref_val))
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert g.dtype == jnp.float32 and _rel_err(g, r) < RTOL
  _all_dots_bf16(step.lower(params, x).compile().as_text())


def test_linen_dense_general_multi_axis():
  (x,) = _operands((4, 6, 8, 5))
  layer = nn.DenseGeneral((3, 7), axis=(-2, -1), dot_general=BF16)
  ref = nn.DenseGeneral((3, 7), axis=(-2, -1))
  params = jax.jit(ref.init)(jax.random.key(1), x)
  loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply(p, x))))
  grads = jax.jit(jax.grad(loss(layer)))(params)
  ref_grads = jax.jit(jax.grad(loss(ref)))(params)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert _rel_err(g, r) < RTOL


def test_einsum_attention_and_vmap():
  q, k = _operands((2, 10, 3, 8), (2, 12, 3, 8))
  ein = lambda dot: (lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k, _dot_general=dot))
  out = jax.jit(ein(BF16))(q, k)
  assert out.dtype == jnp.float32
  assert _rel_err(out, ein(jax.lax.dot_general)(q, k)) < RTOL
  # vmap over the batch axis, with gradients.
  f = lambda dot: jax.vmap(lambda q, k: jnp.sum(jnp.tanh(ein(dot)(q[None], k[None]))))
  g = jax.jit(jax.grad(lambda q: jnp.sum(f(BF16)(q, k))))(q)
  g_ref = jax.jit(jax.grad(lambda q: jnp.sum(f(jax.lax.dot_general)(q, k))))(q)
  assert _rel_err(g, g_ref) < RTOL


def test_sharded_inputs():
  devices = np.array(jax.devices()[:4]).reshape(2, 2)
  mesh = jax.sharding.Mesh(devices, ("data", "tensor"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
  P = jax.sharding.PartitionSpec
  x, w = _operands((16, 32), (32, 24))
  x = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data", None)))
  w = jax.device_put(w, jax.sharding.NamedSharding(mesh, P(None, "tensor")))
  dims = (((1,), (0,)), ((), ()))
  loss = lambda dot: (lambda x, w: jnp.sum(jnp.square(dot(x, w, dims))))
  gx, gw = jax.jit(jax.grad(loss(BF16), (0, 1)))(x, w)
  rx, rw = jax.jit(jax.grad(loss(jax.lax.dot_general), (0, 1)))(x, w)
  assert _rel_err(gx, rx) < RTOL and _rel_err(gw, rw) < RTOL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_measure_peak_positive(dtype):
  gflops = peak.measure_matmul_peak(dtype, sizes=(256,), repeats=2)
  assert math.isfinite(gflops) and gflops > 0


def test_peak_cache_round_trip(tmp_path, monkeypatch):
  monkeypatch.setenv(peak.CACHE_ENV, str(tmp_path))
  calls = []
  monkeypatch.setattr(peak, "_measure_host_peak",
                      lambda kind: calls.append(kind) or 123.5)
  assert peak.matmul_peak_gflops("float32") == 123.5
  assert peak.matmul_peak_gflops("float32") == 123.5
  assert calls == ["float32"]  # Second call read the cache.
  table = json.loads((tmp_path / peak.CACHE_FILE).read_text())
  (key,) = table
  assert jax.__version__ in key and "devices=" not in key  # a host property, not a device one
  # Explicit cache_dir wins over the env var; a corrupt file re-measures.
  other = tmp_path / "other"
  other.mkdir()
  (other / peak.CACHE_FILE).write_text("{not json")
  assert peak.matmul_peak_gflops("bfloat16", cache_dir=other) == 123.5
  assert calls == ["float32", "bfloat16"]


def test_the_peak_cache_keeps_the_best_measurement(tmp_path, monkeypatch):
  """A busy machine's low measurement never replaces an idle one; a higher one does."""
  monkeypatch.setenv(peak.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(peak, "_measure_host_peak", lambda kind: 22.0)  # measured under load
  assert peak.matmul_peak_gflops("float32") == 22.0
  assert peak.record_peak("float32", 139.0) == 139.0  # an idle benchmark offers its number
  assert peak.matmul_peak_gflops("float32") == 139.0
  assert peak.record_peak("float32", 90.0) == 139.0  # a lower one is not taken
  assert peak.matmul_peak_gflops("float32") == 139.0
  assert peak.record_peak("bfloat16", 80.0) == 80.0  # kinds are separate entries
  assert peak.matmul_peak_gflops("float32") == 139.0


def test_host_peak_with_virtual_devices_is_measured_on_one_device(monkeypatch):
  """N virtual CPU devices share the cores: MFU's denominator is the host, counted once."""
  if jax.local_device_count() > 1:
    assert peak._measure_host_peak("float32") > 0  # runs in a 1-device subprocess
  monkeypatch.setattr(peak, "matmul_peak_gflops", lambda kind: 100.0)
  assert peak.hardware_peak_flops(jax.devices()) == 100.0e9


@pytest.mark.parametrize("kind,expected", [("TPU v5", 459e3), ("TPU v5 lite", 197e3), ("TPU v5e", 197e3),
                                           ("TPU v4", 275e3), ("TPU v6 lite", 918e3)])
def test_datasheet_peak_by_device_kind(kind, expected):
  assert peak.datasheet_peak_gflops(kind) == expected
