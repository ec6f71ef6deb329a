"""Frame augmentation in numpy: random shift, random resized crop, colour jitter.

``shift=s`` (pixels) translates the frame by up to s pixels each way, the border repeated (DrQ's
pad-and-crop): objects move, their size does not. ``crop_scale`` / ``crop_ratio`` crop and resize
back (objects move and change size); ``crop_scale=(1, 1), crop_ratio=(1, 1)`` leaves that step out.

One draw of parameters per (sample, camera) is applied to every frame of that
camera in the sample, history and future alike, so motion between frames is
not confused with augmentation. Different cameras get independent draws (they
are different viewpoints). Training only: eval pipelines never call this.
"""

import numpy as np
from PIL import Image

from wam_jax.data import batch as batch_lib

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def sample_params(rng: np.random.Generator, aug_cfg, height: int, width: int) -> dict:
  """One draw: shift (dy, dx), crop box (y, x, h, w) in pixels and jitter factors.

  The shift is drawn only when ``aug_cfg.shift > 0``, so configs without it keep their random stream."""
  max_shift = int(aug_cfg.get("shift", 0))
  if max_shift < 0 or max_shift >= min(height, width):
    raise ValueError(f"data.augment.shift={max_shift} must be in [0, {min(height, width)}) for {height}x{width} frames")
  shift = tuple(int(v) for v in rng.integers(-max_shift, max_shift + 1, 2)) if max_shift else (0, 0)
  area = height * width
  lo_s, hi_s = aug_cfg.crop_scale
  lo_r, hi_r = aug_cfg.crop_ratio
  scale = rng.uniform(lo_s, hi_s)
  ratio = np.exp(rng.uniform(np.log(lo_r), np.log(hi_r)))
  h = int(round(np.sqrt(area * scale / ratio)))
  w = int(round(np.sqrt(area * scale * ratio)))
  h, w = max(1, min(h, height)), max(1, min(w, width))
  y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
  def factor(amount):
    return float(rng.uniform(1 - amount, 1 + amount)) if amount else 1.0
  return dict(shift=shift, box=(int(y), int(x), h, w), brightness=factor(aug_cfg.brightness),
              contrast=factor(aug_cfg.contrast), saturation=factor(aug_cfg.saturation))


def color_matrix(params: dict) -> np.ndarray:
  """float32 [3, 3] M with jitter(x) = M @ x + offset for an RGB pixel x.

  brightness b: x -> b x; contrast c: x -> c x + (1 - c) mean_gray;
  saturation s: x -> s x + (1 - s) gray(x). Composed in that order they are
  one linear map; the offset (1 - c) b mean_gray is the same on every channel.
  """
  s = params["saturation"]
  sat = s * np.eye(3, dtype=np.float32) + (1 - s) * np.outer(np.ones(3, np.float32), _GRAY)
  return params["contrast"] * params["brightness"] * sat


def shift_frames(frames_NHWC: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """[N, H, W, C] -> the same frames moved by (dy, dx) pixels (down, right), the border repeated."""
  if not dy and not dx:
    return frames_NHWC
  n, h, w, _ = frames_NHWC.shape
  p = max(abs(dy), abs(dx))
  padded = np.pad(frames_NHWC, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
  return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def augment_frames(frames_NHWC: np.ndarray, params: dict) -> np.ndarray:
  """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3], same params on every frame.

  Shift (``shift_frames``), then crop + bilinear resize back to [H, W] per frame, then the colour jitter as
  one affine colour transform over all N frames (contrast pivots on the mean
  gray of all N crops, so every frame gets identical parameters). Both steps
  run in PIL's C code (GIL released), ~100 us per 64x64 frame on this CPU.
  Clipping happens once, at the end.
  """
  frames_NHWC = shift_frames(frames_NHWC, *params.get("shift", (0, 0)))
  n, h, w, _ = frames_NHWC.shape
  y0, x0, ch, cw = params["box"]
  crops = np.concatenate([
      np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))
      for f in frames_NHWC])                                           # [N*H, W, 3]
  mean_gray = float(crops[::4, ::4].reshape(-1, 3).mean(0) @ _GRAY)   # subsampled
  offset = (1 - params["contrast"]) * params["brightness"] * mean_gray
  affine = np.concatenate([color_matrix(params), np.full((3, 1), offset, np.float32)], 1)
  out = Image.fromarray(crops).convert("RGB", tuple(affine.ravel().tolist()))
  return np.asarray(out).reshape(n, h, w, 3)


class Augment:
  """``random_map`` transform on one window dict (see batch.py keys)."""

  def __init__(self, aug_cfg, cameras):
    self.aug_cfg = aug_cfg
    self.cameras = tuple(cameras)

  def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
    sample = dict(sample)
    for cam in self.cameras:
      hist_key, fut_key = batch_lib.image_key(cam), batch_lib.future_image_key(cam)
      hist, fut = sample[hist_key], sample[fut_key]
      params = sample_params(rng, self.aug_cfg, *hist.shape[1:3])
      if not hist.any() and not fut.any():
        continue  # Absent camera (zeros): keep it zeros.
      out = augment_frames(np.concatenate([hist, fut]), params)
      sample[hist_key], sample[fut_key] = out[:len(hist)], out[len(hist):]
    return sample
