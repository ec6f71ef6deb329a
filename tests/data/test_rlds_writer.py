"""The TF-free RLDS writer: round trip through tfds' own reader, atomic writes."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from wam_jax.data import rlds_writer


def _features():
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
              "state": tfds.features.Tensor(shape=(2,), dtype=np.float32)}),
          "action": tfds.features.Tensor(shape=(3,), dtype=np.float32),
          "language_instruction": tfds.features.Text(),
          "is_first": tfds.features.Scalar(dtype=np.bool_),
      }),
      "episode_metadata": tfds.features.FeaturesDict({"episode_id": np.int64}),
  })


def _episodes(n, start=0, columnar=True):
  for i in range(start, start + n):
    t = 2 + i % 3
    images = np.random.default_rng(i).integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
    steps = {"observation": {"image": images, "state": np.full((t, 2), i, np.float32)},
             "action": np.full((t, 3), -i, np.float32), "language_instruction": [f"task {i}"] * t,
             "is_first": np.arange(t) == 0}
    if not columnar:  # A list of step dicts is accepted too.
      steps = [{"observation": {"image": images[k], "state": steps["observation"]["state"][k]},
                "action": steps["action"][k], "language_instruction": f"task {i}",
                "is_first": k == 0} for k in range(t)]
    yield {"steps": steps, "episode_metadata": {"episode_id": i}}


def test_round_trip_through_tfds_data_source(tmp_path):
  out = tmp_path / "toy" / "1.0.0"
  rlds_writer.write_rlds_dataset(
      out, _features(), {"train": _episodes(5), "val": _episodes(2, 100, columnar=False)},
      episodes_per_shard=2)
  builder = tfds.builder_from_directory(str(out))
  assert builder.info.splits["train"].num_shards == 3
  train, val = builder.as_data_source("train"), builder.as_data_source("val")
  assert (len(train), len(val)) == (5, 2)
  for split, source, start in (("train", train, 0), ("val", val, 100)):
    for k, expected in enumerate(_episodes(len(source), start)):
      ep = source[k]
      assert ep["episode_metadata"]["episode_id"] == start + k, split
      steps = list(ep["steps"])
      want = expected["steps"]
      assert len(steps) == len(want["action"])
      for t, step in enumerate(steps):
        np.testing.assert_array_equal(step["observation"]["image"], want["observation"]["image"][t])
        np.testing.assert_array_equal(step["action"], want["action"][t])
        assert step["language_instruction"] == want["language_instruction"][t].encode()
        assert step["is_first"] == (t == 0)


def test_killed_write_leaves_nothing(tmp_path):
  def broken():
    yield from _episodes(2)
    raise KeyboardInterrupt("killed")
  out = tmp_path / "toy" / "1.0.0"
  with pytest.raises(KeyboardInterrupt):
    rlds_writer.write_rlds_dataset(out, _features(), {"train": broken()})
  assert not out.exists()
  assert list((tmp_path / "toy").iterdir()) == []


def test_existing_dataset_needs_overwrite(tmp_path):
  out = tmp_path / "toy" / "1.0.0"
  rlds_writer.write_rlds_dataset(out, _features(), {"train": _episodes(1)})
  with pytest.raises(FileExistsError):
    rlds_writer.write_rlds_dataset(out, _features(), {"train": _episodes(2)})
  rlds_writer.write_rlds_dataset(out, _features(), {"train": _episodes(3)}, overwrite=True)
  assert len(tfds.builder_from_directory(str(out)).as_data_source("train")) == 3
