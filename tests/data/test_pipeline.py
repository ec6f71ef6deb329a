"""The Grain pipeline: batch contract, determinism, resume, mixtures, sharding."""

import numpy as np
import pytest

from tests.data import synthetic
from wam_jax.data import augment as augment_lib
from wam_jax.data import batch as batch_lib
from wam_jax.data import pipeline


def _take(p, n):
  return [next(p.iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _bridge(root, **kw):
  return synthetic.data_cfg(root, (("bridge", 1.0),), **kw)


def test_bridge_batches_follow_contract(bridge_ar_root):
  cfg = _bridge(bridge_ar_root, cameras=("primary", "wrist"))
  p = pipeline.make_pipeline(cfg, split="train", batch_size=16, seed=0, train=True)
  (b,) = _take(p, 1)
  batch_lib.check_batch(b, cfg.cameras, history=cfg.history, horizon=cfg.action_horizon,
                        action_dim=cfg.action_dim)
  assert set(b) == set(p.element_spec)
  for k, spec in p.element_spec.items():
    assert (b[k].shape, b[k].dtype) == (spec.shape, spec.dtype), k
  assert p.dataset_names == ("bridge",)
  assert not b["image_wrist"].any()  # Bridge has no wrist camera: zeros.
  assert b["language_mask"].any(axis=1).all()
  np.testing.assert_array_equal(b["action_dim_mask"], np.ones((16, 7), bool))
  # Val pipeline reuses the train normalizer object.
  v = pipeline.make_pipeline(cfg, split="val", batch_size=16, seed=0, train=False,
                             normalizer=p.normalizer)
  assert v.normalizer is p.normalizer
  batch_lib.check_batch(next(v.iterator), cfg.cameras, history=cfg.history,
                        horizon=cfg.action_horizon, action_dim=cfg.action_dim)


def test_determinism_and_seed(bridge_ar_root):
  cfg = _bridge(bridge_ar_root)
  make = lambda seed: pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=seed, train=True)
  a, b, c = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image_primary"], c[0]["image_primary"])


def test_iterator_state_restores_next_batch(bridge_ar_root):
  cfg = _bridge(bridge_ar_root)
  p = pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=3, train=True)
  _take(p, 40)  # Past one epoch (250 windows): exercises reshuffled epochs.
  state = p.iterator.get_state()
  want = _take(p, 2)
  q = pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=3, train=True)
  q.iterator.set_state(state)
  _assert_batches_equal(_take(q, 2), want)


def test_mixture_frequencies_and_action_free(syn_data_dir):
  cfg = synthetic.data_cfg(syn_data_dir, (("metaworld_demos", 0.3), ("metaworld_video", 0.7)))
  p = pipeline.make_pipeline(cfg, split="train", batch_size=50, seed=0, train=True)
  batches = _take(p, 8)
  ids = np.concatenate([b["dataset_id"] for b in batches])
  assert abs(np.mean(ids == 0) - 0.3) < 0.03
  for b in batches:
    video = b["dataset_id"] == 1
    assert not b["action_mask"][video].any() and not b["action_dim_mask"][video].any()
    assert b["action_mask"][~video, 0].all()  # a_t always exists for robot data.
    np.testing.assert_array_equal(b["action_dim_mask"][~video], [[1, 1, 1, 1, 0, 0, 0]] * (~video).sum())
  assert p.dataset_names == ("metaworld_demos", "metaworld_video")
  assert set(p.normalizer.stats) == {"metaworld_demos", "metaworld_video"}


def test_eval_has_no_augmentation_and_resizes(syn_data_dir):
  cfg = synthetic.data_cfg(syn_data_dir)
  p = pipeline.make_pipeline(cfg, split="val", batch_size=10, seed=0, train=False)
  b = next(p.iterator)
  assert b["image_primary"].shape[2:] == (64, 64, 3)  # 48 px dataset resized to 64.
  # Synthetic frame t is filled with 10 t: exact without augmentation.
  np.testing.assert_array_equal(b["image_primary"][:, -1, 5, 5, 0], 10 * b["step"])
  t = pipeline.make_pipeline(cfg, split="val", batch_size=10, seed=0, train=True)
  assert not np.array_equal(next(t.iterator)["image_primary"], b["image_primary"])


