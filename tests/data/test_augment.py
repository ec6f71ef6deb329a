"""Augmentation: shared parameters across a sample's frames, identity exact."""

import numpy as np
from PIL import Image

from experiments.configs import common
from wam_jax.data import augment


def _frames(n=3, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_identity_params_are_exact():
  f = _frames()
  p = dict(box=(0, 0, 32, 32), brightness=1.0, contrast=1.0, saturation=1.0)
  np.testing.assert_array_equal(augment.augment_frames(f, p), f)


def test_crop_matches_pil_bilinear():
  f = _frames()
  p = dict(box=(2, 3, 25, 28), brightness=1.0, contrast=1.0, saturation=1.0)
  want = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BILINEAR, box=(3, 2, 31, 27)))
                   for x in f])
  np.testing.assert_array_equal(augment.augment_frames(f, p), want)


def test_same_params_across_history_and_future():
  f = np.repeat(_frames(1), 3, axis=0)  # Identical frames in -> identical frames out.
  sample = {"image_primary": f[:2], "future_image_primary": f[2:],
            "image_wrist": np.zeros_like(f[:2]), "future_image_wrist": np.zeros_like(f[2:])}
  aug = augment.Augment(common.data_config().augment, ("primary", "wrist"))
  out = aug(sample, np.random.default_rng(0))
  frames = np.concatenate([out["image_primary"], out["future_image_primary"]])
  assert frames.dtype == np.uint8 and frames.shape == f.shape
  assert not np.array_equal(frames[0], f[0])  # Something changed ...
  np.testing.assert_array_equal(frames[0], frames[1])  # ... the same way on every frame.
  np.testing.assert_array_equal(frames[0], frames[2])
  assert not out["image_wrist"].any()  # Absent (zero) cameras stay zero.


def test_brightness_only_scales():
  f = np.full((1, 8, 8, 3), 100, np.uint8)
  p = dict(box=(0, 0, 8, 8), brightness=1.2, contrast=1.0, saturation=1.0)
  assert (augment.augment_frames(f, p) == 120).all()
