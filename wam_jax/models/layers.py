"""Shared transformer blocks. Every family builds on these.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``kv``,
``vocab``, ``patch``, ``length``); ``wam_jax.training.sharding`` maps them to
the device mesh. Dense layers take a ``dot_general`` so bf16/AMX compute is a
config switch (``wam_jax.models.matmul``) while parameters stay float32.

``Transformer`` options (defaults = the original block, same parameter paths):
``norm`` layer|rms, ``activation`` gelu|swiglu, ``rope_max_wavelength``
(0: no rotary embedding), ``scan`` (one ``blocks`` module whose parameters
have a leading ``layers`` axis), ``remat`` none|full|dots_saveable|dots_with_no_batch_dims_saveable.
"""

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
DotGeneral = Optional[Callable[..., jax.Array]]

default_init = nn.initializers.xavier_uniform()


class Dense(nn.Module):
  """y = x . W + b contracting the trailing ``contract_dims`` axes of x.

  Leading axes are flattened into one before the matmul: XLA:CPU's backward
  of a dot with several batch-like leading axes ([B, N, D] x [D, F]) is
  2.2x slower than the same dot on [B*N, D] (BUILD_NOTES, "Flattened dense").
  Params are ``kernel`` [*contracted, *features] and ``bias`` [*features], with
  logical axis names, as linen's DenseGeneral would make them.
  """
  features: Any                    # int or tuple of ints
  names: tuple                     # logical names of the kernel axes
  contract_dims: int = 1
  use_bias: bool = True
  dot_general: DotGeneral = None
  kernel_init: Callable = default_init

  @nn.compact
  def __call__(self, x):
    feats = tuple(self.features) if isinstance(self.features, (tuple, list)) else (self.features,)
    contracted = x.shape[x.ndim - self.contract_dims:]
    lead = x.shape[:x.ndim - self.contract_dims]
    k_in, k_out = math.prod(contracted), math.prod(feats)

    def init(rng, shape, dtype=jnp.float32):  # fan-in/out of the flat matrix
      return self.kernel_init(rng, (k_in, k_out), dtype).reshape(shape)

    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), contracted + feats)
    dot = self.dot_general or jax.lax.dot_general
    y = dot(x.reshape(-1, k_in), kernel.reshape(k_in, k_out), (((1,), (0,)), ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             self.names[len(contracted):]), feats)
      y = y + bias.reshape(-1)
    return y.reshape(lead + feats)


def _same_padding(h: int, w: int, kh: int, kw: int, s: int):
  """(Ho, Wo, ((top, bottom), (left, right))) of a SAME-padded conv, as XLA/linen pad."""
  ho, wo = -(-h // s), -(-w // s)
  ph, pw = max((ho - 1) * s + kh - h, 0), max((wo - 1) * s + kw - w, 0)
  return ho, wo, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))


def _conv_nhwc(x_NHWC, kernel_HWIO, stride: int):
  _, _, pads = _same_padding(x_NHWC.shape[1], x_NHWC.shape[2], kernel_HWIO.shape[0], kernel_HWIO.shape[1], stride)
  return jax.lax.conv_general_dilated(x_NHWC, kernel_HWIO, (stride, stride), pads,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x_NHWC, kernel_HWIO, stride):
  return _conv_nhwc(x_NHWC, kernel_HWIO, stride)


def _conv_fwd(x_NHWC, kernel_HWIO, stride):
  return _conv_nhwc(x_NHWC, kernel_HWIO, stride), (x_NHWC, kernel_HWIO)


def _conv_bwd(stride, res, dy_NHWF):
  x, kernel = res
  kh, kw, c, f = kernel.shape
  _, dx_fn = jax.vjp(lambda x_: _conv_nhwc(x_, kernel, stride), x)  # XLA's input-gradient conv: fast
  (dx,) = dx_fn(dy_NHWF)
  ho, wo, pads = _same_padding(x.shape[1], x.shape[2], kh, kw, stride)
  xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),))
  dy = dy_NHWF.reshape(-1, f)
  taps = [jax.lax.dot_general(xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :]
                              .reshape(-1, c), dy, (((0,), (0,)), ((), ())))  # [C, F] per kernel tap
          for i in range(kh) for j in range(kw)]
  return dx, jnp.stack(taps).reshape(kh, kw, c, f)


