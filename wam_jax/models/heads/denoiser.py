"""The denoiser trunk and training loop shared by the diffusion and flow heads.

Both heads learn a network ``f(x_t, t, condition)`` over the K action tokens of
a chunk: only the corruption of the clean chunk (which time, which target) and
the sampling loop differ, and those are the subclass's three methods:

  draw_time(rng, B) -> t_B                       training time per example
  corrupt(x0_BKA, eps_BKA, t_B) -> (x_t, target, tau_B)   tau in [0, 1] is what the net sees
  sample(readout_BKD) -> actions_BKA             a jitted loop of num_sampling_steps net calls

The net (``Denoiser``) embeds the noisy chunk, adds a per-step condition
projected from the backbone readout and a sinusoidal time embedding, then runs
either a few pre-LN transformer blocks over the K tokens (``transformer``: the
steps of a chunk see each other, so one chunk commits to one mode) or a
residual MLP over the flattened chunk (``mlp``).
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import layers
from wam_jax.models.heads import checks
from wam_jax.models.heads.regression import action_errors, masked_mean

DENOISERS = ("transformer", "mlp")


def timestep_embedding(tau_B, dim: int, max_period: float = 10_000.0):
  """tau in [0, 1], [B] -> [B, dim] sin/cos features (tau scaled by 1000, as DDPM's integer steps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * tau_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Denoiser(nn.Module):
  """f(x_t [B, K, A], tau [B], condition) -> [B, K, A].

  ``condition(readout_BKD)`` is computed once per chunk (outside the sampling
  loop); ``__call__`` is the per-step network.
  """
  kind: str
  horizon: int
  action_dim: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    k, a, w, dg = self.horizon, self.action_dim, self.width, self.dot_general
    self.cond_norm = layers.layer_norm()
    self.time_in = layers.logical_dense(self.mlp_dim, (None, "mlp"), dot_general=dg)
    self.time_out = layers.logical_dense(w, ("mlp", "embed"), dot_general=dg)
    if self.kind == "transformer":
      self.cond_proj = layers.logical_dense(w, (None, "embed"), dot_general=dg)
      self.x_in = layers.logical_dense(w, ("action", "embed"), dot_general=dg)
      self.pos = self.param("pos", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
                            (k, w))
      self.trunk = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, 0.0, dg)
      self.out = layers.logical_dense(a, ("embed", "action"), dot_general=dg)
    elif self.kind == "mlp":
      self.cond_proj = layers.logical_dense(w, ("length", None, "embed"), axis=(-2, -1), dot_general=dg)
      self.x_in = layers.logical_dense(w, ("length", "action", "embed"), axis=(-2, -1), dot_general=dg)
      self.norms = [layers.layer_norm() for _ in range(self.depth)]
      self.blocks = [layers.MlpBlock(self.mlp_dim, 0.0, dg) for _ in range(self.depth)]
      self.final_norm = layers.layer_norm()
      self.out = layers.logical_dense((k, a), ("embed", "length", "action"), dot_general=dg)
    else:
      raise ValueError(f"denoiser={self.kind!r} is not one of {list(DENOISERS)}")

  def condition(self, readout_BKD):
    """[B, K, D] -> [B, K, W] (transformer) or [B, W] (mlp)."""
    return self.cond_proj(self.cond_norm(readout_BKD))

  def __call__(self, x_BKA, tau_B, cond):
    time_BW = self.time_out(nn.silu(self.time_in(timestep_embedding(tau_B, self.width))))
    if self.kind == "transformer":
      h_BKW = self.x_in(x_BKA) + cond + self.pos[None] + time_BW[:, None]
      return self.out(self.trunk(h_BKW, None, train=False))
    h_BW = self.x_in(x_BKA) + cond + time_BW
    for norm, block in zip(self.norms, self.blocks):
      h_BW = h_BW + block(norm(h_BW), train=False)
    return self.out(self.final_norm(h_BW))


