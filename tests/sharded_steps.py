"""Sharded == unsharded: one check every family's tests share."""

import chex
import jax
import numpy as np

from wam_jax.training import sharding, trainer


def train_steps(cfg, devices, batches, num_datasets: int = 1):
  """Trains on ``batches`` from a fresh init on a ``cfg.mesh.shape`` mesh over ``devices``.

  Returns (params on host, [loss per step], final state, [metrics per step on host]).
  """
  mesh = sharding.make_mesh(cfg.mesh.shape, devices)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
  run = trainer.setup_training(cfg, mesh, spec, num_datasets=num_datasets)
  state = run.init_state(jax.random.key(0))
  losses, metrics = [], []
  for b in batches:
    state, m = run.train_step(state, trainer._device_batch(b, run.batch_shardings))  # pylint: disable=protected-access
    losses.append(float(m["loss"]))
    metrics.append(jax.device_get(m))
  return jax.device_get(state.params), losses, state, metrics


def assert_sharded_matches_single_device(cfg, batches, *, num_datasets: int = 1, shape=(2, 2, 2),
                                         rules: str = ""):
  """The same steps on 1 device and on an 8-device ``shape`` mesh give the same losses and params
  (float32 compute; reduction order differs, hence the tolerances). Returns the sharded final state."""
  cfg.mesh.shape = (1, 1, 1)
  p1, l1, _, _ = train_steps(cfg, jax.devices()[:1], batches, num_datasets)
  cfg.mesh.shape = shape
  if rules:
    cfg.mesh.rules_name = rules
  p8, l8, state8, _ = train_steps(cfg, jax.devices()[:8], batches, num_datasets)
  np.testing.assert_allclose(l1, l8, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(p1, p8, rtol=2e-4, atol=2e-5)
  return state8
