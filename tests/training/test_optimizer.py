"""Per-parameter learning-rate multipliers and freezing in the shared optimizer (state.make_optimizer)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from wam_jax.training import state as state_lib


def train_cfg():
  cfg = common.base_config().train
  cfg.update(learning_rate=1e-2, warmup_steps=1, steps=10, weight_decay=0.1, grad_clip_norm=1.0)
  return cfg


def params():
  box = lambda x, names: nn.LogicallyPartitioned(jnp.asarray(x, jnp.float32), names)
  return {"backbone": {"block_0": {"kernel": box(np.ones((3, 4)), ("embed", "mlp"))},
                       "block_1": {"kernel": box(np.ones((3, 4)), ("embed", "mlp"))}},
          "head": {"kernel": box(np.ones((4, 2)), ("embed", None)), "bias": box(np.zeros(2), (None,))}}


def second_update(tx, grads):
  """The updates of the second step (the warmup makes the first learning rate 0)."""
  boxed = params()
  opt_state = state_lib.unbox(tx.init(boxed))
  p = state_lib.unbox(boxed)
  _, opt_state = jax.jit(tx.update)(grads(p), opt_state, p)
  return jax.jit(tx.update)(grads(p), opt_state, p)[0]


def one_update(rules):
  tx = state_lib.make_optimizer(train_cfg(), rules)
  return None, second_update(tx, lambda p: jax.tree.map(lambda x: jnp.full_like(x, 0.5), p))


def test_frozen_params_get_exactly_zero_updates_and_no_state():
  p, updates = one_update((("backbone/.*", 0.0),))
  for leaf in jax.tree.leaves(updates["backbone"]):
    np.testing.assert_array_equal(leaf, 0.0)
    assert not np.signbit(leaf).any()
  assert all(np.all(u != 0) for u in jax.tree.leaves(updates["head"]["kernel"]))


def test_multiplier_scales_the_whole_step_including_weight_decay():
  _, full = one_update(())
  _, half = one_update((("backbone/block_1/.*", 0.5),))
  np.testing.assert_allclose(half["backbone"]["block_1"]["kernel"], 0.5 * full["backbone"]["block_1"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(half["head"]["kernel"], full["head"]["kernel"], rtol=1e-6)


def test_frozen_gradients_do_not_count_in_the_clipping_norm():
  cfg = train_cfg()
  cfg.update(grad_clip_norm=0.5, weight_decay=0.0)
  tx = state_lib.make_optimizer(cfg, (("backbone/.*", 0.0),))

  def grads(p):
    g = jax.tree.map(lambda x: jnp.full_like(x, 10.0), p)
    g["backbone"] = jax.tree.map(lambda x: x * 1e12, g["backbone"])  # huge, but frozen
    return g
  updates = second_update(tx, grads)
  # Adam's first step is ~lr * sign(g) unless the clipped gradient is swamped by its eps (1e-8):
  # had the frozen gradients counted, clipping would shrink the head's to ~1e-13 and its step ~1e-7.
  assert np.all(np.abs(updates["head"]["kernel"]) > 1e-3)


def test_a_rule_matching_nothing_is_an_error_naming_it():
  with pytest.raises(ValueError, match="backbnoe"):
    one_update((("backbnoe/.*", 0.0),))
  with pytest.raises(ValueError, match=">= 0"):
    state_lib.make_optimizer(train_cfg(), (("head/.*", -1.0),))


def test_no_rules_keeps_the_plain_optimizer_state_layout():
  boxed = params()
  plain = state_lib.make_optimizer(train_cfg()).init(boxed)
  assert jax.tree.structure(plain) == jax.tree.structure(state_lib.make_optimizer(train_cfg(), ()).init(boxed))
  assert "multi_transform" not in repr(jax.tree.structure(plain)).lower()
