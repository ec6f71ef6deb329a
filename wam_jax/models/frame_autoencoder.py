"""A small convolutional frame autoencoder: the world model's optional latent frame space.

uint8 frames [N, H, W, 3] <-> continuous latents [N, H/2^S, W/2^S, C]
(S = len(channels), C = latent_channels; 64 px, channels (32, 64), C 8 ->
16 x 16 x 8 = 2,048 numbers for 12,288 pixels).

Continuous latents, not a VQ codebook: both objectives of the video predictor
(regression and flow matching) work on continuous tokens, and a codebook adds
what a small CPU run cannot afford to tune (commitment loss, dead codes,
codebook size). Each latent vector is divided by its RMS over channels
(no parameters): latents have unit scale by construction, the same scale as
the flow's Gaussian noise, with no KL weight to tune.

Encoder: (optionally ``patch`` x ``patch`` pixel blocks to channels, then) a 3x3 conv stem; per stage a stride-2 4x4 conv and a residual 3x3
conv (GELU); a 1x1 conv to C channels; the RMS normalization. Decoder: a 1x1
conv up; per stage (reversed) a residual 3x3 conv, nearest 2x upsampling and a
3x3 conv; a 3x3 conv to RGB in [-1, 1] (unclipped; callers clip; with ``patch``, to
patch x patch RGB blocks, then back to pixels).
Every kernel carries logical axis names (output channels on ``embed``).
"""

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import encoders, frame_metrics, layers


def _conv(features: int, size: int, names, stride: int = 1, name=None):
  return layers.Conv(features, (size, size), strides=stride, names=names, name=name)


HIDDEN = (None, None, None, "embed")     # [kh, kw, in, out]: output channels shardable
TO_SMALL = (None, None, "embed", None)   # convs to 3 (RGB) or C (latent) channels


def space_to_depth(x_NHWC, p: int):
  """[N, H, W, C] -> [N, H/p, W/p, p*p*C]: each p x p block of pixels becomes one vector
  (``encoders.to_patches``, kept on its grid)."""
  n, h, w, _ = x_NHWC.shape
  return encoders.to_patches(x_NHWC[:, None], p, "model.autoencoder.patch")[:, 0].reshape(n, h // p, w // p, -1)


def depth_to_space(x_NhwD, p: int):
  """The inverse of ``space_to_depth``: [N, h, w, p*p*C] -> [N, h*p, w*p, C] (``encoders.from_patches``)."""
  n, h, w, d = x_NhwD.shape
  return encoders.from_patches(x_NhwD.reshape(n, 1, h * w, d), p, h * p, w * p)[:, 0]


def downsample_factor(channels: Sequence[int], patch: int = 0) -> int:
  """Pixels per latent cell along each side: the pixel block (``patch``, 0 = none) x 2 per stage."""
  if patch < 0:
    raise ValueError(f"config.model.autoencoder.patch={patch}: 0 (off) or a factor >= 2")
  return max(patch, 1) * 2 ** len(channels)


class FrameAutoencoder(nn.Module):
  """``encode``: uint8 [N, H, W, 3] -> latents; ``decode``: latents -> float [N, H, W, 3] in ~[-1, 1].

  ``patch`` >= 2: the encoder starts from ``space_to_depth(frames, patch)`` and the decoder ends in
  ``depth_to_space`` (pixel shuffle), so no conv runs at full resolution (0: off).
  """
  channels: Sequence[int] = (32, 64)
  latent_channels: int = 8
  patch: int = 0

  @classmethod
  def from_config(cls, ae_cfg):
    """From ``config.model.autoencoder`` (configs written before ``patch`` existed: 0)."""
    return cls(tuple(ae_cfg.channels), ae_cfg.latent_channels, ae_cfg.get("patch", 0))

  def setup(self):
    ch = tuple(self.channels)
    if not ch:
      raise ValueError("config.model.autoencoder.channels must name at least one stage")
    self.stem = _conv(ch[0], 3, HIDDEN)
    self.down = [_conv(c, 4, HIDDEN, stride=2) for c in ch]
    self.enc_res = [_conv(c, 3, HIDDEN) for c in ch]
    self.to_latent = _conv(self.latent_channels, 1, TO_SMALL)
    self.from_latent = _conv(ch[-1], 1, HIDDEN)
    rev = ch[::-1]
    self.dec_res = [_conv(c, 3, HIDDEN) for c in rev]
    self.up = [_conv(c, 3, HIDDEN) for c in rev[1:] + (ch[0],)]
    self.to_rgb = _conv(3 * self._p ** 2, 3, TO_SMALL)

  @property
  def _p(self) -> int:  # the pixel block side, 1 when off (a negative patch raises)
    return downsample_factor((), self.patch)

  @property
  def downsample(self) -> int:
    return downsample_factor(self.channels, self.patch)

  def latent_shape(self, height: int, width: int) -> tuple:
    f = self.downsample
    if height % f or width % f:
      raise ValueError(f"image size {height}x{width} is not divisible by 2^len(config.model.autoencoder"
                       f".channels)={f}")
    return (height // f, width // f, self.latent_channels)

  def encode(self, frames_NHWC):
    """uint8 [N, H, W, 3] -> latents [N, H/f, W/f, C] with unit RMS over C."""
    chex.assert_rank(frames_NHWC, 4)
    chex.assert_axis_dimension(frames_NHWC, 3, 3)
    x = frame_metrics.uint8_to_signed(frames_NHWC)
    if self._p > 1:
      x = space_to_depth(x, self._p)
    x = nn.gelu(self.stem(x))
    for down, res in zip(self.down, self.enc_res):
      x = nn.gelu(down(x))
      x = x + nn.gelu(res(x))
    z = self.to_latent(x)
    return z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + 1e-6)

  def decode(self, latents_NhwC):
    """latents [N, h, w, C] -> signed frames float [N, h*f, w*f, 3]."""
    chex.assert_rank(latents_NhwC, 4)
    chex.assert_axis_dimension(latents_NhwC, 3, self.latent_channels)
    x = nn.gelu(self.from_latent(latents_NhwC))
    for res, up in zip(self.dec_res, self.up):
      x = x + nn.gelu(res(x))
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = nn.gelu(up(x))
    x = self.to_rgb(x)
    return depth_to_space(x, self._p) if self._p > 1 else x

  def __call__(self, frames_NHWC):
    """Reconstruction: uint8 [N, H, W, 3] -> signed float [N, H, W, 3]."""
    return self.decode(self.encode(frames_NHWC))