_conv.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
  """A 2D convolution, SAME padding, square stride; linen ``nn.Conv``'s parameters
  (``kernel`` [kh, kw, in, out], ``bias`` [out]), so its checkpoints restore by path.

  Forward and input gradient are XLA's convolutions; the kernel gradient is one
  matmul per kernel tap (the tap's shifted, strided input view, contracted with
  the output gradient over N*Ho*Wo). XLA:CPU computes the kernel gradient as a
  convolution whose window is the whole image, which took most of the frame
  autoencoder's step (BUILD_NOTES, "Convolutions: the kernel gradient as matmuls").
  """
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  names: tuple = (None, None, None, None)  # logical names of [kh, kw, in, out]
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x_NHWC):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.names),
                        (kh, kw, x_NHWC.shape[-1], self.features))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.names[-1:]),
                      (self.features,))
    return _conv(x_NHWC, kernel, self.strides) + bias


def logical_dense(features, names, *, dot_general=None, use_bias=True, axis=-1, name=None,
                  kernel_init=default_init):
  """A Dense over the trailing axes ``axis`` (-1 or (-2, -1)) with logical axis names."""
  axes = axis if isinstance(axis, tuple) else (axis,)
  if sorted(axes) != list(range(-len(axes), 0)):
    raise ValueError(f"logical_dense contracts trailing axes only, got axis={axis}")
  return Dense(features, tuple(names), contract_dims=len(axes), use_bias=use_bias,
               dot_general=dot_general, kernel_init=kernel_init, name=name)


def layer_norm(name=None):
  return nn.LayerNorm(
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
      name=name)


NORMS = ("layer", "rms")
ACTIVATIONS = ("gelu", "swiglu")
# dots_with_no_batch_dims_saveable: keep the weight matmuls' outputs, recompute the attention dots
# (batched over [B, H]) and everything elementwise: the [B, H, N, N] logits are never saved.
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots_saveable": jax.checkpoint_policies.dots_saveable,
                  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def norm_layer(kind: str, name=None):
  """``layer`` (LayerNorm, scale + bias) or ``rms`` (RMSNorm, scale only), over ``embed``."""
  if kind == "layer":
    return layer_norm(name)
  if kind == "rms":
    return nn.RMSNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                      name=name)
  raise ValueError(f"norm={kind!r} is not a norm; known: {NORMS}")