def check_denoiser_fields(cfg, prefix: str) -> None:
  checks.choice(prefix, cfg, "denoiser", DENOISERS)
  checks.int_range(prefix, cfg, "width", 2, 8192)
  checks.int_range(prefix, cfg, "depth", 1, 64)
  checks.int_range(prefix, cfg, "num_heads", 1, 128)
  checks.int_range(prefix, cfg, "mlp_dim", 1, 65536)
  checks.int_range(prefix, cfg, "noise_samples", 1, 64)
  checks.int_range(prefix, cfg, "num_sampling_steps", 1, 100)
  if cfg["width"] % 2:
    raise ValueError(f"{prefix}.width={cfg['width']} must be even (sin/cos time embedding)")
  if cfg["denoiser"] == "transformer":
    checks.divisible(prefix, cfg, "width", "num_heads")


class DenoisingHead(nn.Module):
  """Training loss shared by diffusion and flow: same interface as RegressionHead.

  ``__call__(readout_BKD, actions_BKA, mask_BKA, train) -> (loss, metrics)``:
  masked MSE between the net's output and the subclass's target, over
  ``noise_samples`` independent (time, noise) draws per example (the readout
  is computed once). Masked entries of the clean chunk are replaced by 0
  before corruption, so their values cannot reach the loss. Outside training
  (validation) the metrics also hold ``action_l1``/``action_mse`` of a
  sampled chunk, comparable with the regression heads' numbers.
  """
  horizon: int
  action_dim: int
  dot_general: layers.DotGeneral = None
  num_sampling_steps: int = 10
  noise_samples: int = 1
  denoiser: str = "transformer"
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256

  def setup(self):
    self.net = Denoiser(self.denoiser, self.horizon, self.action_dim, self.width, self.depth,
                        self.num_heads, self.mlp_dim, self.dot_general)

  # -- subclass API -------------------------------------------------------------
  def draw_time(self, rng, batch: int):
    raise NotImplementedError

  def corrupt(self, x0_BKA, eps_BKA, t_B):
    raise NotImplementedError

  def sample(self, readout_BKD):
    raise NotImplementedError

  # -- shared -------------------------------------------------------------------
  def denoise(self, x_t_BKA, tau_B, readout_BKD):
    """One net call [B, K, A] with its own readout [B, K, D]: for a backbone that itself sees
    x_t and re-reads it every step (``families/joint_wam.py``, decoupled mode)."""
    self.check_shapes(readout_BKD)
    return self.net(x_t_BKA, tau_B, self.net.condition(readout_BKD))

  def check_shapes(self, readout_BKD, actions_BKA=None, mask_BKA=None):
    chex.assert_rank(readout_BKD, 3)
    b = readout_BKD.shape[0]
    chex.assert_axis_dimension(readout_BKD, 1, self.horizon)
    if actions_BKA is not None:
      chex.assert_shape([actions_BKA, mask_BKA], (b, self.horizon, self.action_dim))

  def initial_noise(self, batch: int):
    """The sampler's starting point [B, K, A], from the 'noise' rng."""
    return jax.random.normal(self.make_rng("noise"), (batch, self.horizon, self.action_dim))

  def __call__(self, readout_BKD, actions_BKA, mask_BKA, train: bool = True):
    self.check_shapes(readout_BKD, actions_BKA, mask_BKA)
    n = self.noise_samples
    cond = self.net.condition(readout_BKD)
    x0_BKA = jnp.where(mask_BKA, actions_BKA, 0.0)
    cond, x0_BKA, rep_mask = (jnp.concatenate([v] * n, axis=0) if n > 1 else v
                              for v in (cond, x0_BKA, mask_BKA))
    t_rng, eps_rng = jax.random.split(self.make_rng("noise"))
    b = x0_BKA.shape[0]
    t_B = self.draw_time(t_rng, b)
    eps_BKA = jax.random.normal(eps_rng, x0_BKA.shape)
    x_t, target_BKA, tau_B = self.corrupt(x0_BKA, eps_BKA, t_B)
    pred_BKA = self.net(x_t, tau_B, cond)
    loss = masked_mean((pred_BKA - target_BKA) ** 2, rep_mask)
    metrics = {"denoise_mse": loss, "loss_weight": mask_BKA.sum().astype(jnp.float32)}
    if not train and not self.is_initializing():
      metrics.update(action_errors(self.sample(readout_BKD), actions_BKA, mask_BKA))
    return loss, metrics
