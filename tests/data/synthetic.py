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


# --- An RT-1-style layout (dict action, multi-part state), as Open-X releases store it ---------

RT1_RES = 16


def rt1_features():
  """action = {world_vector [3], rotation_delta [3], gripper_closedness_action (scalar)};
  observation = {image, base_pose [7], gripper_closed [1], natural_language_instruction}."""
  import tensorflow_datasets as tfds
  f = tfds.features
  return f.FeaturesDict({"steps": f.Dataset({
      "observation": f.FeaturesDict({
          "image": f.Image(shape=(RT1_RES, RT1_RES, 3)),
          "base_pose": f.Tensor(shape=(7,), dtype=np.float32),
          "gripper_closed": f.Tensor(shape=(1,), dtype=np.float32),
          "natural_language_instruction": f.Text()}),
      "action": f.FeaturesDict({
          "world_vector": f.Tensor(shape=(3,), dtype=np.float32),
          "rotation_delta": f.Tensor(shape=(3,), dtype=np.float32),
          "gripper_closedness_action": f.Scalar(dtype=np.float32)}),
      "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})})


def rt1_step_values(e: int, t: int) -> dict:
  """Raw values of step t of episode e (distinct per key, episode and step)."""
  return {"base_pose": np.arange(7, dtype=np.float32) + 10 * e + 0.5 * t,
          "gripper_closed": np.array([t % 2], np.float32),
          "world_vector": np.array([e, t, 0.25 * t], np.float32) + 1,
          "rotation_delta": np.array([-t, 2 * t, e], np.float32) - 1,
          "gripper": np.float32(((t * 7 + e) % 5) / 4)}  # 0, .25, .5, .75, 1 (closedness).


def rt1_episode(e: int, length: int) -> dict:
  steps = []
  for t in range(length):
    v = rt1_step_values(e, t)
    steps.append({
        "observation": {"image": make_frames(e, length, RT1_RES)[t], "base_pose": v["base_pose"],
                        "gripper_closed": v["gripper_closed"],
                        "natural_language_instruction": f"rt1 task {e}"},
        "action": {"world_vector": v["world_vector"], "rotation_delta": v["rotation_delta"],
                   "gripper_closedness_action": v["gripper"]},
        "is_first": t == 0, "is_last": t == length - 1, "is_terminal": False})
  return {"steps": steps}


def write_rt1(root, name="rt1_style", lengths=(4, 6, 3)):
  """Writes <root>/<name>/1.0.0 (train: episodes 0.., val: 100..) and returns its path."""
  return rlds_writer.write_rlds_dataset(
      root / name / "1.0.0", rt1_features(),
      {"train": [rt1_episode(i, n) for i, n in enumerate(lengths)],
       "val": [rt1_episode(100 + i, n) for i, n in enumerate(lengths)]})
