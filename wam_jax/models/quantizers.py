"""Information bottlenecks for latent variables: a VQ codebook, finite scalar quantization, a Gaussian.

Each maps encoder outputs ``x_BQZ`` (Q latent tokens of Z dims) to latents of the
same shape, an auxiliary loss, and diagnostics. Capacity is explicit: a VQ
bottleneck carries at most Q log2(num_codes) bits, an FSQ one Q log2(prod(levels));
a Gaussian one is held by its KL weight (``kl_weight``) and width Z.

* ``VectorQuantizer``: nearest code by cosine similarity (codes and inputs are
  L2-normalized, which keeps codes from drifting apart in scale: a common cause
  of dead codes), straight-through gradients, codebook + ``commitment`` x
  commitment loss, and an optional batch-entropy bonus (``entropy_weight``:
  soft assignments spread over the codebook) against collapse onto one code.
* ``FiniteScalarQuantizer`` (Mentzer et al. 2023, "FSQ"): each of the Z = len(levels)
  dims is bounded to ``levels[i]`` values and rounded (straight-through); the code is the
  index in the product grid. No codebook and no auxiliary loss: nothing of the size of the
  reconstruction's small motion-explainable part can decide what the code becomes, and a
  code cannot die (every grid point stays reachable by the encoder).
* ``GaussianBottleneck``: z = mu + sigma eps in training, mu at evaluation;
  loss = KL(N(mu, sigma) || N(0, 1)) per latent dim.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import layers


def l2_normalize(x, axis=-1, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def code_usage(codes_BQ, num_codes: int, weight_B=None) -> dict:
  """Perplexity exp(H(p)) of the code histogram p, and how many codes are used at all."""
  one_hot = jax.nn.one_hot(codes_BQ, num_codes)
  w = jnp.ones(codes_BQ.shape[:1]) if weight_B is None else weight_B.astype(jnp.float32)
  counts = jnp.einsum("bqc,b->c", one_hot, w)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"code_perplexity": jnp.exp(entropy), "codes_used": jnp.sum(counts > 0).astype(jnp.float32)}


class VectorQuantizer(nn.Module):
  """x [B, Q, Z] -> (quantized z [B, Q, Z] (straight-through), codes int [B, Q], aux loss, metrics)."""
  num_codes: int
  code_dim: int
  commitment: float = 0.25
  entropy_weight: float = 0.0
  temperature: float = 0.1  # of the soft assignments the entropy bonus reads

  @nn.compact
  def __call__(self, x_BQZ, weight_B=None):
    chex.assert_axis_dimension(x_BQZ, -1, self.code_dim)
    codebook = self.param("codebook", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", None)),
                          (self.num_codes, self.code_dim))
    x, cb = l2_normalize(x_BQZ), l2_normalize(codebook)
    sim_BQC = jnp.einsum("bqz,cz->bqc", x, cb)
    codes_BQ = jnp.argmax(sim_BQC, axis=-1)
    q = cb[codes_BQ]
    w = jnp.ones(x.shape[:1]) if weight_B is None else weight_B.astype(jnp.float32)
    per_example = lambda e: jnp.sum(jnp.mean(e, axis=(1, 2)) * w) / jnp.maximum(w.sum(), 1.0)
    codebook_loss = per_example((jax.lax.stop_gradient(x) - q) ** 2)
    commit_loss = per_example((x - jax.lax.stop_gradient(q)) ** 2)
    loss = codebook_loss + self.commitment * commit_loss
    metrics = dict(code_usage(codes_BQ, self.num_codes, weight_B), vq_loss=loss)
    if self.entropy_weight:
      soft = jax.nn.softmax(sim_BQC / self.temperature, axis=-1)
      mean = jnp.einsum("bqc,b->c", soft, w) / jnp.maximum(w.sum() * x.shape[1], 1.0)
      batch_entropy = -jnp.sum(mean * jnp.log(mean + 1e-9))
      loss = loss - self.entropy_weight * batch_entropy
      metrics["soft_code_entropy"] = batch_entropy
    return x + jax.lax.stop_gradient(q - x), codes_BQ, loss, metrics


class FiniteScalarQuantizer(nn.Module):
  """x [B, Q, Z] -> (z [B, Q, Z] on the grid, scaled to [-1, 1] (straight-through), codes int [B, Q]
  in [0, prod(levels)), aux loss 0, metrics); Z = len(levels), each level >= 2."""
  levels: tuple

  def bound(self, x_BQZ):
    """Per dim i, a value in (-L_i/2, L_i/2) whose rounding takes exactly L_i integer values
    (-(L-1)/2..(L-1)/2 for odd L, -L/2..L/2-1 for even L)."""
    lv = jnp.asarray(self.levels, jnp.float32)
    half = (lv - 1.0) * (1.0 + 1e-3) / 2.0
    offset = jnp.where(lv % 2 == 0, 0.5, 0.0)
    return jnp.tanh(x_BQZ + jnp.arctanh(offset / half)) * half - offset

  def codes_to_z(self, codes_BQ):
    """The grid point of each code, scaled as ``__call__``'s z: [B, Q] -> [B, Q, Z]."""
    lv = jnp.asarray(self.levels, jnp.int32)
    basis = jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.int32), lv[:-1]]))
    digits = (codes_BQ[..., None] // basis) % lv
    return (digits - lv // 2).astype(jnp.float32) / (lv // 2).astype(jnp.float32)

  def __call__(self, x_BQZ, weight_B=None):
    chex.assert_axis_dimension(x_BQZ, -1, len(self.levels))
    lv = jnp.asarray(self.levels, jnp.int32)
    bounded = self.bound(x_BQZ.astype(jnp.float32))
    grid = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)  # integers, straight-through
    basis = jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.int32), lv[:-1]]))
    codes_BQ = jnp.sum((jnp.round(bounded).astype(jnp.int32) + lv // 2) * basis, axis=-1)
    num_codes = 1
    for level in self.levels:
      num_codes *= int(level)
    z = grid / (lv // 2).astype(jnp.float32)
    return z.astype(x_BQZ.dtype), codes_BQ, jnp.zeros((), jnp.float32), code_usage(codes_BQ, num_codes, weight_B)


class GaussianBottleneck(nn.Module):
  """x [B, Q, D] -> (z [B, Q, Z], None, KL loss, metrics); mu and log-variance from one dense layer."""
  code_dim: int
  dot_general: layers.DotGeneral = None

  @nn.compact
  def __call__(self, x_BQD, weight_B=None, *, train: bool = False):
    stats = layers.logical_dense(2 * self.code_dim, ("embed", None), dot_general=self.dot_general,
                                 name="stats")(x_BQD)
    mu, logvar = jnp.split(stats, 2, axis=-1)
    logvar = jnp.clip(logvar, -10.0, 5.0)
    z = mu
    if train:
      z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("noise"), mu.shape)
    kl_B = 0.5 * jnp.sum(jnp.exp(logvar) + mu ** 2 - 1.0 - logvar, axis=(1, 2))
    w = jnp.ones(kl_B.shape) if weight_B is None else weight_B.astype(jnp.float32)
    kl = jnp.sum(kl_B * w) / jnp.maximum(w.sum(), 1.0)
    return z, None, kl, {"kl": kl, "latent_std": jnp.mean(jnp.exp(0.5 * logvar))}
