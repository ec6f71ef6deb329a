"""VLA baseline: image history + instruction + proprio -> action chunk.

The reference every WAM is compared with. Observation tokens (one patch
sequence per camera and history frame, proprio per step, instruction bytes,
dataset id) and K learned action-query tokens go through one bidirectional
transformer; the K query outputs condition the action head.
"""

import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import encoders, heads, layers
from wam_jax.models.heads import build_head


class VLA(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    cfg, data = self.config, self.data_config
    self.encoder = encoders.ObservationEncoder(
        width=cfg.width, patch_size=cfg.patch_size, cameras=tuple(data.cameras),
        vocab_size=self.vocab_size, num_datasets=self.num_datasets, dot_general=self.dot_general,
        image=encoders.image_fields(cfg), text_pool=cfg.get("text_pool", False))
    self.queries = self.param(
        "action_queries", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
        (data.action_horizon, cfg.width))
    self.backbone = layers.Transformer(cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.dropout, self.dot_general)
    self.head = build_head(cfg.head, horizon=data.action_horizon, action_dim=data.action_dim,
                           dot_general=self.dot_general)

  def readout(self, batch, train: bool):
    """Backbone features at the action-query positions: [B, K, D]."""
    obs_BND, mask_BN = self.encoder(batch)
    b = obs_BND.shape[0]
    q_BKD = jnp.broadcast_to(self.queries[None], (b,) + self.queries.shape)
    x = jnp.concatenate([obs_BND, q_BKD], axis=1)
    mask = jnp.concatenate([mask_BN, jnp.ones(q_BKD.shape[:2], bool)], axis=1)
    x = self.backbone(x, mask, train=train)
    return x[:, -q_BKD.shape[1]:]

  def __call__(self, batch, train: bool = True):
    """Training loss: (scalar, metrics)."""
    return heads.chunk_loss(self.head, self.readout(batch, train), batch, train=train)

  def predict_actions(self, batch):
    """Normalized action chunk [B, K, A]."""
    return self.head.sample(self.readout(batch, train=False))
