"""The flattened Dense matches linen's DenseGeneral (values, grads, init scale, axis names)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.models import layers


@pytest.mark.parametrize("features,names,axis,shape", [
    (16, ("embed", "mlp"), -1, (2, 3, 8)),
    ((3, 2, 4), ("embed", None, "heads", "kv"), -1, (2, 5, 8)),
    (8, ("heads", "kv", "embed"), (-2, -1), (2, 5, 2, 4)),
])
def test_dense_matches_dense_general(features, names, axis, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ours = layers.logical_dense(features, names, axis=axis)
  ref = nn.DenseGeneral(features, axis=axis)
  params = nn.meta.unbox(ours.init(jax.random.key(1), x))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(lambda p: (ours.apply(p, x) ** 2).sum())(params)
  g_ref = jax.grad(lambda p: (ref.apply(p, x) ** 2).sum())(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_ref)
  boxed = ours.init(jax.random.key(1), x)["params"]
  assert boxed["kernel"].names == names


def test_dense_init_uses_flat_fan_in_and_out():
  x = jnp.ones((1, 512))
  kernel = nn.meta.unbox(layers.logical_dense((8, 64), ("embed", "heads", "kv")).init(
      jax.random.key(0), x))["params"]["kernel"]
  bound = np.sqrt(6 / (512 + 8 * 64))  # xavier_uniform of the flat [512, 512] matrix
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


def test_dense_rejects_non_trailing_axes():
  with pytest.raises(ValueError, match="trailing"):
    layers.logical_dense(4, ("embed", "mlp"), axis=0)


@pytest.mark.parametrize("size,stride,hw", [(3, 1, 16), (4, 2, 16), (1, 1, 8), (3, 2, 15)])
def test_conv_matches_linen_conv_values_and_gradients(size, stride, hw):
  """layers.Conv (kernel gradient as per-tap matmuls) == nn.Conv: same params, outputs, gradients."""
  x = jax.random.normal(jax.random.key(0), (3, hw, hw, 5))
  ref = nn.Conv(7, (size, size), strides=(stride, stride), padding="SAME")
  mine = layers.Conv(7, (size, size), strides=stride)
  params = jax.tree.map(lambda p: p + 0.1, ref.init(jax.random.key(1), x))  # a nonzero bias too
  assert jax.tree.map(jnp.shape, nn.unbox(mine.init(jax.random.key(1), x))) == jax.tree.map(jnp.shape, params)
  chex.assert_trees_all_close(mine.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g_mine = jax.jit(jax.grad(loss(mine), argnums=(0, 1)))(params, x)
  chex.assert_trees_all_close(g_mine, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_prefix_kv_attention_equals_one_pass_where_the_prefix_cannot_see_the_suffix(scan):
  """Block l of a stack attending to another stack's layer-l keys/values (pi0's action expert) is
  the same computation as one pass over [prefix; suffix] in which prefix tokens never see the
  suffix: with the same parameters, the suffix outputs agree, unrolled and scanned."""
  stack = layers.Transformer(2, 2, 32, norm="rms", activation="swiglu", rope_max_wavelength=100.0, scan=scan)
  pre = jax.random.normal(jax.random.key(0), (2, 5, 16))
  suf = jax.random.normal(jax.random.key(1), (2, 3, 16))
  key_mask = jnp.array([[True] * 5, [True] * 3 + [False] * 2])   # row 1: two padded prefix keys
  params = stack.init(jax.random.key(2), pre, train=False)
  prefix_mask = jnp.broadcast_to(key_mask[:, None, :], (2, 5, 5))
  _, kvs = stack.apply(params, pre, prefix_mask, train=False, return_kvs=True)
  assert isinstance(kvs, layers.LayerKV) and kvs.k.shape == kvs.v.shape == (2, 2, 2, 5, 8)  # [L, B, H, N, K]
  positions = jnp.broadcast_to(5 + jnp.arange(3), (2, 3))
  split = stack.apply(params, suf, None, train=False, positions_BN=positions, prefix_kvs=(kvs, key_mask))
  joint_keys = jnp.concatenate([key_mask, jnp.ones((2, 3), bool)], axis=1)
  sees = jnp.concatenate([jnp.concatenate([jnp.ones((5, 5)), jnp.zeros((5, 3))], 1), jnp.ones((3, 8))], 0) > 0
  joint = stack.apply(params, jnp.concatenate([pre, suf], 1), sees[None] & joint_keys[:, None, :], train=False)
  chex.assert_trees_all_close(split, joint[:, 5:], atol=1e-5)
  with pytest.raises(ValueError, match="LayerKV with 2 layers"):
    stack.apply(params, suf, None, train=False, prefix_kvs=(layers.LayerKV(kvs.k[:1], kvs.v[:1]), key_mask))


def test_scanned_key_value_sharing_equals_unrolled_values_and_gradients():
  """The scanned stack with return_kvs / prefix_kvs (stack_blocks of the same parameters) gives the
  unrolled stack's outputs, keys/values and gradients."""
  pre = jax.random.normal(jax.random.key(0), (2, 5, 16))
  suf = jax.random.normal(jax.random.key(1), (2, 3, 16))
  mask = jnp.ones((2, 5), bool)
  mk = lambda scan: layers.Transformer(3, 2, 32, rope_max_wavelength=100.0, scan=scan, remat="full" if scan else "none")
  params = nn.unbox(mk(False).init(jax.random.key(2), pre, train=False))
  scanned = {"params": layers.stack_blocks(params["params"], 3)}

  def loss(p, scan):
    h, kvs = mk(scan).apply(p, pre, mask, train=False, return_kvs=True)
    out = mk(scan).apply(p, suf, None, train=False, prefix_kvs=(kvs, mask))
    return jnp.sum(jnp.sin(out)) + jnp.sum(h ** 2) + jnp.sum(kvs.k * kvs.v), kvs

  (l0, kv0), g0 = jax.value_and_grad(loss, has_aux=True)(params, False)
  (l1, kv1), g1 = jax.value_and_grad(loss, has_aux=True)(scanned, True)
  chex.assert_trees_all_close(l1, l0, rtol=1e-5)
  chex.assert_trees_all_close(kv1, kv0, rtol=1e-5, atol=1e-6)
  # Gradients reach |g| ~ 5 here: float32 summation order (scan + remat recompute vs unrolled, and the
  # CPU's matmul blocking: an AVX2-only EPYC differed by 1.07e-6 on two elements of ~4e-4) allows
  # ~eps * |g|max * a few, so atol 1e-5 (relative to the tree: 2e-6); a real mismatch is far larger.
  chex.assert_trees_all_close(g1, {"params": layers.stack_blocks(g0["params"], 3)}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_shape", [(1, 1, 6, 6), (3, 1, 6, 6), (3, 1, 1, 6)])
def test_attend_backward_equals_autodiff(mask_shape):
  """The hand-written attention backward == autodiff through einsum-softmax-einsum: outputs and
  gradients of q, k, v, for key-padding, per-query and causal-like masks, incl. a fully masked row."""
  kq, kk, kv, km, kg = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(key, (3, 2, 6, 4)) for key in (kq, kk, kv))
  allowed = jax.random.bernoulli(km, 0.7, mask_shape)
  if mask_shape[-2] > 1:
    allowed = allowed.at[..., 0, :].set(False)  # query 0 may attend nothing: uniform probs, no gradient
  g = jax.random.normal(kg, (3, 2, 6, 4))
  f = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, allowed) * g)
  chex.assert_trees_all_close(layers.attend(q, k, v, allowed), layers.attend_autodiff(q, k, v, allowed),
                              rtol=1e-6, atol=1e-6)
  want = jax.grad(f(layers.attend_autodiff), argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(f(layers.attend), argnums=(0, 1, 2)))(q, k, v)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(want[0]).max()) > 1e-2  # the gradients are not trivially zero
