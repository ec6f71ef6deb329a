"""Sharded training matches one device; mesh and rule errors name the field."""

import jax
import numpy as np
import pytest

from experiments.configs import vla_baseline
from tests import sharded_steps
from wam_jax.data.fake_batch import make_batch
from wam_jax.training import sharding, trainer


def small_config():
  cfg = vla_baseline.get_config("tiny")
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=16)
  cfg.data.update(image_size=32, history=2, action_horizon=4, max_text_len=8)
  cfg.train.update(steps=10, warmup_steps=1, batch_size=8, compute_dtype="float32")
  return cfg


@pytest.mark.parametrize("shape,rules", [((2, 2, 2), "fsdp"),
                                         ((4, 1, 2), "data_parallel")])
def test_sharded_step_matches_single_device(shape, rules):
  if jax.device_count() < 8:
    pytest.skip("needs 8 host devices (tests/conftest.py sets XLA_FLAGS)")
  cfg = small_config()
  batches = [make_batch(cfg, 8, seed=i) for i in range(2)]
  state8 = sharded_steps.assert_sharded_matches_single_device(cfg, batches, shape=shape, rules=rules)
  # Parameters really are split when the rules say so.
  kernel = state8.params["backbone"]["block_0"]["mlp"]["wi"]["kernel"]
  if rules == "fsdp" and shape[1] * shape[2] > 1:
    assert kernel.sharding.shard_shape(kernel.shape) != kernel.shape
  # The batch is split over data x fsdp.


def test_grad_accumulation_matches_full_batch():
  cfg = small_config()
  cfg.mesh.shape = (1, 1, 1)
  # Microbatches with unequal masked counts (the fake batch pads row 1's chunk), a warmup
  # schedule and weight decay: a wrong global scale of the gradient shows in grad_norm even
  # where Adam's normalization would hide it in the params.
  cfg.train.update(warmup_steps=3, weight_decay=0.1)
  batches = [make_batch(cfg, 8, seed=i) for i in range(3)]
  p1, l1, _, m1 = sharded_steps.train_steps(cfg, jax.devices()[:1], batches)
  cfg.train.grad_accum_steps = 2
  p2, l2, _, m2 = sharded_steps.train_steps(cfg, jax.devices()[:1], batches)
  np.testing.assert_allclose(l1, l2, rtol=1e-4)
  for a, b in zip(m1, m2):
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(a["learning_rate"], b["learning_rate"], rtol=1e-6)
    # The whole batch's count of real action entries, not sum(w^2)/sum(w) over microbatches.
    assert a["loss_weight"] == b["loss_weight"] > 0
  # Adam turns float-level gradient noise into up-to-lr-sized sign flips where a
  # gradient is ~0, so params are compared at a tolerance well below one update (3e-4).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5), p1, p2)


def test_mesh_shape_errors_name_the_field():
  with pytest.raises(ValueError, match="config.mesh.shape"):
    sharding.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="config.mesh.shape"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="rules_name"):
    sharding.axis_rules("nope")


def test_flops_under_grad_accumulation_count_every_microbatch():
  cfg = small_config()
  cfg.mesh.shape = (1, 1, 1)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  spec = trainer.abstract_batch(cfg.data, 8)

  def flops(accum):
    cfg.train.grad_accum_steps = accum
    run = trainer.setup_training(cfg, mesh, spec, num_datasets=1)
    return run.step_flops(run.train_step.lower(run.abstract_state, spec).compile(), spec)

  full, accumulated = flops(1), flops(4)
  # XLA's cost analysis counts the scanned microbatch once (~1/4 of the work here).
  np.testing.assert_allclose(accumulated, full, rtol=0.05)


def test_ema_follows_training_from_the_first_steps():
  """EMA decay warms up: with decay 0.999 a fixed-decay average would still be ~99.7% the
  random init after 3 steps; the warmed-up one follows the params."""
  cfg = small_config()
  cfg.mesh.shape = (1, 1, 1)
  cfg.train.update(ema_decay=0.999, learning_rate=1e-2, warmup_steps=1)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  run = trainer.setup_training(cfg, mesh, trainer.abstract_batch(cfg.data, 8), num_datasets=1)
  init = jax.device_get(run.init_state(jax.random.key(0)).params)
  _, _, state, _ = sharded_steps.train_steps(cfg, jax.devices()[:1], [make_batch(cfg, 8, seed=i) for i in range(3)])
  params, ema = jax.device_get(state.params), jax.device_get(state.ema_params)
  dist = lambda a, b: np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  assert dist(ema, params) < 0.5 * dist(init, params), (dist(ema, params), dist(init, params))
