"""Train state and optimizer: params, AdamW (warmup + cosine, clipping), EMA, step, rng."""

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 []
  params: Any                  # float32 params (pure pytree)
  opt_state: Any
  ema_params: Optional[Any]    # None when train.ema_decay == 0
  rng: jax.Array               # key data uint32 [2]


def learning_rate_schedule(train_cfg):
  peak = train_cfg.learning_rate
  warmup = max(int(train_cfg.warmup_steps), 1)
  decay = max(int(train_cfg.steps) - warmup, 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=warmup + decay,
      end_value=peak * train_cfg.end_learning_rate_factor)


def ema_decay_at(step, decay: float):
  """EMA decay warmed up as min(decay, (1 + t) / (10 + t)) at step t.

  The average starts from the random init; with a fixed decay d it would carry
  that init with weight d^t (0.999^1000 = 37%). The warm-up lets the average
  follow the params early (0.1 at t=0, 0.5 at t=8, 0.9 at t=80) and reach d
  only once it holds ~1/(1-d) steps of training.
  """
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update_ema(ema_params, params, step, decay: float):
  d = ema_decay_at(step, decay)
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema_params, params)


def _decay_mask(params):
  """Weight decay on matrices only (not biases, norms or 1-D embeddings)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_cfg):
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=_decay_mask))


def create_state(boxed_params, tx, rng, ema: bool) -> TrainState:
  """Builds the state from (possibly logically boxed) params.

  Called under jit with out_shardings so every leaf is created sharded. Boxes
  are kept through the optimizer so its state inherits the params' axis names.
  """
  opt_state = tx.init(boxed_params)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=boxed_params, opt_state=opt_state,
      ema_params=boxed_params if ema else None, rng=jax.random.key_data(rng))


def unbox(tree):
  return nn.meta.unbox(tree)
