"""Sharded == unsharded: one check every family's tests share."""

import chex
import jax
import numpy as np

from wam_jax.models import registry
from wam_jax.training import sharding, trainer


def train_steps(cfg, devices, batches, num_datasets: int = 1, with_grads: bool = False):
  """Trains on ``batches`` from a fresh init on a ``cfg.mesh.shape`` mesh over ``devices``.

  Returns (params on host, [loss per step], final state, [metrics per step on host]); with
  ``with_grads`` each step's metrics also hold ``grads``: the gradient of that step's loss at the
  params it starts from (the step's own rng), on host.
  """
  mesh = sharding.make_mesh(cfg.mesh.shape, devices)
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
  run = trainer.setup_training(cfg, mesh, spec, num_datasets=num_datasets)
  state = run.init_state(jax.random.key(0))
  grads_of = None
  if with_grads:
    def grads(state, batch):
      rng = trainer.step_rng(state)
      return jax.grad(lambda p: registry.loss_fn(run.model, p, batch, rng)[0])(state.params)
    grads_of = trainer._RulesJit(jax.jit(grads, in_shardings=(run.state_shardings, run.batch_shardings)),  # pylint: disable=protected-access
                                 mesh, run.rules)
  losses, metrics = [], []
  for b in batches:
    b = trainer._device_batch(b, run.batch_shardings)  # pylint: disable=protected-access
    g = jax.device_get(grads_of(state, b)) if grads_of else None
    state, m = run.train_step(state, b)
    losses.append(float(m["loss"]))
    metrics.append(dict(jax.device_get(m), **({"grads": g} if grads_of else {})))
  return jax.device_get(state.params), losses, state, metrics


def assert_sharded_matches_single_device(cfg, batches, *, num_datasets: int = 1, shape=(2, 2, 2),
                                         rules: str = ""):
  """The same steps on 1 device and on an 8-device ``shape`` mesh give the same losses, gradients
  and params (float32 compute; reduction order differs, hence the tolerances). Returns the sharded
  final state.

  Sharding can only change how sums are split and ordered, which the gradients show at float
  noise: they are compared tightly at every step. The params after the steps agree to float noise
  except for at most 0.1% of elements, which must agree within one Adam update per step: Adam
  divides a gradient by its own magnitude, so an element whose true gradient is ~0 takes a step of
  up to the learning rate with the sign of its reduction noise.
  """
  cfg.mesh.shape = (1, 1, 1)
  p1, l1, _, m1 = train_steps(cfg, jax.devices()[:1], batches, num_datasets, with_grads=True)
  cfg.mesh.shape = shape
  if rules:
    cfg.mesh.rules_name = rules
  p8, l8, state8, m8 = train_steps(cfg, jax.devices()[:8], batches, num_datasets, with_grads=True)
  np.testing.assert_allclose(l1, l8, rtol=1e-5, atol=1e-5)
  for step, (a, b) in enumerate(zip(m1, m8)):
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a["grads"]))
    try:
      chex.assert_trees_all_close(a["grads"], b["grads"], rtol=1e-3, atol=1e-5 * scale)
    except AssertionError as e:
      raise AssertionError(f"gradients of step {step} differ between 1 device and mesh {shape}: {e}") from e
  one_update_per_step = 2.0 * cfg.train.learning_rate * len(batches)
  chex.assert_trees_all_close(p1, p8, rtol=2e-4, atol=one_update_per_step)
  close = jax.tree.leaves(jax.tree.map(lambda a, b: np.isclose(a, b, rtol=2e-4, atol=2e-5), p1, p8))
  far = sum(int((~c).sum()) for c in close)
  assert far <= 1e-3 * sum(c.size for c in close), f"{far} params differ by more than float noise"
  return state8
