"""Stats vs numpy, caching, normalize/denormalize round trip, JSON."""

import json
import os

import numpy as np
import pytest

from tests.data import synthetic
from wam_jax.data import normalization
from wam_jax.data import pipeline
from wam_jax.data import registry
from wam_jax.data import rlds


def test_bridge_stats_match_numpy(bridge_ar_root):
  spec = registry.get_spec("bridge")
  reader = rlds.RldsReader(bridge_ar_root / spec.directory, "train", spec)
  stats = normalization.compute_stats(reader)
  eps = [reader.decode(i) for i in range(len(reader))]
  actions = np.concatenate([e.actions for e in eps]).astype(np.float64)
  proprio = np.concatenate([e.proprio for e in eps]).astype(np.float64)
  assert stats.num_steps == 250 and stats.num_episodes == 25
  for got, x in ((stats.action, actions), (stats.proprio, proprio)):
    np.testing.assert_allclose(got.mean, x.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.std, x.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.min, x.min(0))
    np.testing.assert_allclose(got.max, x.max(0))
    np.testing.assert_allclose(got.q01, np.quantile(x, 0.01, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.q99, np.quantile(x, 0.99, axis=0), rtol=1e-5, atol=1e-7)


def test_stats_cache_reused_and_keyed(syn_data_dir, tmp_path):
  cfg = synthetic.data_cfg(syn_data_dir)
  reader = pipeline.open_reader(cfg, "metaworld_demos", "train")
  path = normalization.stats_cache_path(reader.directory, "train", reader.spec)
  assert path.parent == reader.directory  # Writable dataset dir: cache beside it.
  stats = normalization.load_or_compute_stats(reader)
  assert path.exists()
  # A doctored cache is what gets reused (proves no recomputation) ...
  d = json.loads(path.read_text())
  d["num_steps"] = -1
  path.write_text(json.dumps(d))
  assert normalization.load_or_compute_stats(reader).num_steps == -1
  # ... and another split has its own key.
  assert normalization.stats_cache_path(reader.directory, "val", reader.spec) != path
  path.write_text(json.dumps(stats.to_dict()))


def test_readonly_dataset_caches_in_cache_dir(bridge_ar_root, tmp_path):
  spec = registry.get_spec("bridge")
  directory = bridge_ar_root / spec.directory
  os.chmod(directory, 0o555)
  try:
    path = normalization.stats_cache_path(directory, "train", spec, tmp_path)
    assert path.parent == tmp_path / "stats"
  finally:
    os.chmod(directory, 0o755)


def _bridge_like_normalizer(mode):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 7)).astype(np.float32) * [1, 2, 3, 4, 5, 6, 1] + 3
  stats = normalization.DatasetStats(proprio=normalization.ArrayStats.of(x[:, :5]),
                                     action=normalization.ArrayStats.of(x),
                                     action_normalize_mask=(True,) * 6 + (False,))
  return normalization.Normalizer(mode, {"bridge": stats}), stats


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_round_trip_and_masked_dims(mode):
  norm, stats = _bridge_like_normalizer(mode)
  rng = np.random.default_rng(1)
  # Inside [q01, q99] so quantile clipping does not apply; plus 2 padded dims.
  a = rng.uniform(stats.action.q01, stats.action.q99, size=(3, 8, 7)).astype(np.float32)
  a = np.concatenate([a, rng.normal(size=(3, 8, 2)).astype(np.float32)], -1)
  n = norm.normalize_actions(a, "bridge")
  np.testing.assert_array_equal(n[..., 6:], a[..., 6:])  # Gripper + padding untouched.
  if mode == "quantile":
    assert np.abs(n[..., :6]).max() <= 1
  back = norm.denormalize_actions(n, "bridge")
  np.testing.assert_allclose(back, a, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(back[..., 6:], a[..., 6:])
  p = rng.uniform(stats.proprio.q01, stats.proprio.q99, size=(4, 5)).astype(np.float32)
  np.testing.assert_allclose(norm.denormalize_proprio(norm.normalize_proprio(p, "bridge"), "bridge"),
                             p, rtol=1e-5, atol=1e-5)


def test_quantile_clips_and_zscore_values():
  norm, stats = _bridge_like_normalizer("quantile")
  big = np.full((1, 7), 1e6, np.float32)
  assert norm.normalize_actions(big, "bridge")[0, :6].tolist() == [1.0] * 6
  z, _ = _bridge_like_normalizer("zscore")
  x = stats.action.mean + 2 * stats.action.std
  np.testing.assert_allclose(z.normalize_actions(x[None], "bridge")[0, :6], 2.0, rtol=1e-5)


def test_json_round_trip_same_outputs():
  norm, _ = _bridge_like_normalizer("quantile")
  again = normalization.Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
  x = np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32)
  np.testing.assert_array_equal(again.normalize_actions(x, "bridge"), norm.normalize_actions(x, "bridge"))
  with pytest.raises(ValueError, match="no stats for dataset 'other'"):
    norm.normalize_actions(x, "other")
  with pytest.raises(ValueError, match="unknown normalization mode 'minmax'"):
    normalization.Normalizer("minmax", {})


