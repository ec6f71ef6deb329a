"""L1 / MSE regression of the action chunk from per-step readout tokens."""

import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import layers


def masked_mean(x, mask):
  mask = mask.astype(x.dtype)
  return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class RegressionHead(nn.Module):
  horizon: int
  action_dim: int
  loss_type: str = "l1"

  def setup(self):
    self.norm = layers.layer_norm()
    self.proj = layers.logical_dense(self.action_dim, ("embed", "action"), name="proj")

  def sample(self, readout_BKD):
    """[B, K, D] -> normalized actions [B, K, A]."""
    return self.proj(self.norm(readout_BKD))

  def __call__(self, readout_BKD, actions_BKA, mask_BKA, train: bool = True):
    pred_BKA = self.sample(readout_BKD)
    err = pred_BKA - actions_BKA
    l1 = masked_mean(jnp.abs(err), mask_BKA)
    mse = masked_mean(err ** 2, mask_BKA)
    loss = l1 if self.loss_type == "l1" else mse
    return loss, {"action_l1": l1, "action_mse": mse, "loss_weight": mask_BKA.sum().astype(jnp.float32)}
