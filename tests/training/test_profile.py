"""The step profiler attributes XLA:CPU thunks to model parts and directions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wam_jax.training import profile


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(name="ln_attn")(x)
    x = nn.Dense(256, name="attn")(x)
    x = nn.gelu(nn.Dense(256, name="mlp")(x))
    return jnp.mean(x ** 2)


def _step():
  net, tx = _Net(), optax.adamw(1e-3)
  x = jnp.ones((128, 64))
  params = net.init(jax.random.key(0), x)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x):
    loss, grads = jax.value_and_grad(net.apply)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, (params, opt_state, x)


def test_parse_hlo_names_parts_directions_and_kinds():
  step, args = _step()
  instructions = profile.parse_hlo(step.lower(*args).compile().as_text())
  seen = {(i.part, i.direction) for i in instructions.values()}
  assert {("mlp", "fwd"), ("mlp", "bwd"), ("attention", "fwd"), ("norm", "fwd"),
          ("optimizer/other", "update")} <= seen
  assert {i.kind for i in instructions.values() if i.part in ("mlp", "attention")} & {"dot"}


def test_trace_attributes_thunk_time_to_the_model():
  step, args = _step()
  compiled = step.lower(*args).compile()
  instructions = profile.parse_hlo(compiled.as_text())
  state = list(args)

  def run():
    for _ in range(3):
      state[0], state[1], loss = compiled(*state)
    loss.block_until_ready()

  run()
  result = profile.attribute(profile.trace_thunks(run), instructions, steps=3)
  assert result["total_ms"] > 0
  assert result["by_part"].get(("mlp", "fwd"), 0) > 0 and result["by_part"].get(("mlp", "bwd"), 0) > 0
  assert result["by_kind"]["dot"] > 0
  table = profile.markdown(result, wall_ms=1.0)
  assert "| mlp |" in table and "| dot |" in table