def test_nan_in_stats_pass_names_location(tmp_path):
  synthetic.write_metaworld(tmp_path, "metaworld_demos", with_action=True, nan_at=(2, 0))
  reader = rlds.RldsReader(tmp_path / "metaworld_demos" / "1.0.0", "train",
                           registry.get_spec("metaworld_demos"))
  with pytest.raises(ValueError, match=r"'metaworld_demos' episode 1 step 2 key 'action'"):
    normalization.compute_stats(reader)


def test_stats_recomputed_when_shard_content_changes_at_same_size(tmp_path):
  """Issue 18: rewriting actions in place (same file sizes, same names) must not reuse stats."""
  spec = registry.get_spec("metaworld_demos")
  d = synthetic.write_metaworld(tmp_path / "a", "metaworld_demos", with_action=True)
  before = normalization.load_or_compute_stats(rlds.RldsReader(d, "train", spec))
  # The same episodes with every action doubled, copied over the old shards in place.
  new = synthetic.write_metaworld(tmp_path / "b", "metaworld_demos", with_action=True, action_scale=2.0)
  shards = sorted(p.name for p in new.iterdir() if ".array_record-" in p.name)
  for name in shards:
    assert (d / name).stat().st_size == (new / name).stat().st_size  # Sizes alone cannot tell.
    with open(d / name, "r+b") as f:
      f.write((new / name).read_bytes())
  after = normalization.load_or_compute_stats(rlds.RldsReader(d, "train", spec))
  np.testing.assert_allclose(after.action.mean[:3], 2 * before.action.mean[:3], rtol=1e-6)
  assert len(list(d.glob("wam_stats_*"))) == 2  # A new cache entry, the stale one untouched.


def _constant_dim_normalizer(mode):
  x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
  x[:, 2] = 0.25  # Constant: std 0 and q01 == q99.
  stats = normalization.ArrayStats.of(x)
  return normalization.Normalizer(mode, {"metaworld_demos": normalization.DatasetStats(
      proprio=stats, action=stats, action_normalize_mask=(True,) * 4)}), x


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_constant_dims_pass_through_unscaled_with_a_warning(mode):
  """Issue 18: a constant dim used to be divided by 1e-6 (any deviation became ~1e6)."""
  with pytest.warns(UserWarning, match=r"'metaworld_demos'.*'action'.*dim 2.*constant"):
    norm, x = _constant_dim_normalizer(mode)
    s = norm.stats["metaworld_demos"].action
    live = np.clip(x[:5], s.q01, s.q99)  # Inside [q01, q99]: quantile's clip does not apply.
    live[:, 2] = 0.25 + np.array([0.0, 0.01, -0.02, 0.1, 0.0], np.float32)  # Off the constant.
    n = norm.normalize_actions(live, "metaworld_demos")
  np.testing.assert_allclose(n[:, 2], live[:, 2] - 0.25, atol=1e-7)  # Centred, not scaled.
  assert np.abs(n).max() < 10
  np.testing.assert_allclose(norm.denormalize_actions(n, "metaworld_demos"), live, rtol=1e-6, atol=1e-6)
  p = norm.normalize_proprio(live, "metaworld_demos")
  assert np.abs(p[:, 2]).max() <= 0.1 + 1e-6
  np.testing.assert_allclose(norm.denormalize_proprio(p, "metaworld_demos"), live, rtol=1e-6, atol=1e-6)
