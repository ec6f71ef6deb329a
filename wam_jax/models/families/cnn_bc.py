"""The protocol's reference point as a model of the stack: a plain image behaviour-cloning CNN.

shared/PROTOCOL.md quotes "a small CNN on the 64x64 view + proprio + task embedding, L1 on a chunk
of 8" at roughly three quarters of MT10 with 20 demos per task. This family is that network, on
the project's data windows, heads, trainer and evaluator, so the VLA baseline can be held against
it at equal demonstrations and compute (issue 15, "baseline quality").

Per camera and history frame: ``conv`` 3x3 stride-2 convolutions + GELU ([S, S, 3] -> [S/2^L,
S/2^L, C_L]), flattened (positions stay where they are: no pooling) and projected to ``width``.
Proprio per step, the instruction (mean of its byte embeddings: a task embedding that also reads
unseen wordings) and the dataset id are projected to ``width`` too; their concatenation goes
through a ``depth``-layer GELU MLP, whose output is read out as K = action_horizon feature
vectors [B, K, width] for the configured action head.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import encoders, heads, layers
from wam_jax.models.heads import build_head


class CNNBC(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    cfg, data = self.config, self.data_config
    self.head = build_head(cfg.head, horizon=data.action_horizon, action_dim=data.action_dim,
                           dot_general=self.dot_general)

  def _dense(self, features, names, name):
    return layers.logical_dense(features, names, dot_general=self.dot_general, name=name)

  @nn.compact
  def readout(self, batch, train: bool):
    """Features [B, K, width] for the head's K chunk steps."""
    del train
    cfg, data = self.config, self.data_config
    b = batch["proprio"].shape[0]
    feats = []
    for cam in data.cameras:
      frames_BTHWC = batch[f"image_{cam}"]
      chex.assert_rank(frames_BTHWC, 5)
      _, t, h, w, c = frames_BTHWC.shape
      x = encoders.to_signed_unit(frames_BTHWC).reshape(b * t, h, w, c)
      x = encoders.conv_stem(x, tuple(cfg.conv), prefix=f"{cam}_conv")
      x = x.reshape(b, t, -1) * batch["history_mask"][:, :, None]  # padded history frames -> 0
      feats.append(self._dense(cfg.width, ("mlp", "embed"), f"{cam}_proj")(x).reshape(b, -1))
    feats.append(self._dense(cfg.width, (None, "embed"), "proprio")(
        (batch["proprio"] * batch["history_mask"][:, :, None]).reshape(b, -1)))
    emb = nn.Embed(self.vocab_size, cfg.width, name="text",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    feats.append(encoders.masked_mean(emb(batch["language_tokens"]), batch["language_mask"]))
    feats.append(nn.Embed(self.num_datasets, cfg.width, name="dataset",
                          embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")))(
                              batch["dataset_id"]))
    x = jnp.concatenate(feats, axis=-1)
    for i in range(cfg.depth):
      x = nn.gelu(self._dense(cfg.mlp_dim, ("embed", "mlp") if i == 0 else (None, "mlp"), f"mlp_{i}")(x))
    k = data.action_horizon
    out_BKD = self._dense(k * cfg.width, ("mlp", "embed"), "readout")(x).reshape(b, k, cfg.width)
    chex.assert_shape(out_BKD, (b, k, cfg.width))
    return out_BKD

  def __call__(self, batch, train: bool = True):
    """Training loss: (scalar, metrics)."""
    return heads.chunk_loss(self.head, self.readout(batch, train), batch, train=train)

  def predict_actions(self, batch):
    """Normalized action chunk [B, K, A]."""
    return self.head.sample(self.readout(batch, train=False))
