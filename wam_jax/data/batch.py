"""The one batch structure every model family consumes.

A *window* is one training sample cut from an episode at step ``t``. The data
pipeline yields batches of windows as a flat dict of numpy arrays (leading axis
``B``); the trainer shards every array over the ``batch`` logical axis. Letters:
B batch, T history length ``h``, F number of future frames, K action horizon
``H``, A action dim (padded to ``data.action_dim``), P proprio dim (padded to
``data.proprio_dim``), L text length, H/W/C image.

Key                     dtype    shape                 meaning
----------------------  -------  --------------------  ---------------------------------
image_<cam>             uint8    [B, T, H, W, 3]       history frames t-h+1..t (cam in
                                                       data.cameras: primary/secondary/wrist)
history_mask            bool     [B, T]                False for padded steps before episode start
future_image_<cam>      uint8    [B, F, H, W, 3]       frames at t+k, t+2k, ... (world prediction)
future_mask             bool     [B, F]                False where t+f*k is past the episode end
proprio                 float32  [B, T, P]             normalized proprio history (zero-padded dims)
future_proprio          float32  [B, F, P]             normalized proprio at t+k, t+2k, ... (as the future frames)
actions                 float32  [B, K, A]             normalized chunk a_t..a_{t+K-1}
action_mask             bool     [B, K]                False past episode end, all False if action-free
action_dim_mask         bool     [B, A]                True for real (unpadded) action dims
language_tokens         int32    [B, L]                tokenizer ids (0 = pad)
language_mask           bool     [B, L]                True for real tokens
dataset_id              int32    [B]                   index into data.mixture
step                    int32    [B]                   t within its episode (debugging / analysis)

Everything here is numeric so a batch can go straight through ``jax.device_put``.
The instruction text stays on the host (``language_text`` is never in a batch).
"""

from typing import Mapping

import numpy as np

IMAGE_PREFIX = "image_"
FUTURE_IMAGE_PREFIX = "future_image_"
CAMERAS = ("primary", "secondary", "wrist")

Batch = Mapping[str, np.ndarray]


def image_key(camera: str) -> str:
  return IMAGE_PREFIX + camera


def future_image_key(camera: str) -> str:
  return FUTURE_IMAGE_PREFIX + camera


def check_batch(batch: Batch, cameras, *, history: int, horizon: int, action_dim: int) -> None:
  """Raises ValueError naming the key whose shape or dtype breaks the contract."""
  def expect(key, shape_tail, dtype):
    if key not in batch:
      raise ValueError(f"batch is missing key {key!r}; has {sorted(batch)}")
    x = batch[key]
    if x.dtype != dtype or tuple(x.shape[1:len(shape_tail) + 1]) != tuple(shape_tail):
      raise ValueError(
          f"batch[{key!r}] has {x.dtype}{list(x.shape)}, expected {np.dtype(dtype)}"
          f"[B, {', '.join(map(str, shape_tail))}, ...]")
  for cam in cameras:
    expect(image_key(cam), (history,), np.uint8)
  expect("history_mask", (history,), np.bool_)
  expect("actions", (horizon, action_dim), np.float32)
  expect("action_mask", (horizon,), np.bool_)
  expect("action_dim_mask", (action_dim,), np.bool_)
  expect("language_tokens", (), np.int32)
  expect("dataset_id", (), np.int32)
