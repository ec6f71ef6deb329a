"""Family 2c, stage 2: a policy pretrained to predict latent actions from (o_t, instruction).

The frozen latent-action model (``lam/``, restored from a ``latent_action`` run
by ``train.init_from``; learning-rate multiplier 0) labels each window's
transition o_t -> o_t+k with its latent z; the policy predicts it from the
observation alone: the VLA's encoder and transformer (the same parameter paths
as ``families/vla.py``: ``encoder/``, ``backbone/``), Q latent queries and a
latent head (code logits, cross-entropy, for VQ; z regression, MSE, for the
continuous bottleneck). It trains on every row with a valid future frame, with
or without actions: all the video.

Stage 3 (``idm_wam.py:finetune_tiny``) is the plain VLA family restored from
this run by path: the encoder and backbone carry over, its action queries and
head start fresh and learn real actions from the few labelled demos.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wam_jax.models import encoders, latent_action, layers
from wam_jax.models.heads.regression import masked_mean


class LatentPolicy(nn.Module):
  config: object        # config.model (config.model.lam: the latent-action model's own config)
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  @staticmethod
  def check_config(model_cfg) -> None:
    latent_action.check_config(model_cfg.lam)

  def setup(self):
    cfg, data, lat = self.config, self.data_config, self.config.lam.latent
    self.lam = latent_action.LatentActionModel(cfg.lam, data, self.num_datasets, self.vocab_size, self.dot_general)
    self.encoder = encoders.ObservationEncoder(
        width=cfg.width, patch_size=cfg.patch_size, cameras=tuple(data.cameras),
        vocab_size=self.vocab_size, num_datasets=self.num_datasets, dot_general=self.dot_general,
        image=encoders.image_fields(cfg), text_pool=cfg.get("text_pool", False))
    self.latent_queries = self.param(
        "latent_queries", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
        (lat.num_tokens, cfg.width))
    self.backbone = layers.Transformer(cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.dropout, self.dot_general)
    self.latent_head = layers.logical_dense(lat.num_codes if latent_action.discrete(lat) else lat.code_dim,
                                            ("embed", None), dot_general=self.dot_general)
    self.ln_latent = layers.layer_norm()

  def _outputs(self, batch, train: bool):
    """Latent-head outputs [B, Q, num_codes] (VQ/FSQ code logits) or [B, Q, Z] from the observation only."""
    obs_BND, mask_BN = self.encoder(batch)
    b = obs_BND.shape[0]
    q_BQD = jnp.broadcast_to(self.latent_queries[None], (b,) + self.latent_queries.shape)
    x = self.backbone(jnp.concatenate([obs_BND, q_BQD], axis=1),
                      jnp.concatenate([mask_BN, jnp.ones(q_BQD.shape[:2], bool)], axis=1), train=train)
    return self.latent_head(self.ln_latent(x[:, -q_BQD.shape[1]:]))

  def __call__(self, batch, train: bool = True):
    valid_B = batch["future_mask"][:, 0]
    z, codes, _, _ = jax.tree.map(jax.lax.stop_gradient, self.lam.encode(batch, train=False))
    out = self._outputs(batch, train)
    metrics = {"loss_weight": valid_B.sum().astype(jnp.float32)}
    if codes is not None:
      per_BQ = optax.softmax_cross_entropy_with_integer_labels(out, codes)
      loss = masked_mean(jnp.mean(per_BQ, axis=1), valid_B)
      acc = masked_mean(jnp.mean(jnp.argmax(out, -1) == codes, axis=1).astype(jnp.float32), valid_B)
      metrics.update(latent_ce=loss, latent_accuracy=acc)
    else:
      loss = masked_mean(jnp.mean((out - z) ** 2, axis=(1, 2)), valid_B)
      metrics.update(latent_mse=loss)
    return loss, metrics

  def predict_latent_actions(self, batch):
    """Predicted latent actions from the observation: codes int [B, Q] (VQ) or z [B, Q, Z]."""
    out = self._outputs(batch, train=False)
    return jnp.argmax(out, -1) if latent_action.discrete(self.config.lam.latent) else out

  def predict_actions(self, batch):
    raise ValueError("config.model.name='latent_policy' predicts latent actions, not robot actions: fine-tune it "
                     "on labelled demos (idm_wam.py:finetune_tiny, train.init_from=<this run>)")

  @nn.nowrap
  def lr_multipliers(self) -> tuple:
    """The latent-action model stays as restored."""
    return (("lam/.*", 0.0),)
