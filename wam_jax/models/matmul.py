"""Matmul precision policy: a `dot_general` drop-in for linen layers.

On this project's CPUs (Xeon with AMX) XLA reaches the AMX bf16 kernels only
when both operands are bf16 *and* the dot accumulates to an f32 result
(`preferred_element_type=float32`). A bf16 dot with a bf16 result takes a slow
upcast path, and so does casting the f32 result straight back to bf16. Training
needs the backward matmuls on the fast path too, so the bf16 policy is a
`jax.custom_vjp` whose forward and both cotangent matmuls take bf16 operands
and accumulate in f32. Params, activations and gradients stay f32.

Usage::

  dot = make_dot_general("bfloat16")
  nn.Dense(512, dot_general=dot)                # linen Dense / DenseGeneral
  jnp.einsum("bqhd,bkhd->bhqk", q, k, _dot_general=dot)

Dimension numbers follow `jax.lax.dot_general`:
`((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))`; the output is laid
out as [batch dims..., lhs free dims..., rhs free dims...].
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DotGeneral = Callable[..., jax.Array]
DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]

COMPUTE_DTYPES = ("float32", "bfloat16")


def make_dot_general(compute_dtype: str) -> DotGeneral:
  """Returns a `jax.lax.dot_general`-compatible callable for `compute_dtype`.

  Args:
    compute_dtype: "float32" returns `jax.lax.dot_general` itself. "bfloat16"
      returns `bf16_dot_general`: bf16 operands, f32 accumulation and f32
      result, in the forward and in both backward matmuls.

  Returns:
    `fn(lhs, rhs, dimension_numbers, precision=None,
    preferred_element_type=None, *, out_sharding=None) -> Array`.
  """
  name = jnp.dtype(compute_dtype).name if compute_dtype else compute_dtype
  if name == "float32":
    return jax.lax.dot_general
  if name == "bfloat16":
    return bf16_dot_general
  raise ValueError(
      f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")


def bf16_dot_general(lhs: jax.Array, rhs: jax.Array,
                     dimension_numbers: Any, precision: Any = None,
                     preferred_element_type: Any = None, *,
                     out_sharding: Any = None) -> jax.Array:
  """`jax.lax.dot_general` with bf16 operands and f32 accumulation.

  Args:
    lhs, rhs: arrays of any float dtype (usually f32 activations and params).
    dimension_numbers: `((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))`.
    precision: passed through (it has no effect on bf16 operands).
    preferred_element_type: the result dtype; None or float32 give the f32
      accumulator itself. Another dtype is a cast after the f32 dot, which on
      CPU lets XLA fold back into the slow bf16-result dot: avoid it.
    out_sharding: passed to the forward dot only.

  Returns:
    [batch..., lhs free..., rhs free...] in f32 (or `preferred_element_type`).
    Gradients w.r.t. lhs and rhs come back in their own dtypes.
  """
  dims = _normalize_dims(dimension_numbers, lhs.ndim, rhs.ndim)
  out = _bf16_dot(lhs, rhs, dims, precision, out_sharding)
  if preferred_element_type is not None:
    out = out.astype(preferred_element_type)
  return out


def _normalize_dims(dimension_numbers: Any, lhs_ndim: int,
                    rhs_ndim: int) -> DimensionNumbers:
  """Hashable tuples of non-negative ints (custom_vjp static argument)."""
  (lc, rc), (lb, rb) = dimension_numbers

  def norm(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    return tuple(int(a) % ndim for a in axes)

  return ((norm(lc, lhs_ndim), norm(rc, rhs_ndim)),
          (norm(lb, lhs_ndim), norm(rb, rhs_ndim)))


def _amx_dot(lhs, rhs, dims, precision, out_sharding=None) -> jax.Array:
  """The one matmul all three passes use: bf16 x bf16 -> f32.

  XLA:CPU (jax 0.10.2) takes a mixed bf16/f32 dot to YNNPACK (AMX) only when
  it is canonical: lhs [batch, free, contract] and rhs [batch, contract, free]
  or [batch, free, contract], all row-major. Otherwise an early pass upcasts
  it to an f32 dot (~6x slower), and a dot that passes that check but is
  rewritten later into a transposed form reaches the Eigen fallback, which
  fails at run time ("Unsupported element type for DotThunk::Execute: BF16 x
  BF16 = F32"). So an operand in another order is transposed here, given a
  trailing unit contracting axis (the reshape gives it a fresh row-major
  layout; a bare transpose would keep its permuted layout) and fenced with
  an optimization barrier so XLA cannot fold the transpose back into the dot.
  """
  (lc, rc), (lb, rb) = dims
  lhs, rhs = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
  # Contracting pairs in lhs axis order: the lhs is then often in place.
  pairs = sorted(zip(lc, rc))
  lc, rc = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
  lhs_order = lb + _free_axes(lhs.ndim, lc, lb) + lc
  rhs_free = _free_axes(rhs.ndim, rc, rb)
  rhs_nn, rhs_nt = rb + rc + rhs_free, rb + rhs_free + rc
  identity = lambda order: order == tuple(range(len(order)))
  if identity(lhs_order) and (identity(rhs_nn) or identity(rhs_nt)):
    dims = ((lc, rc), (lb, rb))
  else:
    nb, nc = len(lb), len(lc)
    lhs = _fenced_transpose(lhs, lhs_order)
    lhs_c = tuple(range(lhs.ndim - nc - 1, lhs.ndim))
    if identity(rhs_nn):  # [batch, contract, unit, free]: a bitcast.
      rhs = jnp.expand_dims(rhs, nb + nc)
      rhs_c = tuple(range(nb, nb + nc + 1))
    else:                 # [batch, free, contract, unit]
      rhs = _fenced_transpose(rhs, rhs_nt)
      rhs_c = tuple(range(rhs.ndim - nc - 1, rhs.ndim))
    dims = ((lhs_c, rhs_c), (tuple(range(nb)), tuple(range(nb))))
  kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
  return jax.lax.dot_general(lhs, rhs, dims, precision=precision,
                             preferred_element_type=jnp.float32, **kwargs)


def _fenced_transpose(x: jax.Array, order: tuple[int, ...]) -> jax.Array:
  """x transposed to `order` plus a trailing unit axis, materialized row-major.

  An operand already in order only gets the unit axis (a bitcast).
  """
  if order != tuple(range(x.ndim)):
    x = jnp.transpose(x, order)
    return jax.lax.optimization_barrier(x.reshape(x.shape + (1,)))
  return x.reshape(x.shape + (1,))


def _free_axes(ndim: int, contract: Sequence[int],
               batch: Sequence[int]) -> tuple[int, ...]:
  used = set(contract) | set(batch)
  return tuple(a for a in range(ndim) if a not in used)


def _cotangents(g, lhs, rhs, dims, precision) -> tuple[jax.Array, jax.Array]:
  """Both operand cotangents of `dot_general`, each one bf16/f32 matmul.

  g has layout [batch, lhs free, rhs free]. dlhs = g . rhs contracting the
  rhs-free axes, giving [batch, lhs free, rhs contract (ascending)]; drhs =
  lhs . g contracting the lhs-free axes, giving [batch, lhs contract
  (ascending), rhs free]. For Dense-style dims both are already in the
  operand's own layout; otherwise each contract axis maps to its partner and
  a transpose restores the layout.

  Args:
    g: [batch..., lhs free..., rhs free...] output cotangent.
    lhs, rhs: forward operands.
    dims: normalized dimension numbers of the forward dot.
    precision: forwarded to the dots.

  Returns:
    (dlhs, drhs) in f32, shaped like lhs and rhs.
  """
  (lc, rc), (lb, rb) = dims
  nb = len(lb)
  lhs_free = _free_axes(lhs.ndim, lc, lb)
  rhs_free = _free_axes(rhs.ndim, rc, rb)
  g_lhs_free = tuple(range(nb, nb + len(lhs_free)))
  g_rhs_free = tuple(range(nb + len(lhs_free), g.ndim))
  g_batch = tuple(range(nb))

  dlhs = _amx_dot(g, rhs, ((g_rhs_free, rhs_free), (g_batch, rb)), precision)
  rc_to_lc = dict(zip(rc, lc))
  dlhs = _to_layout(dlhs, lb + lhs_free + tuple(rc_to_lc[a] for a in sorted(rc)))

  drhs = _amx_dot(lhs, g, ((lhs_free, g_lhs_free), (lb, g_batch)), precision)
  lc_to_rc = dict(zip(lc, rc))
  drhs = _to_layout(drhs, rb + tuple(lc_to_rc[a] for a in sorted(lc)) + rhs_free)
  return dlhs, drhs


def _to_layout(result: jax.Array, src: tuple[int, ...]) -> jax.Array:
  """Transposes `result`, whose axis k is operand axis src[k], to operand order.

  The barrier keeps XLA from folding the transpose into the dot, which would
  make the dot non-canonical (see `_amx_dot`).
  """
  perm = tuple(int(i) for i in np.argsort(src))
  if perm == tuple(range(result.ndim)):
    return result
  return jnp.transpose(jax.lax.optimization_barrier(result), perm)


def _bf16_dot_impl(lhs, rhs, dims, precision, out_sharding):
  return _amx_dot(lhs, rhs, dims, precision, out_sharding)


_bf16_dot = jax.custom_vjp(_bf16_dot_impl, nondiff_argnums=(2, 3, 4))


def _bf16_dot_fwd(lhs, rhs, dims, precision, out_sharding):
  out = _amx_dot(lhs, rhs, dims, precision, out_sharding)
  # Residuals in bf16: half the memory, and the backward casts anyway. The
  # zero-size arrays carry the primal dtypes (residuals must be JAX types).
  res = (lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16),
         jnp.zeros((0,), lhs.dtype), jnp.zeros((0,), rhs.dtype))
  return out, res


def _bf16_dot_bwd(dims, precision, out_sharding, res, g):
  del out_sharding  # Cotangent shardings follow from propagation.
  lhs, rhs, lhs_tag, rhs_tag = res
  dlhs, drhs = _cotangents(g, lhs, rhs, dims, precision)
  return dlhs.astype(lhs_tag.dtype), drhs.astype(rhs_tag.dtype)


_bf16_dot.defvjp(_bf16_dot_fwd, _bf16_dot_bwd)
