"""Window masks at episode edges, padding, action-free, inference inputs."""

import pathlib

import numpy as np
import pytest

from tests.data import synthetic
from wam_jax.data import normalization
from wam_jax.data import pipeline
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
  np.testing.assert_array_equal(w["future_proprio"][:, 0], fut)  # Same future steps as frames.
  assert w["future_proprio"].shape == (2, 5)
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
  cfg = synthetic.data_cfg(pathlib.Path("/nonexistent"), cameras=("primary",),
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


def test_window_at_t_after_history_is_in_order_through_the_reader(tmp_path):
  """At t >= h, history is steps t-h+1..t in order and the future t+k, t+2k (no padding)."""
  synthetic.write_metaworld(tmp_path, "metaworld_demos", with_action=True, lengths=(12,))
  cfg = synthetic.data_cfg(tmp_path, image_size=48, history=3, future_offset=2, num_future=2,
                           action_horizon=4)
  source = windows.WindowSource(pipeline.open_reader(cfg, "metaworld_demos", "train"),
                                windows.WindowSpec.from_config(cfg), _identity_normalizer(), 0)
  for t in (3, 5):
    w = source[t]  # One episode: window index == step.
    np.testing.assert_array_equal(w["image_primary"][:, 0, 0, 0], 10 * np.arange(t - 2, t + 1))
    np.testing.assert_array_equal(w["proprio"][:, 1], np.arange(t - 2, t + 1))  # state[t][1] == t.
    np.testing.assert_array_equal(w["future_image_primary"][:, 0, 0, 0], 10 * np.array([t + 2, t + 4]))
    np.testing.assert_array_equal(w["actions"][:, 1], np.arange(t, t + 4))  # action[t][1] == t.
    assert w["history_mask"].all() and w["future_mask"].all() and w["action_mask"].all()


def test_live_history_gets_exactly_the_training_frames(tmp_path):
  """Issue 18: frames rendered at the recipe's 64 px and models at 128 px: the policy's
  inputs equal the data path's windows (same resize, same padding, same proprio)."""
  synthetic.write_metaworld(tmp_path, "metaworld_demos", with_action=True, lengths=(6,), res=64,
                            textured=True)
  cfg = synthetic.data_cfg(tmp_path, image_size=128, history=2)
  cfg.metaworld.resolution = 64
  reader = pipeline.open_reader(cfg, "metaworld_demos", "train")
  norm = pipeline.make_normalizer(cfg)
  source = windows.WindowSource(reader, windows.WindowSpec.from_config(cfg), norm, 0)
  raw = reader.decode(0, cameras=("primary",))  # As stored (and as rendered): 64 px.
  assert raw.frames["primary"].shape[1:] == (64, 64, 3)
  live = [{"image_primary": raw.frames["primary"][i], "proprio": raw.proprio[i]} for i in range(6)]
  for t in (0, 3):
    want = source[t]
    got = windows.history_inputs(live[max(0, t - 1):t + 1], raw.instruction, cfg, norm,
                                 "metaworld_demos")
    for key, value in got.items():
      np.testing.assert_array_equal(value, want[key], err_msg=f"{key} at t={t}")
    np.testing.assert_array_equal(  # The pipeline's own resize of the 64 px frame.
        got["image_primary"][-1], rlds.resize_frames(raw.frames["primary"][t:t + 1], 128)[0])


def test_live_history_zero_fills_a_camera_the_dataset_lacks():
  """Issue 18: a trained camera missing from the observation (the dataset lacks it too) is
  zeros, as in training, not a KeyError; a camera the dataset has is required."""
  cfg = synthetic.data_cfg(pathlib.Path("/nonexistent"), cameras=("primary", "wrist"),
                           image_size=16, history=2, max_text_len=12)
  frame = np.full((16, 16, 3), 7, np.uint8)
  obs = {"image_primary": frame, "proprio": np.zeros(4, np.float32)}
  got = windows.history_inputs([obs], "go", cfg, _identity_normalizer(), "metaworld_demos")
  assert got["image_wrist"].shape == (2, 16, 16, 3) and not got["image_wrist"].any()
  assert (got["image_primary"] == 7).all()
  np.testing.assert_array_equal(got["history_mask"], [False, True])
  # A wrist frame the dataset never had is ignored, as training zero-filled it.
  with_wrist = dict(obs, image_wrist=np.full_like(frame, 99))
  got = windows.history_inputs([with_wrist], "go", cfg, _identity_normalizer(), "metaworld_demos")
  assert not got["image_wrist"].any()
  with pytest.raises(ValueError, match=r"camera 'primary'.*'metaworld_demos'.*image_primary"):
    windows.history_inputs([{"proprio": np.zeros(4, np.float32)}], "go", cfg,
                           _identity_normalizer(), "metaworld_demos")


def test_text_tokenizer_path_resolves_under_the_data_root(tmp_path, monkeypatch):
  """A relative data.text_tokenizer is read under the data root, not the working directory (a sweep's
  runs start in a worktree whose data root is $WAM_DATA_DIR); absolute paths and '' are kept."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("WAM_DATA_DIR", str(tmp_path / "env_root"))
  cfg = ml_collections.ConfigDict(dict(data_dir="", text_tokenizer="shakespeare_text/tokenizer.json"))
  assert windows.text_tokenizer_path(cfg) == str(tmp_path / "env_root/shakespeare_text/tokenizer.json")
  cfg.data_dir = str(tmp_path / "cfg_root")
  assert windows.text_tokenizer_path(cfg) == str(tmp_path / "cfg_root/shakespeare_text/tokenizer.json")
  cfg.text_tokenizer = "/abs/tokenizer.json"
  assert windows.text_tokenizer_path(cfg) == "/abs/tokenizer.json"
  cfg.text_tokenizer = ""
  assert windows.text_tokenizer_path(cfg) == ""
  cfg.text_tokenizer = "missing/tokenizer.json"  # a missing file is named with its resolved path
  spec = windows.WindowSpec(cameras=("primary",), image_size=8, history=1, future_offset=1, num_future=1,
                            action_horizon=1, action_dim=1, proprio_dim=1, max_text_len=4,
                            text_tokenizer=windows.text_tokenizer_path(cfg))
  with pytest.raises(ValueError, match="cfg_root/missing/tokenizer.json"):
    tokenizer.for_spec(spec)
