"""Tiny synthetic RLDS datasets (MetaWorld schema) written to a temp data_dir.

Values encode where they came from so tests can check windows exactly:
action[t] = [episode, t, 0.5 t, gripper] (times ``action_scale``),
state[t] = [episode, t, -t, 1], frame[t] filled with 10 t (PNG, lossless) or,
with ``textured=True``, seeded noise (so resizing is not a no-op on content),
instruction "task <episode>".
"""

import numpy as np
import pytest

from experiments.configs import common
from wam_jax.data import rlds
from wam_jax.data import rlds_writer
from wam_jax.sim import metaworld_data

SYN_RES = 48  # != image_size 64: exercises per-dataset resizing.


def metaworld_features(with_action: bool, res: int = SYN_RES):
  """The MetaWorld generator's own schema (one definition of the RLDS layout)."""
  return metaworld_data.features(res, with_action=with_action)


def make_frames(e: int, length: int, res: int = SYN_RES, textured: bool = False) -> np.ndarray:
  """uint8 [length, res, res, 3]: frame t filled with 10 t, or seeded noise."""
  if textured:
    return np.random.default_rng(e).integers(0, 256, (length, res, res, 3), dtype=np.uint8)
  return np.stack([np.full((res, res, 3), (10 * i) % 256, np.uint8) for i in range(length)])


def make_episode(e: int, length: int, with_action: bool, res: int = SYN_RES, nan_at=None,
                 action_scale: float = 1.0, textured: bool = False):
  t = np.arange(length, dtype=np.float32)
  state = np.stack([np.full_like(t, e), t, -t, np.ones_like(t)], 1)
  steps = {
      "observation": {
          "image": make_frames(e, length, res, textured),
          "state": state,
          "env_state": np.zeros((length, 39), np.float32),
      },
      "language_instruction": [f"task {e}"] * length,
      "reward": np.zeros(length, np.float32), "discount": np.ones(length, np.float32),
      "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1,
      "is_terminal": np.arange(length) == length - 1,
  }
  if with_action:
    steps["action"] = (action_scale * np.stack([np.full_like(t, e), t, 0.5 * t,
                                                np.where(t % 2 == 0, 1.0, -1.0)], 1)).astype(np.float32)
    if nan_at is not None:
      steps["action"][nan_at[0], nan_at[1]] = np.nan
  return {"steps": steps,
          "episode_metadata": {"task": f"task {e}", "seed": e, "success": True, "episode_id": e}}


def write_metaworld(root, name, *, with_action, lengths=(5, 9, 12, 3), nan_at=None,
                    res: int = SYN_RES, action_scale: float = 1.0, textured: bool = False):
  """Writes <root>/<name>/1.0.0 with train and val splits; returns its path."""
  feats = metaworld_features(with_action, res)
  eps = lambda base: [make_episode(base + i, n, with_action, res, nan_at=nan_at if i == 1 else None,
                                   action_scale=action_scale, textured=textured)
                      for i, n in enumerate(lengths)]
  return rlds_writer.write_rlds_dataset(
      root / name / "1.0.0", feats, {"train": eps(0), "val": eps(100)})


@pytest.fixture(scope="session")
def syn_data_dir(tmp_path_factory):
  """data_dir holding metaworld_demos (actions) and metaworld_video (none)."""
  root = tmp_path_factory.mktemp("wam_data")
  write_metaworld(root, "metaworld_demos", with_action=True)
  write_metaworld(root, "metaworld_video", with_action=False, lengths=(7, 4, 10))
  return root


@pytest.fixture(scope="session")
def bridge_ar_root(bridge_dir, tmp_path_factory):
  """data_dir with the real Bridge sample converted to ArrayRecord."""
  root = tmp_path_factory.mktemp("bridge_root")
  rlds.convert_to_array_record(bridge_dir, root / "bridge_dataset" / "1.0.0")
  return root


def data_cfg(data_dir, mixture=(("metaworld_demos", 1.0),), **overrides):
  cfg = common.data_config()
  cfg.data_dir = str(data_dir)
  cfg.mixture = tuple(mixture)
  cfg.cache_dir = str(data_dir / "_cache")
  cfg.update(overrides)
  return cfg
