"""Family 2a: the inverse-dynamics model (IDM), o_t, o_t+k -> a_t..a_t+K-1.

A ``transition.TransitionEncoder`` over the history frames, the future frame
the window carries at t+k (``data.future_offset``), proprio and (optionally) the
instruction; K = ``data.action_horizon`` action queries feed any action head
(``config.model.head``). Set K = k: the two frames then pin down the chunk
between them (a longer chunk asks for actions past the future frame).

Training rows whose future frame lies past the episode end (``future_mask``
False: the window clamps it to the last frame) carry no valid transition and
are left out of the loss. Action-free rows (all-False ``action_mask``) add
nothing, so an IDM trains on labelled demos only.

The IDM is not a closed-loop policy: ``predict_actions`` needs the future
frame in the batch (``future_image_<cam>``). ``scripts/label_video.py`` uses it
to pseudo-label action-free video (``wam_jax/data/pseudo_label.py``).
"""

import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import encoders, layers, transition
from wam_jax.models.heads import build_head
from wam_jax.models.heads.regression import action_errors


class IDM(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    cfg, data = self.config, self.data_config
    self.encoder = transition.TransitionEncoder(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
        patch_size=cfg.patch_size, cameras=tuple(data.cameras), num_queries=data.action_horizon,
        vocab_size=self.vocab_size, num_datasets=self.num_datasets, use_proprio=cfg.use_proprio,
        use_language=cfg.use_language, frame_difference=cfg.frame_difference,
        use_future_proprio=cfg.get("use_future_proprio", False), dropout=cfg.dropout,
        dot_general=self.dot_general, image=encoders.image_fields(cfg))
    self.head = build_head(cfg.head, horizon=data.action_horizon, action_dim=data.action_dim,
                           dot_general=self.dot_general)

  def __call__(self, batch, train: bool = True):
    """Training loss: (scalar, metrics); validation adds the sampled chunk's error per chunk step."""
    mask_BK = batch["action_mask"] & batch["future_mask"][:, :1]
    mask_BKA = mask_BK[:, :, None] & batch["action_dim_mask"][:, None, :]
    readout_BKD = self.encoder(batch, train=train)
    loss, metrics = self.head(readout_BKD, batch["actions"], mask_BKA, train=train)
    if not train:  # what labelling gets: the sampled chunk, its error at each step t+i of the chunk
      pred_BKA = self.head.sample(readout_BKD)
      metrics = dict(metrics, **{f"sampled_{k}": v for k, v in action_errors(pred_BKA, batch["actions"], mask_BKA).items()})
      for i in range(pred_BKA.shape[1]):
        metrics[f"sampled_action_l1_step{i}"] = action_errors(pred_BKA[:, i:i + 1], batch["actions"][:, i:i + 1],
                                                              mask_BKA[:, i:i + 1])["action_l1"]
    return loss, metrics

  def predict_actions(self, batch):
    """Normalized chunk [B, K, A] that takes o_t to the batch's future frame o_t+k."""
    missing = [f"future_image_{c}" for c in self.data_config.cameras if f"future_image_{c}" not in batch]
    if missing or "future_mask" not in batch:
      raise ValueError(f"config.model.name='idm' infers actions from (o_t, o_t+k): the batch lacks "
                       f"{missing or ['future_mask']} (an IDM labels transitions, it is not a closed-loop policy; "
                       "see scripts/label_video.py)")
    return self.head.sample(self.encoder(batch, train=False))
