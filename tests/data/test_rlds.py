"""Conversion fidelity on the real Bridge sample, registry checks, bad input."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.data import synthetic
from wam_jax.data import registry
from wam_jax.data import rlds


def _tfrecord_episodes(src, split):
  features = tfds.features.FeaturesDict.from_config(str(src))
  (path,) = rlds.shard_paths(src, split)
  return [features.deserialize_example_np(r) for r in rlds.iter_tfrecord(path)]


def test_bridge_conversion_is_identical(bridge_dir, bridge_ar_root):
  dst = bridge_ar_root / "bridge_dataset" / "1.0.0"
  info = json.loads((dst / "dataset_info.json").read_text())
  assert info["fileFormat"] == "array_record"
  assert (dst / "features.json").read_bytes() == (bridge_dir / "features.json").read_bytes()
  for split in ("train", "val"):
    source = tfds.builder_from_directory(str(dst)).as_data_source(split)
    expected = _tfrecord_episodes(bridge_dir, split)
    assert len(source) == len(expected) == 25
    for want, got in zip(expected, source):
      want_steps, got_steps = list(want["steps"]), list(got["steps"])
      assert len(want_steps) == len(got_steps) == 10
      for w, g in zip(want_steps, got_steps):
        for cam in ("image_0", "image_1", "image_2", "image_3"):
          np.testing.assert_array_equal(w["observation"][cam], g["observation"][cam])
        np.testing.assert_array_equal(w["observation"]["state"], g["observation"]["state"])
        np.testing.assert_array_equal(w["action"], g["action"])
        assert w["language_instruction"] == g["language_instruction"] != b""


def test_bridge_reader_matches_tfrecord(bridge_dir, bridge_ar_root):
  spec = registry.get_spec("bridge")
  reader = rlds.RldsReader(bridge_ar_root / spec.directory, "val", spec)
  expected = _tfrecord_episodes(bridge_dir, "val")
  for i in (0, 24):
    ep = reader.decode(i, cameras=("primary", "secondary", "wrist"), image_size=64)
    steps = list(expected[i]["steps"])
    assert set(ep.frames) == {"primary", "secondary"}  # Bridge has no wrist camera.
    np.testing.assert_array_equal(ep.frames["primary"], [s["observation"]["image_0"] for s in steps])
    np.testing.assert_array_equal(ep.frames["secondary"], [s["observation"]["image_1"] for s in steps])
    np.testing.assert_array_equal(ep.actions, [s["action"] for s in steps])
    np.testing.assert_array_equal(ep.proprio, [s["observation"]["state"] for s in steps])
    assert ep.instruction == steps[0]["language_instruction"].decode()


def test_conversion_refuses_existing_and_leaves_no_tmp(bridge_dir, bridge_ar_root):
  dst = bridge_ar_root / "bridge_dataset" / "1.0.0"
  with pytest.raises(ValueError, match="exists"):
    rlds.convert_to_array_record(bridge_dir, dst)
  assert [p.name for p in dst.parent.iterdir()] == ["1.0.0"]


def test_unknown_dataset_lists_names():
  with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*bridge.*metaworld_demos"):
    registry.get_spec("nope")


def test_missing_key_names_dataset_and_key(syn_data_dir):
  # metaworld_video has no steps/action: reading it as the demos spec must fail.
  with pytest.raises(ValueError, match=r"'metaworld_demos'.*'action'.*observation/state"):
    rlds.RldsReader(syn_data_dir / "metaworld_video" / "1.0.0", "train",
                    registry.get_spec("metaworld_demos"))


def test_wrong_action_shape(syn_data_dir):
  spec = registry.DatasetSpec(name="bad_shape", directory="x", cameras={"primary": "observation/image"},
                              proprio_key="observation/state", action_key="action",
                              action_normalize_mask=(True,) * 7)
  with pytest.raises(ValueError, match=r"'bad_shape'.*4 dims.*7"):
    rlds.RldsReader(syn_data_dir / "metaworld_demos" / "1.0.0", "train", spec)


def test_unknown_split(syn_data_dir):
  with pytest.raises(ValueError, match=r"no split 'test'.*train"):
    rlds.RldsReader(syn_data_dir / "metaworld_demos" / "1.0.0", "test",
                    registry.get_spec("metaworld_demos"))


def test_nan_names_dataset_episode_step_key(tmp_path):
  synthetic.write_metaworld(tmp_path, "metaworld_demos", with_action=True, nan_at=(3, 2))
  reader = rlds.RldsReader(tmp_path / "metaworld_demos" / "1.0.0", "train",
                           registry.get_spec("metaworld_demos"))
  reader.decode(0)
  with pytest.raises(ValueError, match=r"'metaworld_demos' episode 1 step 3 key 'action'"):
    reader.decode(1)
