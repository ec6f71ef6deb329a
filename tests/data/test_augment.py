"""Augmentation: shared parameters across a sample's frames, identity exact."""

import numpy as np
import pytest
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


def test_shift_moves_the_frame_and_repeats_the_border():
  f = _frames(2, 8)
  out = augment.augment_frames(f, dict(shift=(2, -1), box=(0, 0, 8, 8), brightness=1.0, contrast=1.0,
                                       saturation=1.0))
  np.testing.assert_array_equal(out[:, 2:, :7], f[:, :6, 1:])  # content moved 2 down, 1 left
  np.testing.assert_array_equal(out[:, :2, :7], np.repeat(f[:, :1, 1:], 2, axis=1))  # top rows: the edge row
  np.testing.assert_array_equal(out[:, 2:, 7], f[:, :6, 7])  # right column: the edge column
  np.testing.assert_array_equal(augment.shift_frames(f, 0, 0), f)


def test_shift_only_config_draws_shifts_within_bounds_and_nothing_else():
  cfg = common.data_config().augment
  cfg.update(shift=3, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0)
  rng = np.random.default_rng(0)
  draws = [augment.sample_params(rng, cfg, 16, 16) for _ in range(200)]
  shifts = np.array([d["shift"] for d in draws])
  assert shifts.min() == -3 and shifts.max() == 3
  assert all(d["box"] == (0, 0, 16, 16) and d["brightness"] == d["contrast"] == d["saturation"] == 1.0 for d in draws)
  f = _frames(1, 16)
  d = next(d for d in draws if d["shift"] == (1, 2))
  np.testing.assert_array_equal(augment.augment_frames(f, d)[:, 1:, 2:], f[:, :15, :14])
  cfg.shift = 16
  with pytest.raises(ValueError, match="data.augment.shift=16"):
    augment.sample_params(rng, cfg, 16, 16)


def test_configs_without_a_shift_keep_their_random_stream():
  cfg = common.data_config().augment
  a = augment.sample_params(np.random.default_rng(5), cfg, 32, 32)
  rng = np.random.default_rng(5)  # the draws before this field existed: scale, ratio, y, x, jitter
  scale, ratio = rng.uniform(*cfg.crop_scale), np.exp(rng.uniform(np.log(cfg.crop_ratio[0]), np.log(cfg.crop_ratio[1])))
  assert a["shift"] == (0, 0)
  assert a["box"][2] == max(1, min(int(round(np.sqrt(1024 * scale / ratio))), 32))
