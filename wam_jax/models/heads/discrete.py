"""Discrete action-token head (RT-2 / OpenVLA style binning).

Each normalized action entry is clipped to [-1, 1] and cut into ``num_bins``
uniform bins (a bin's value is its centre, so the binning alone costs at most
half a bin, 1/num_bins; the mean is reported as metrics['bin_error']).
Training is cross-entropy on the bin index. Decoding is ``argmax`` or
``sample`` (categorical at ``temperature``, from the 'noise' rng).

* parallel (default): one linear map from each of the K readout tokens to
  A x num_bins logits; all K x A tokens are decoded at once, independently.
* ``autoregressive``: the chunk is flattened to L = K x A tokens (step-major)
  and a small causal transformer predicts token l from tokens < l plus the
  readout of token l's step (teacher forcing in training); decoding is a jitted
  loop of L steps, so the dims of a chunk agree on one mode.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import layers
from wam_jax.models.heads import checks
from wam_jax.models.heads.regression import action_errors, masked_mean

DECODINGS = ("argmax", "sample")


def tokenize(actions, num_bins: int):
  """Normalized actions (any shape) -> int32 bin indices in [0, num_bins)."""
  u = (jnp.clip(actions, -1.0, 1.0) + 1.0) / 2.0
  return jnp.clip(jnp.floor(u * num_bins), 0, num_bins - 1).astype(jnp.int32)


def detokenize(tokens, num_bins: int):
  """Bin indices -> bin centres in (-1, 1)."""
  return (tokens.astype(jnp.float32) + 0.5) * (2.0 / num_bins) - 1.0


class DiscreteHead(nn.Module):
  horizon: int
  action_dim: int
  dot_general: layers.DotGeneral = None
  num_bins: int = 256
  decoding: str = "argmax"
  temperature: float = 1.0
  autoregressive: bool = False
  # The causal transformer of the autoregressive variant.
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256

  def setup(self):
    k, a, v, w, dg = self.horizon, self.action_dim, self.num_bins, self.width, self.dot_general
    self.norm = layers.layer_norm()
    if not self.autoregressive:
      self.logits_proj = layers.logical_dense((a, v), ("embed", "action", "vocab"), dot_general=dg)
      return
    self.cond_proj = layers.logical_dense(w, (None, "embed"), dot_general=dg)
    self.token_embed = nn.Embed(v + 1, w, embedding_init=nn.with_logical_partitioning(  # + BOS
        nn.initializers.normal(0.02), ("vocab", "embed")))
    self.pos = self.param("pos", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
                          (k * a, w))
    self.trunk = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, 0.0, dg)
    self.logits_out = layers.logical_dense(v, ("embed", "vocab"), dot_general=dg)

  # -- networks -----------------------------------------------------------------
  def ar_condition(self, readout_BKD):
    """[B, K, D] -> per-token condition [B, K*A, W] (token l gets its step's readout)."""
    c_BKW = self.cond_proj(self.norm(readout_BKD))
    return jnp.repeat(c_BKW, self.action_dim, axis=1)

  def ar_hidden(self, inputs_BL, cond_BLW):
    """Causal features [B, L, W]: position l sees input tokens 0..l (BOS, tok_0, ..., tok_{l-1})."""
    h = self.token_embed(inputs_BL) + self.pos[None] + cond_BLW
    return self.trunk(h, None, train=False, causal=True)

  def logits(self, readout_BKD, tokens_BKA):
    """Training logits [B, K, A, V] (teacher-forced when autoregressive)."""
    b, k, a = tokens_BKA.shape
    if not self.autoregressive:
      return self.logits_proj(self.norm(readout_BKD))
    flat_BL = tokens_BKA.reshape(b, k * a)
    inputs_BL = jnp.concatenate([jnp.full((b, 1), self.num_bins, jnp.int32), flat_BL[:, :-1]], axis=1)
    logits_BLV = self.logits_out(self.ar_hidden(inputs_BL, self.ar_condition(readout_BKD)))
    return logits_BLV.reshape(b, k, a, self.num_bins)

  def choose(self, logits, rng):
    if self.decoding == "argmax":
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits / self.temperature, axis=-1).astype(jnp.int32)

  # -- interface ----------------------------------------------------------------
  def __call__(self, readout_BKD, actions_BKA, mask_BKA, train: bool = True):
    chex.assert_rank(readout_BKD, 3)
    chex.assert_shape([actions_BKA, mask_BKA], readout_BKD.shape[:2] + (self.action_dim,))
    clean_BKA = jnp.where(mask_BKA, actions_BKA, 0.0)   # masked entries cannot reach the loss
    tokens_BKA = tokenize(clean_BKA, self.num_bins)
    logp = jax.nn.log_softmax(self.logits(readout_BKD, tokens_BKA).astype(jnp.float32), axis=-1)
    nll_BKA = -jnp.take_along_axis(logp, tokens_BKA[..., None], axis=-1)[..., 0]
    loss = masked_mean(nll_BKA, mask_BKA)
    metrics = {
        "token_ce": loss,
        "token_accuracy": masked_mean((jnp.argmax(logp, -1) == tokens_BKA).astype(jnp.float32), mask_BKA),
        "bin_error": masked_mean(jnp.abs(detokenize(tokens_BKA, self.num_bins) - clean_BKA), mask_BKA),
        "loss_weight": mask_BKA.sum().astype(jnp.float32)}
    if not train and not self.is_initializing():
      metrics.update(action_errors(self.sample(readout_BKD), actions_BKA, mask_BKA))
    return loss, metrics

  def sample(self, readout_BKD):
    """[B, K, D] -> normalized actions [B, K, A] (bin centres)."""
    chex.assert_rank(readout_BKD, 3)
    b, k, a = readout_BKD.shape[0], self.horizon, self.action_dim
    rng = self.make_rng("noise")
    if not self.autoregressive:
      return detokenize(self.choose(self.logits_proj(self.norm(readout_BKD)), rng), self.num_bins)
    cond_BLW = self.ar_condition(readout_BKD)
    length = k * a

    # tokens_BL1[:, 0] is BOS and tokens_BL1[:, l + 1] = token l; step i reads positions <= i only
    # (causal), so the BOS filler beyond is never seen.
    def step(i, tokens_BL1):
      h_BW = jax.lax.dynamic_index_in_dim(self.ar_hidden(tokens_BL1[:, :length], cond_BLW), i, axis=1,
                                          keepdims=False)
      logits_BV = self.logits_out(h_BW)  # only position i's logits
      tok_B = self.choose(logits_BV, jax.random.fold_in(rng, i))
      return jax.lax.dynamic_update_index_in_dim(tokens_BL1, tok_B, i + 1, axis=1)

    tokens_BL1 = jax.lax.fori_loop(0, length, step, jnp.full((b, length + 1), self.num_bins, jnp.int32))
    return detokenize(tokens_BL1[:, 1:].reshape(b, k, a), self.num_bins)


def check_config(cfg, prefix: str) -> None:
  checks.int_range(prefix, cfg, "num_bins", 2, 65536)
  checks.choice(prefix, cfg, "decoding", DECODINGS)
  checks.positive(prefix, cfg, "temperature")
  checks.int_range(prefix, cfg, "width", 1, 8192)
  checks.int_range(prefix, cfg, "depth", 1, 64)
  checks.int_range(prefix, cfg, "num_heads", 1, 128)
  checks.int_range(prefix, cfg, "mlp_dim", 1, 65536)
  if cfg["autoregressive"]:
    checks.divisible(prefix, cfg, "width", "num_heads")