def test_process_shards_are_disjoint(syn_data_dir):
  cfg = synthetic.data_cfg(syn_data_dir)
  seen = []
  for i in range(2):
    p = pipeline.make_pipeline(cfg, split="train", batch_size=1, seed=0, train=False,
                               process_index=i, process_count=2)
    seen.append({(int(b["language_tokens"][0, 5]), int(b["step"][0])) for b in _take(p, 14)})
  assert len(seen[0]) == len(seen[1]) == 14 and not seen[0] & seen[1]


def test_bad_config_errors(syn_data_dir):
  with pytest.raises(ValueError, match=r"unknown dataset 'bridgee'"):
    pipeline.make_pipeline(synthetic.data_cfg(syn_data_dir, (("bridgee", 1.0),)), split="train",
                           batch_size=2, seed=0, train=True)
  with pytest.raises(ValueError, match=r"dataset 'bridge': directory .* does not exist"):
    pipeline.make_pipeline(synthetic.data_cfg(syn_data_dir, (("bridge", 1.0),)), split="train",
                           batch_size=2, seed=0, train=True)
  with pytest.raises(ValueError, match=r"unknown camera 'left'"):
    pipeline.make_pipeline(synthetic.data_cfg(syn_data_dir, cameras=("left",)), split="train",
                           batch_size=2, seed=0, train=True)


@pytest.mark.slow
def test_two_workers_resume(bridge_ar_root):
  cfg = _bridge(bridge_ar_root, num_workers=2)
  p = pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=0, train=True)
  _take(p, 5)
  state = p.iterator.get_state()
  want = _take(p, 2)
  q = pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=0, train=True)
  q.iterator.set_state(state)
  _assert_batches_equal(_take(q, 2), want)


def _recorded_crops(monkeypatch, cfg, **kw):
  """Crop boxes Augment draws for the first 8 windows of a train pipeline."""
  drawn = []
  original = augment_lib.sample_params
  def record(rng, aug_cfg, height, width):
    params = original(rng, aug_cfg, height, width)
    drawn.append(params["box"])
    return params
  monkeypatch.setattr(augment_lib, "sample_params", record)
  p = pipeline.make_pipeline(cfg, split="train", batch_size=8, seed=0, train=True, **kw)
  next(p.iterator)
  monkeypatch.setattr(augment_lib, "sample_params", original)
  return drawn


def test_each_process_draws_its_own_augmentation(syn_data_dir, monkeypatch):
  """Issue 18: every host drew the same crop for its k-th sample."""
  cfg = synthetic.data_cfg(syn_data_dir)
  host0 = _recorded_crops(monkeypatch, cfg, process_index=0, process_count=2)
  host1 = _recorded_crops(monkeypatch, cfg, process_index=1, process_count=2)
  assert len(host0) == len(host1) == 8
  assert sum(a == b for a, b in zip(host0, host1)) <= 1  # Independent draws (a chance match at most).
  # A single-process run draws what process 0 of a multi-process run draws.
  assert _recorded_crops(monkeypatch, cfg) == host0


def test_cache_budget_follows_dataset_size_and_never_changes_batches(syn_data_dir):
  """The decoded-episode cache is split over a mixture in proportion to each dataset's steps; its
  size decides only what is re-decoded: a starved cache gives the same batches as an ample one."""
  assert pipeline.cache_shares(1000, [100, 300]) == [250, 750]
  assert pipeline.cache_shares(1000, [0, 0]) == [500, 500]
  batches = {}
  for mb in (0, 1024):  # 0: one episode per dataset kept, every other visit decodes again
    cfg = synthetic.data_cfg(syn_data_dir, (("metaworld_demos", 0.3), ("metaworld_video", 0.7)))
    cfg.episode_cache_mb = mb
    batches[mb] = _take(pipeline.make_pipeline(cfg, split="train", batch_size=16, seed=3, train=True), 4)
  _assert_batches_equal(batches[0], batches[1024])
