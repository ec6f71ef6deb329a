"""Family 2c, stage 1: the latent-action model trained on action-free video (``models/latent_action.py``).

Its parameters live under ``lam/``, where ``latent_policy`` (stage 2) finds them
through ``train.init_from``. Validation reports the decoder error with the true
latent (``recon_loss``) and with latents shuffled across the batch
(``shuffled_z_loss``), copying the last frame (``copy_last_loss``), and, for a
VQ bottleneck, ``code_perplexity`` / ``codes_used``.
"""

import flax.linen as nn

from wam_jax.models import latent_action, layers


class LatentActionFamily(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  @staticmethod
  def check_config(model_cfg) -> None:
    latent_action.check_config(model_cfg)

  def setup(self):
    self.lam = latent_action.LatentActionModel(self.config, self.data_config, self.num_datasets, self.vocab_size,
                                               self.dot_general)

  def __call__(self, batch, train: bool = True):
    return self.lam(batch, train=train)

  def predict_latent_actions(self, batch):
    """Latent actions of the batch's transitions: codes int [B, Q] (VQ) or z [B, Q, Z] (continuous)."""
    z, codes, _, _ = self.lam.encode(batch)
    return z if codes is None else codes

  def predict_actions(self, batch):
    raise ValueError("config.model.name='latent_action' is not a policy: pretrain a latent policy on it "
                     "(idm_wam.py:latent_policy_tiny), then fine-tune to actions (idm_wam.py:finetune_tiny)")
