"""Frame conversions and image-quality metrics (PSNR, SSIM), jittable.

Frames live in three forms: uint8 [..., H, W, 3] (the batch), "signed" float
in [-1, 1] (what models see: ``encoders.patchify``'s scaling) and "unit"
float in [0, 1] (what the metrics compare). PSNR and SSIM are per image over
the trailing [H, W, C] axes, returning the leading shape.
"""

import jax.numpy as jnp
import numpy as np


def uint8_to_signed(frames):
  return frames.astype(jnp.float32) / 127.5 - 1.0


def signed_to_unit(x):
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def quantize(x):
  """[0, 1] floats rounded to the 256 levels of a uint8 frame (still float)."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0


def unit_to_uint8(x):
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def psnr(a_HWC, b_HWC, max_value: float = 1.0):
  """Peak signal-to-noise ratio in dB of images in [0, max_value]: [..., H, W, C] -> [...].

  Identical images give 10 log10(max^2 / 1e-10) = 100 dB, not infinity.
  """
  mse = jnp.mean((a_HWC.astype(jnp.float32) - b_HWC.astype(jnp.float32)) ** 2, axis=(-3, -2, -1))
  return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse, 1e-10))


def _gaussian_band(n: int, size: int, sigma: float) -> np.ndarray:
  """[n - size + 1, n]: row i is the normalized Gaussian window on pixels i..i+size-1 ('valid')."""
  g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
  g /= g.sum()
  band = np.zeros((n - size + 1, n), np.float32)
  for i in range(n - size + 1):
    band[i, i:i + size] = g
  return band


def ssim(a_HWC, b_HWC, max_value: float = 1.0, window: int = 11, sigma: float = 1.5):
  """Structural similarity (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, K1 0.01,
  K2 0.03, 'valid' windows), averaged over positions and channels: [..., H, W, C] -> [...].

  The Gaussian filter is separable: two banded matmuls over H and W.
  """
  h, w = a_HWC.shape[-3:-1]
  window = min(window, h, w)
  gh = jnp.asarray(_gaussian_band(h, window, sigma))
  gw = jnp.asarray(_gaussian_band(w, window, sigma))

  def blur(x):
    return jnp.einsum("ih,...hwc,jw->...ijc", gh, x, gw)

  a, b = a_HWC.astype(jnp.float32), b_HWC.astype(jnp.float32)
  c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a ** 2
  var_b = blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return jnp.mean(s, axis=(-3, -2, -1))

