"""Streaming at scale: uneven datasets across processes, balanced weights, cached indices, bounded memory."""

import numpy as np
import pytest

from tests.data import synthetic
from wam_jax.data import pipeline
from wam_jax.data import registry
from wam_jax.data import windows


@pytest.fixture(scope="module")
def uneven_root(tmp_path_factory):
  """metaworld_demos with 3 episodes, metaworld_video with 300 (1-2 steps each, 8 px)."""
  root = tmp_path_factory.mktemp("uneven")
  synthetic.write_metaworld(root, "metaworld_demos", with_action=True, lengths=(3, 2, 3), res=8)
  synthetic.write_metaworld(root, "metaworld_video", with_action=False, lengths=(1, 2) * 150, res=8)
  return root


def _ids(batch):
  """(dataset_id, episode, step) of each window: the instruction is 'task <episode>'."""
  text = [bytes((t[t > 0] - 1).astype(np.uint8).tolist()).decode() for t in batch["language_tokens"]]
  return {(int(d), int(s.split()[-1]), int(t)) for d, s, t in zip(batch["dataset_id"], text, batch["step"])}


def test_two_processes_split_datasets_of_3_and_300_episodes(uneven_root):
  cfg = synthetic.data_cfg(uneven_root, (("metaworld_demos", 1.0), ("metaworld_video", 1.0)),
                           image_size=8)
  seen = []
  for process in range(2):
    p = pipeline.make_pipeline(cfg, split="train", batch_size=50, seed=0, train=False,
                               process_index=process, process_count=2)
    windows_seen = set()
    for _ in range(10):  # 500 windows: many epochs of the small dataset, >1 of the big one's half.
      b = next(p.iterator)
      assert abs(np.mean(b["dataset_id"] == 0) - 0.5) <= 0.02  # Weights hold on each process.
      windows_seen |= _ids(b)
    seen.append(windows_seen)
  small = [{w for w in s if w[0] == 0} for s in seen]
  big = [{w for w in s if w[0] == 1} for s in seen]
  assert not small[0] & small[1] and len(small[0] | small[1]) == 8  # Every window of 3 episodes.
  assert not big[0] & big[1] and len(big[0] | big[1]) == 450  # ... and of 300 (150 x 3 steps).
  assert {len(small[0]), len(small[1])} == {4}


def test_balanced_mixture_weighs_by_steps(uneven_root, tmp_path):
  registry.register_mixture(registry.Mixture("uneven_balanced", (("metaworld_demos", 1.0),
                                                                  ("metaworld_video", 1.0)), balance=True))
  try:
    cfg = synthetic.data_cfg(uneven_root, (("uneven_balanced", 1.0),), image_size=8)
    p = pipeline.make_pipeline(cfg, split="train", batch_size=100, seed=0, train=False)
    ids = np.concatenate([next(p.iterator)["dataset_id"] for _ in range(4)])
    assert abs(np.mean(ids == 0) - 8 / (8 + 450)) < 0.01  # Per step: 8 vs 450 windows.
  finally:
    registry.unregister("uneven_balanced")


def test_episode_lengths_are_counted_once_and_cached(uneven_root, monkeypatch):
  cfg = synthetic.data_cfg(uneven_root, (("metaworld_video", 1.0),))
  want = pipeline.open_reader(cfg, "metaworld_video", "val").episode_lengths()
  assert list(want[:4]) == [1, 2, 1, 2] and len(want) == 300
  cached = list((uneven_root / "metaworld_video" / "1.0.0").glob("wam_lengths_val_*.npy"))
  assert len(cached) == 1
  reader = pipeline.open_reader(cfg, "metaworld_video", "val")
  monkeypatch.setattr(type(reader.features), "deserialize_example_np",
                      lambda *a, **k: pytest.fail("counted again instead of reading the cache"))
  np.testing.assert_array_equal(reader.episode_lengths(), want)
  source = windows.WindowSource(reader, windows.WindowSpec.from_config(synthetic.data_cfg(
      uneven_root, image_size=8)), None, 0)
  assert len(source) == 450 and source.ends.nbytes == 300 * 8  # 8 bytes per episode, not per step.


def test_window_cache_stays_within_its_byte_budget(uneven_root):
  cfg = synthetic.data_cfg(uneven_root, (("metaworld_video", 1.0),), image_size=8)
  normalizer = pipeline.make_normalizer(cfg)
  reader = pipeline.open_reader(cfg, "metaworld_video", "train")
  wspec = windows.WindowSpec.from_config(cfg)
  one = windows.WindowSource(reader, wspec, normalizer, 0)
  one[0]
  budget = 5 * one.episode(0).nbytes
  source = windows.WindowSource(reader, wspec, normalizer, 0, cache_bytes=budget)
  for i in range(0, len(source), 7):
    source[i]
    assert source._cached_bytes <= budget + one.episode(0).nbytes  # At most one episode over (LRU evicts).
  assert 3 <= len(source._cache) <= 6
