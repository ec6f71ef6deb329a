"""Train state and optimizer: params, AdamW (warmup + cosine, clipping), EMA, step, rng."""

import re
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


def _adamw(train_cfg):
  return optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                     weight_decay=train_cfg.weight_decay, mask=_decay_mask)


def param_path(key_path) -> str:
  """A parameter's path as the multiplier rules match it: 'predictor/transformer/block_0/attn/qkv/kernel'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def _is_param(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)  # a boxed (logically partitioned) leaf is one parameter


def lr_multiplier_tree(params, rules):
  """The multiplier of every parameter (first rule whose regex fully matches its path; else 1.0).

  Raises ValueError naming a rule that matches no parameter (a typo must not
  silently train what was meant to be frozen).
  """
  compiled = [(re.compile(pattern), float(m)) for pattern, m in rules]
  used = set()

  def multiplier(key_path, _):
    path = param_path(key_path)
    for i, (regex, m) in enumerate(compiled):
      if regex.fullmatch(path):
        used.add(i)
        return m
    return 1.0

  tree = jax.tree_util.tree_map_with_path(multiplier, params, is_leaf=_is_param)
  unused = [rules[i][0] for i in range(len(rules)) if i not in used]
  if unused:
    raise ValueError(f"learning-rate multiplier rules match no parameter: {unused} (paths look like "
                     f"{param_path(jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_param)[0][0][0])!r})")
  return tree


def _freeze(labels_fn):
  """Zeroes the gradients of frozen parameters (so they count nothing in the clipping norm)."""
  def update(updates, state, params=None):
    labels = labels_fn(updates)
    return jax.tree.map(lambda u, l: jnp.zeros_like(u) if l == "frozen" else u, updates, labels), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_cfg, lr_multipliers=()):
  """Global-norm clipping + AdamW on the warmup-cosine schedule.

  ``lr_multipliers``: ((regex over ``param_path``, multiplier), ...), first full
  match wins, unmatched parameters 1.0 (a family's ``lr_multipliers()``, e.g.
  video_wam's ``policy.adapt``). Multiplier 0 freezes a parameter: no update,
  no weight decay, no optimizer state, and its gradient is left out of the
  clipping norm, so it stays bitwise unchanged. 0 < m scales its step (the
  learning rate and the decoupled weight decay) by m. Without rules the
  optimizer (and its state layout) is the plain one.
  """
  clip = optax.clip_by_global_norm(train_cfg.grad_clip_norm)
  if not lr_multipliers:
    return optax.chain(clip, _adamw(train_cfg))
  rules = tuple((str(p), float(m)) for p, m in lr_multipliers)
  for pattern, m in rules:
    if m < 0:
      raise ValueError(f"learning-rate multiplier {m} for {pattern!r} must be >= 0")

  def labels(params):
    return jax.tree.map(lambda m: "frozen" if m == 0 else f"lr_x{m:g}", lr_multiplier_tree(params, rules))

  groups = {"frozen": optax.set_to_zero()}
  for m in {m for _, m in rules if m > 0} | {1.0}:
    groups[f"lr_x{m:g}"] = _adamw(train_cfg) if m == 1.0 else optax.chain(_adamw(train_cfg), optax.scale(m))
  return optax.chain(_freeze(labels), clip, optax.multi_transform(groups, labels))


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