def rope(x_BHNK, positions_BN, max_wavelength: float):
  """Rotary position embedding: feature pairs (k, k + K/2) rotated by position x frequency.

  The dot product of a rotated query at position n with a rotated key at
  position m depends on n - m only. Frequencies max_wavelength^(-2i/K).
  """
  k = x_BHNK.shape[-1]
  if k % 2:
    raise ValueError(f"rotary embedding needs an even head dim, got {k}")
  freq_F = max_wavelength ** (-jnp.arange(k // 2, dtype=jnp.float32) * 2 / k)
  angle_BNF = positions_BN.astype(jnp.float32)[..., None] * freq_F
  sin, cos = jnp.sin(angle_BNF)[:, None], jnp.cos(angle_BNF)[:, None]  # [B, 1, N, K/2]
  x1, x2 = jnp.split(x_BHNK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BHNK.dtype)


def _attention_probs(q_BHNK, k_BHMK, allowed):
  """softmax over keys of q k^T, -inf-like where not ``allowed``: [B, H, N, M]."""
  logits_BHNM = jnp.einsum("bhnk,bhmk->bhnm", q_BHNK, k_BHMK)
  logits_BHNM = jnp.where(allowed, logits_BHNM, jnp.finfo(logits_BHNM.dtype).min)
  return jax.nn.softmax(logits_BHNM, axis=-1)


def attend_autodiff(q_BHNK, k_BHMK, v_BHMK, allowed):
  """softmax(q k^T where allowed) v: [B, H, N, K] (q already scaled); ``allowed`` broadcasts to [B, H, N, M]."""
  return jnp.einsum("bhnm,bhmk->bhnk", _attention_probs(q_BHNK, k_BHMK, allowed), v_BHMK)


@jax.custom_vjp
def attend(q_BHNK, k_BHMK, v_BHMK, allowed):
  """``attend_autodiff`` with a hand-written backward: the probabilities are the only saved
  intermediate and each gradient is one batched dot in the canonical [batch, rows, contraction]
  layout (dq = dS k, dk = dS^T q, dv = P^T do, dS = P (dP - rowsum(dP P)))."""
  return _attend_fwd(q_BHNK, k_BHMK, v_BHMK, allowed)[0]


def _attend_fwd(q, k, v, allowed):
  probs = _attention_probs(q, k, allowed)
  out = jnp.einsum("bhnm,bhmk->bhnk", probs.astype(v.dtype), v)
  return out, (q, k, v, probs, allowed)


def _attend_bwd(res, d_out):
  q, k, v, probs, allowed = res
  batch = ((0, 1), (0, 1))
  d_v = jax.lax.dot_general(probs.astype(d_out.dtype), d_out, (((2,), (2,)), batch))
  d_probs = jax.lax.dot_general(d_out, v, (((3,), (3,)), batch)).astype(probs.dtype)
  d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
  d_logits = jnp.where(allowed, d_logits, 0.0)  # a fully masked row's uniform probs carry no gradient
  d_q = jax.lax.dot_general(d_logits.astype(q.dtype), k, (((3,), (2,)), batch))
  d_k = jax.lax.dot_general(d_logits.astype(k.dtype), q, (((2,), (2,)), batch))
  return d_q, d_k, d_v.astype(v.dtype), np.zeros(allowed.shape, jax.dtypes.float0)


attend.defvjp(_attend_fwd, _attend_bwd)


class Attention(nn.Module):
  """Multi-head self-attention over [B, N, D].

  ``mask`` is a key padding mask [B, N] (True = attend), or a per-query mask
  [B, N, N] (query n may attend key m) for block-structured attention.
  ``rope_max_wavelength`` > 0 rotates queries and keys by ``positions_BN``
  (default 0..N-1) before their dot product. ``head_dim`` (0: D / heads) sets
  the attention's inner size apart from D, so a narrower module can share
  another's keys and values.

  ``prefix_kv = (k_BHMK, v_BHMK, mask_BM)``: M more keys and values (another
  module's, already rotated) that every query may attend where ``mask_BM``; the
  pi0-style action expert attends to the VLM's this way. ``return_kv``: also
  return this layer's own (rotated) keys and values [B, H, N, K].
  """
  num_heads: int
  dot_general: DotGeneral = None
  rope_max_wavelength: float = 0.0
  head_dim: int = 0

  @nn.compact
  def __call__(self, x_BND, mask_BN=None, causal=False, positions_BN=None, prefix_kv=None, return_kv=False):
    d = x_BND.shape[-1]
    if not self.head_dim and d % self.num_heads:
      raise ValueError(f"model.width={d} is not divisible by model.num_heads={self.num_heads}")
    head_dim = self.head_dim or d // self.num_heads
    qkv = logical_dense((3, self.num_heads, head_dim), ("embed", None, "heads", "kv"),
                        dot_general=self.dot_general, name="qkv")(x_BND)
    # Heads-major [3, B, H, N, K]: batch dims lead in both attention dots (the
    # canonical batched-matmul layout; 20% faster backward on XLA:CPU).
    q_BHNK, k_BHNK, v_BHNK = qkv.transpose(2, 0, 3, 1, 4)
    if self.rope_max_wavelength:
      if positions_BN is None:
        positions_BN = jnp.broadcast_to(jnp.arange(x_BND.shape[1]), x_BND.shape[:2])
      q_BHNK = rope(q_BHNK, positions_BN, self.rope_max_wavelength)
      k_BHNK = rope(k_BHNK, positions_BN, self.rope_max_wavelength)
    own_kv = (k_BHNK, v_BHNK)
    q_BHNK = q_BHNK / jnp.sqrt(head_dim).astype(q_BHNK.dtype)
    n = x_BND.shape[1]
    allowed = jnp.ones((n, n), bool)[None, None]
    if causal:
      allowed = jnp.tril(allowed)
    if mask_BN is not None:  # [B, M] keys, or [B, N, M] queries x keys
      allowed = allowed & (mask_BN[:, None, None, :] if mask_BN.ndim == 2 else mask_BN[:, None])
    if prefix_kv is not None:
      pk_BHMK, pv_BHMK, pmask_BM = prefix_kv
      k_BHNK = jnp.concatenate([pk_BHMK.astype(k_BHNK.dtype), k_BHNK], axis=2)
      v_BHNK = jnp.concatenate([pv_BHMK.astype(v_BHNK.dtype), v_BHNK], axis=2)
      b = x_BND.shape[0]
      prefix_allowed = jnp.broadcast_to(pmask_BM[:, None, None, :], (b, 1, n, pmask_BM.shape[1]))
      allowed = jnp.concatenate([prefix_allowed, jnp.broadcast_to(allowed, (b, 1, n, n))], axis=-1)
    out_BNHK = attend(q_BHNK, k_BHNK, v_BHNK, allowed).transpose(0, 2, 1, 3)
    out = logical_dense(d, ("heads", "kv", "embed"), axis=(-2, -1),
                        dot_general=self.dot_general, name="out")(out_BNHK)
    return (out, own_kv) if return_kv else out


class MlpBlock(nn.Module):
  """gelu: wo(gelu(wi x)); swiglu: wo(silu(gate x) * (up x)), gate and up one ``wi`` [D, 2, F]."""
  mlp_dim: int
  dropout: float = 0.0
  dot_general: DotGeneral = None
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x_BND, train: bool):
    d = x_BND.shape[-1]
    if self.activation == "gelu":
      h = logical_dense(self.mlp_dim, ("embed", "mlp"), dot_general=self.dot_general, name="wi")(x_BND)
      h = nn.gelu(h)
    elif self.activation == "swiglu":
      gate_up = logical_dense((2, self.mlp_dim), ("embed", None, "mlp"), dot_general=self.dot_general,
                              name="wi")(x_BND)
      h = nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
    else:
      raise ValueError(f"activation={self.activation!r} is not an MLP activation; known: {ACTIVATIONS}")
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return logical_dense(d, ("mlp", "embed"), dot_general=self.dot_general, name="wo")(h)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + Attn(Norm(x)); x + MLP(Norm(x)). ``prefix_kv``/``return_kv``: ``Attention``'s."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dot_general: DotGeneral = None
  norm: str = "layer"
  activation: str = "gelu"
  rope_max_wavelength: float = 0.0
  head_dim: int = 0

  @nn.compact
  def __call__(self, x_BND, mask_BN, train: bool, causal: bool = False, positions_BN=None, prefix_kv=None,
               return_kv: bool = False):
    x_BND = nn.with_logical_constraint(x_BND, ("batch", "length", "embed"))
    y = Attention(self.num_heads, self.dot_general, self.rope_max_wavelength, self.head_dim, name="attn")(
        norm_layer(self.norm, "ln_attn")(x_BND), mask_BN, causal, positions_BN, prefix_kv, return_kv)
    if return_kv:
      y, kv = y
    x_BND = x_BND + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dot_general, self.activation, name="mlp")(
        norm_layer(self.norm, "ln_mlp")(x_BND), train)
    x_BND = x_BND + nn.Dropout(self.dropout, deterministic=not train)(y)
    return (x_BND, kv) if return_kv else x_BND


