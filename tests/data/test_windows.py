"""Window masks at episode edges, padding, action-free, inference inputs."""

import numpy as np
import pytest

from tests.data import synthetic
from wam_jax.data import normalization
from wam_jax.data import rlds
from wam_jax.data import tokenizer
from wam_jax.data import windows


def _identity_normalizer(name="metaworld_demos", action=True):
  zero, one = np.zeros(4, np.float32), np.ones(4, np.float32)
  st = normalization.ArrayStats(zero, one, -one, one, -one, one)
  return normalization.Normalizer("zscore", {name: normalization.DatasetStats(
      proprio=st, action=st if action else None, action_normalize_mask=(True,) * 3 + (False,))})


def _episode(length, action=True):
  t = np.arange(length, dtype=np.float32)
  frames = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(length)])
  return rlds.Episode(frames={"primary": frames}, proprio=np.stack([t] * 4, 1),
                      actions=np.stack([t + 100] * 4, 1) if action else None, instruction="go")


def _wspec(**kw):
  base = dict(cameras=("primary", "wrist"), image_size=8, history=3, future_offset=2, num_future=2,
              action_horizon=4, action_dim=6, proprio_dim=5, max_text_len=8)
  base.update(kw)
  return windows.WindowSpec(**base)


@pytest.mark.parametrize("t,hist,hmask,fut,fmask,amask", [
    (0, [0, 0, 0], [0, 0, 1], [2, 4], [1, 1], [1, 1, 1, 1]),
    (1, [0, 0, 1], [0, 1, 1], [3, 5], [1, 1], [1, 1, 1, 1]),
    (3, [1, 2, 3], [1, 1, 1], [5, 6], [1, 0], [1, 1, 1, 1]),
    (5, [3, 4, 5], [1, 1, 1], [6, 6], [0, 0], [1, 1, 0, 0]),
    (6, [4, 5, 6], [1, 1, 1], [6, 6], [0, 0], [1, 0, 0, 0]),
])
def test_window_edges(t, hist, hmask, fut, fmask, amask):
  wspec = _wspec()
  ep = windows.prepare_episode(_episode(7), wspec, _identity_normalizer(), "metaworld_demos",
                               tokenizer.ByteTokenizer(8))
  w = windows.cut_window(ep, t, wspec, dataset_id=3)
  np.testing.assert_array_equal(w["image_primary"][:, 0, 0, 0], hist)
  np.testing.assert_array_equal(w["history_mask"], np.array(hmask, bool))
  np.testing.assert_array_equal(w["future_image_primary"][:, 0, 0, 0], fut)
  np.testing.assert_array_equal(w["future_mask"], np.array(fmask, bool))
  np.testing.assert_array_equal(w["action_mask"], np.array(amask, bool))
  np.testing.assert_array_equal(w["proprio"][:, 0], hist)  # Same history steps as frames.
  assert w["proprio"].shape == (3, 5) and not w["proprio"][:, 4:].any()
  n = sum(amask)
  np.testing.assert_array_equal(w["actions"][:n, 0], 100 + np.arange(t, t + n))
  assert not w["actions"][n:].any() and not w["actions"][:, 4:].any()
  np.testing.assert_array_equal(w["action_dim_mask"], [1, 1, 1, 1, 0, 0])
  assert not w["image_wrist"].any() and w["image_wrist"].shape == (3, 8, 8, 3)  # Absent camera.
  assert w["dataset_id"] == 3 and w["step"] == t


def test_action_free_window():
  wspec = _wspec()
  ep = windows.prepare_episode(_episode(5, action=False), wspec, _identity_normalizer(action=False),
                               "metaworld_demos", tokenizer.ByteTokenizer(8))
  w = windows.cut_window(ep, 0, wspec, 0)
  assert w["actions"].shape == (4, 6) and not w["actions"].any()
  assert not w["action_mask"].any() and not w["action_dim_mask"].any()


def test_too_many_action_dims():
  with pytest.raises(ValueError, match="action has 4 dims.*action_dim=3"):
    windows.prepare_episode(_episode(5), _wspec(action_dim=3), _identity_normalizer(),
                            "metaworld_demos", tokenizer.ByteTokenizer(8))


def test_inference_inputs_match_training_windows():
  cfg = synthetic.data_cfg(__import__("pathlib").Path("/nonexistent"), cameras=("primary",),
                           image_size=16, history=2, max_text_len=12)
  norm = _identity_normalizer()
  ep = synthetic.make_episode(2, 6, True)
  frames, state = ep["steps"]["observation"]["image"], ep["steps"]["observation"]["state"]
  wspec = windows.WindowSpec.from_config(cfg)
  prepared = windows.prepare_episode(
      rlds.Episode({"primary": frames}, state, ep["steps"]["action"], "task 2"), wspec, norm,
      "metaworld_demos", tokenizer.ByteTokenizer(12))
  want = windows.cut_window(prepared, 0, wspec, 0)
  got = windows.make_inference_inputs({"primary": frames[[0, 0]]}, state[[0, 0]],
                                      np.array([False, True]), "task 2", cfg, norm,
                                      "metaworld_demos")
  assert "actions" not in got
  for key, value in got.items():
    np.testing.assert_array_equal(value, want[key], err_msg=key)
  with pytest.raises(ValueError, match=r"frames_by_camera\['primary'\] must be uint8"):
    windows.make_inference_inputs({"primary": frames[:2].astype(np.float32)}, state[:2],
                                  np.ones(2, bool), "x", cfg, norm, "metaworld_demos")
