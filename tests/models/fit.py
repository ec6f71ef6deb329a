"""The learning tests' one loop: train a small model from scratch on a synthetic task, then read its
metrics on a held-out batch of the same task."""

import jax

from wam_jax.training import trainer


def train_then_evaluate(setup, cfg, make_batch, held_out_size: int = 64) -> dict:
  """``setup(cfg, batch_size=None)`` -> TrainingSetup; ``make_batch(cfg, batch_size, seed=)`` -> batch.
  Trains ``cfg.train.steps`` steps (batch ``cfg.train.batch_size``, seed = step) and returns the
  eval step's metrics on a ``held_out_size`` batch of seed 10_000 (never trained on), on host."""
  run = setup(cfg)
  state = run.init_state(jax.random.key(0))
  for i in range(cfg.train.steps):
    batch = make_batch(cfg, cfg.train.batch_size, seed=i)
    state, _ = run.train_step(state, trainer._device_batch(batch, run.batch_shardings))  # pylint: disable=protected-access
  held_out = make_batch(cfg, held_out_size, seed=10_000)
  held_out = trainer._device_batch(held_out, setup(cfg, batch_size=held_out_size).batch_shardings)  # pylint: disable=protected-access
  return jax.device_get(run.eval_step(state.params, held_out, jax.random.key(0)))
