"""L1 / MSE regression of the action chunk from per-step readout tokens."""

import chex
import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import layers


def masked_mean(x, mask):
  mask = mask.astype(x.dtype)
  return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def action_errors(pred_BKA, actions_BKA, mask_BKA) -> dict:
  """Masked L1 and MSE of a predicted chunk: the numbers every head reports in validation."""
  err = pred_BKA - actions_BKA
  return {"action_l1": masked_mean(jnp.abs(err), mask_BKA), "action_mse": masked_mean(err ** 2, mask_BKA)}


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
    chex.assert_rank(readout_BKD, 3)
    chex.assert_shape([actions_BKA, mask_BKA], readout_BKD.shape[:2] + (self.action_dim,))
    metrics = action_errors(self.sample(readout_BKD), actions_BKA, mask_BKA)
    loss = metrics["action_l1"] if self.loss_type == "l1" else metrics["action_mse"]
    return loss, dict(metrics, loss_weight=mask_BKA.sum().astype(jnp.float32))