class LayerKV(NamedTuple):
  """Every layer's keys and values, stacked: ``k``, ``v`` [L, B, H, N, K] (rotated keys)."""
  k: jax.Array
  v: jax.Array


class _ScanStep(nn.Module):
  """One scanned layer: (x, layer-l prefix keys/values or None) -> (block(x), its own keys/values or
  None); train/causal/return_kv are static fields, the prefix key mask is shared by every layer."""
  block: Callable
  block_args: tuple
  train: bool
  causal: bool
  return_kv: bool = False

  @nn.compact
  def __call__(self, x_BND, mask_BN, positions_BN, prefix_mask_BM, prefix_kv):
    block = self.block(*self.block_args, name="block")
    if not (self.return_kv or prefix_kv is not None):
      return block(x_BND, mask_BN, self.train, self.causal, positions_BN), None
    prefix = None if prefix_kv is None else (*prefix_kv, prefix_mask_BM)
    x_BND, kv = block(x_BND, mask_BN, self.train, self.causal, positions_BN, prefix, True)
    return x_BND, kv if self.return_kv else None


class Transformer(nn.Module):
  """A stack of blocks + final norm.

  Unrolled by default (``block_{i}``; 1.6x faster than nn.scan on CPU). With
  ``scan`` the blocks are one ``blocks/block`` module whose parameters carry a
  leading ``layers`` axis [depth, ...]: compile time no longer grows with
  depth (``stack_blocks`` converts unrolled parameters). ``remat`` recomputes
  each block's activations in the backward pass: ``full`` saves nothing,
  ``dots_saveable`` keeps the matmul outputs.

  Layer-wise attention sharing (pi0's action expert; unrolled or scanned):
  ``return_kvs`` also returns every block's keys and values as one ``LayerKV``
  ([L, B, H, N, K] each); ``prefix_kvs = (LayerKV, mask_BM)`` lets block l attend
  to another stack's layer-l keys and values where ``mask_BM``. Scanned, both
  are the scan's per-layer inputs and outputs, so compile time and memory stay
  flat in depth (the hybrid's ``1b`` preset).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dot_general: DotGeneral = None
  norm: str = "layer"
  activation: str = "gelu"
  rope_max_wavelength: float = 0.0
  scan: bool = False
  remat: str = "none"
  head_dim: int = 0

  @nn.compact
  def __call__(self, x_BND, mask_BN=None, *, train: bool, causal: bool = False, positions_BN=None,
               prefix_kvs=None, return_kvs: bool = False):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r} is not a remat policy; known: {sorted(REMAT_POLICIES)}")
    sharing = prefix_kvs is not None or return_kvs
    prefix_kv, prefix_mask_BM = (None, None) if prefix_kvs is None else prefix_kvs
    if prefix_kv is not None and (not isinstance(prefix_kv, LayerKV) or prefix_kv.k.shape[0] != self.depth):
      got = prefix_kv.k.shape[0] if isinstance(prefix_kv, LayerKV) else type(prefix_kv).__name__
      raise ValueError(f"prefix_kvs must be (LayerKV with {self.depth} layers, mask [B, M]); got {got}")
    block = TransformerBlock
    if self.remat != "none":  # argnums count self: 3 = train, 4 = causal, 7 = return_kv
      block = nn.remat(TransformerBlock, policy=REMAT_POLICIES[self.remat],
                       static_argnums=(3, 4, 7) if sharing else (3, 4), prevent_cse=not self.scan)
    args = (self.num_heads, self.mlp_dim, self.dropout, self.dot_general, self.norm, self.activation,
            self.rope_max_wavelength, self.head_dim)
    if self.scan:
      stack = nn.scan(_ScanStep, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      per_layer = None if prefix_kv is None else tuple(prefix_kv)
      x_BND, kv = stack(block, args, train, causal, return_kvs, name="blocks")(
          x_BND, mask_BN, positions_BN, prefix_mask_BM, per_layer)
      kvs = LayerKV(*kv) if return_kvs else None
    elif sharing:
      own = []
      for i in range(self.depth):
        prefix = None if prefix_kv is None else (prefix_kv.k[i], prefix_kv.v[i], prefix_mask_BM)
        x_BND, kv = block(*args, name=f"block_{i}")(x_BND, mask_BN, train, causal, positions_BN, prefix, True)
        own.append(kv)
      kvs = LayerKV(jnp.stack([k for k, _ in own]), jnp.stack([v for _, v in own])) if return_kvs else None
    else:
      for i in range(self.depth):
        x_BND = block(*args, name=f"block_{i}")(x_BND, mask_BN, train, causal, positions_BN)
    x_BND = norm_layer(self.norm, "ln_final")(x_BND)
    return (x_BND, kvs) if return_kvs else x_BND


def stack_blocks(params, depth: int):
  """Unrolled Transformer params (``block_0..block_{depth-1}``) -> the scanned layout
  (``blocks/block``, each leaf stacked on a new leading axis). Other entries unchanged."""
  params = dict(params)
  blocks = [params.pop(f"block_{i}") for i in range(depth)]
  params["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  return params


def learned_embedding(module: nn.Module, name: str, shape, names):
  """A learned table (positions, queries) with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), names), shape)
