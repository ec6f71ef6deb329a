"""Synthetic batches that follow wam_jax/data/batch.py: shared by the tests and the benchmarks (scripts/bench_*.py)."""

import numpy as np


def make_batch(config, batch_size: int, seed: int = 0, num_datasets: int = 1) -> dict:
  d = config.data
  rs = np.random.RandomState(seed)
  t, k, a, p, l = d.history, d.action_horizon, d.action_dim, d.proprio_dim, d.max_text_len
  batch = {}
  for cam in d.cameras:
    batch[f"image_{cam}"] = rs.randint(0, 256, (batch_size, t, d.image_size, d.image_size, 3)).astype(np.uint8)
    batch[f"future_image_{cam}"] = rs.randint(0, 256, (batch_size, d.num_future, d.image_size, d.image_size, 3)).astype(np.uint8)
  history_mask = np.ones((batch_size, t), bool)
  history_mask[0, 0] = False
  tokens = rs.randint(1, 257, (batch_size, l)).astype(np.int32)
  tokens[:, l // 2:] = 0
  action_mask = np.ones((batch_size, k), bool)
  action_mask[1, k // 2:] = False
  dim_mask = np.ones((batch_size, a), bool)
  dim_mask[:, -1] = False
  batch.update(
      history_mask=history_mask,
      future_mask=np.ones((batch_size, d.num_future), bool),
      proprio=rs.randn(batch_size, t, p).astype(np.float32),
      future_proprio=rs.randn(batch_size, d.num_future, p).astype(np.float32),
      actions=np.clip(rs.randn(batch_size, k, a), -1, 1).astype(np.float32),
      action_mask=action_mask,
      action_dim_mask=dim_mask,
      language_tokens=tokens,
      language_mask=tokens != 0,
      dataset_id=(np.arange(batch_size) % num_datasets).astype(np.int32),
      step=np.arange(batch_size, dtype=np.int32),
  )
  return batch
