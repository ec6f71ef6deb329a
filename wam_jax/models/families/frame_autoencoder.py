"""The frame autoencoder as a trainable family: the first stage of the latent-space video WAM.

Trained by the shared trainer on every frame source of the mixture (demos and
action-free video alike: it never reads actions), then handed on by parameter
path: its parameters live under ``autoencoder/`` exactly as in ``VideoWAM``,
so ``train.init_from=<this run>`` restores them there.

Training frames per window: the last history frame and the future frames of
every camera (frames clamped at an episode's end are real frames too). Loss:
L1 on [-1, 1] pixels. Validation adds reconstruction PSNR/SSIM on the val
split's held-out episodes.
"""

import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import frame_metrics, layers
from wam_jax.models.frame_autoencoder import FrameAutoencoder


class FrameAutoencoderModel(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    ae = self.config.autoencoder
    self.autoencoder = FrameAutoencoder.from_config(ae)

  def _frames(self, batch):
    """uint8 [B, C, 1 + F, H, W, 3]: the last history frame and the future frames per camera."""
    return jnp.stack([jnp.concatenate([batch["image_" + c][:, -1:], batch["future_image_" + c]], axis=1)
                      for c in self.data_config.cameras], axis=1)

  def __call__(self, batch, train: bool = True):
    frames = self._frames(batch)
    flat = frames.reshape((-1,) + frames.shape[-3:])
    self.autoencoder.latent_shape(*flat.shape[1:3])  # a clear error for an indivisible image size
    recon = self.autoencoder(flat)
    target = frame_metrics.uint8_to_signed(flat)
    loss = jnp.mean(jnp.abs(recon - target))
    metrics = {"recon_l1": loss, "loss_weight": jnp.asarray(flat.shape[0], jnp.float32)}
    if not train:
      recon01, target01 = frame_metrics.signed_to_unit(recon), frame_metrics.signed_to_unit(target)
      metrics.update(recon_psnr=jnp.mean(frame_metrics.psnr(recon01, target01)),
                     recon_ssim=jnp.mean(frame_metrics.ssim(recon01, target01)))
    return loss, metrics

  def predict_frames(self, batch):
    """Reconstructions of the future frames (what the summaries show beside the real ones):
    {camera: uint8 [B, F, H, W, 3]}."""
    out = {}
    for cam in self.data_config.cameras:
      fut = batch["future_image_" + cam]
      recon = self.autoencoder(fut.reshape((-1,) + fut.shape[2:]))
      out[cam] = frame_metrics.unit_to_uint8(frame_metrics.signed_to_unit(recon)).reshape(fut.shape)
    return out

  def predict_actions(self, batch):
    raise ValueError("config.model.name='frame_autoencoder' is not a policy: it encodes frames for "
                     "video_wam (config.model.frames='latents' with train.init_from=<this run>)")
