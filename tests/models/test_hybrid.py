"""The hybrid VLA-WAM (issue 13 stage 3): the chunk depends on the instruction through the
backbone's keys and values, backbone tuning freezes what it says, the loss falls."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import hybrid as hybrid_configs
from wam_jax.data import fake_batch
from wam_jax.models import layers, registry
from wam_jax.training import state as state_lib


def tiny_hybrid_config(**model):
  cfg = hybrid_configs.get_config("tiny")
  cfg.data.update(text_tokenizer="", image_size=32, max_text_len=8, action_horizon=4)
  cfg.model.vlm.update(width=32, depth=2, num_heads=2, mlp_dim=64, vocab_size=257)
  cfg.model.vlm.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, **model)
  cfg.model.expert.update(width=16, mlp_dim=32)
  cfg.model.head.flow.update(width=16, mlp_dim=32, num_sampling_steps=3)
  return cfg


def setup(cfg, batch_size=4):
  batch = {k: jnp.asarray(v) for k, v in fake_batch.make_batch(cfg, batch_size).items()}
  model = registry.build_model(cfg, num_datasets=1)
  params = nn.unbox(jax.jit(lambda b: registry.init_params(model, jax.random.key(0), b))(batch))
  return model, params, batch


@pytest.mark.parametrize("head", ["flow", "l1"])
def test_chunk_depends_on_instruction_frame_and_proprio(head):
  cfg = tiny_hybrid_config()
  cfg.model.head.name = head
  model, params, batch = setup(cfg)
  act = jax.jit(lambda b: registry.predict_actions(model, params, b, jax.random.key(3)))
  a = act(batch)
  chex.assert_shape(a, (4, 4, cfg.data.action_dim))
  chex.assert_trees_all_close(act(batch), a)  # deterministic given the rng
  for key, change in (("language_tokens", lambda x: x.at[:, :2].set(9)),
                      ("image_primary", lambda x: x.at[:, -1].set(255 - x[:, -1])),
                      ("proprio", lambda x: x + 1.0)):
    moved = act(dict(batch, **{key: change(batch[key])}))
    assert float(jnp.abs(moved - a).max()) > 1e-4, key
  # Padding after the instruction is never read.
  padded = dict(batch, language_tokens=jnp.where(batch["language_mask"], batch["language_tokens"], 77))
  chex.assert_trees_all_close(act(padded), a, atol=1e-5)


@pytest.fixture(scope="module")
def params_and_grads():
  model, params, batch = setup(tiny_hybrid_config())
  grads = jax.jit(jax.grad(lambda p: registry.loss_fn(model, p, batch, jax.random.key(1))[0]))(params)
  return params, grads


def _moved(a, b) -> bool:
  return any(np.any(np.asarray(x) != np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("tuning,trained", [("frozen", set()), ("last_n_blocks", {"block_1", "ln_final"}),
                                            ("full", {"block_0", "block_1", "ln_final"})])
def test_backbone_tuning_trains_exactly_what_it_says(params_and_grads, tuning, trained):
  params, grads = params_and_grads
  cfg = tiny_hybrid_config(backbone_tuning=tuning, last_n_blocks=1)
  tx = state_lib.make_optimizer(cfg.train, registry.build_model(cfg, num_datasets=1).lr_multipliers())
  update = jax.jit(lambda p, o: (lambda u, o2: (optax.apply_updates(p, u), o2))(*tx.update(grads, o, p)))
  new, opt = update(params, tx.init(params))  # the schedule's step 0 has learning rate 0
  new, _ = update(new, opt)
  moved = {name for name, sub in new["vlm"]["backbone"].items() if _moved(sub, params["vlm"]["backbone"][name])}
  # Warmup steps are small, not zero: any change counts. The backbone's final norm feeds only the
  # world module, whose output layer starts at zero: no gradient reaches it in two steps.
  assert moved == trained - {"ln_final"}
  assert _moved(new["vlm"]["vision"], params["vlm"]["vision"]) == (tuning == "full")
  assert _moved(new["expert"], params["expert"])


def test_loss_falls_and_world_module_reports_frames():
  cfg = tiny_hybrid_config()
  model, params, batch = setup(cfg, batch_size=8)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, i):
    (loss, _), g = jax.value_and_grad(lambda p: registry.loss_fn(model, p, batch, jax.random.key(0)),
                                      has_aux=True)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for i in range(40):
    params, opt, loss = step(params, opt, i)
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
  _, metrics = jax.jit(lambda p: registry.loss_fn(model, p, batch, jax.random.key(1), train=False))(params)
  for key in ("video_psnr", "copy_last_psnr", "action_l1", "denoise_mse"):
    assert np.isfinite(float(metrics[key])), key
  frames = jax.jit(lambda p: registry.predict_frames(model, p, batch, jax.random.key(1)))(params)
  assert frames["primary"].shape == (8, 1, 32, 32, 3) and frames["primary"].dtype == jnp.uint8


def test_config_errors_name_the_field():
  for field, value, match in (("backbone_tuning", "half", "backbone_tuning"),
                              ("video_weight", -1.0, "video_weight")):
    cfg = tiny_hybrid_config(**{field: value})
    with pytest.raises(ValueError, match=match):
      registry.check_model_config(cfg.model)
  cfg = tiny_hybrid_config(backbone_tuning="last_n_blocks")
  cfg.model.vlm.scan = True
  with pytest.raises(ValueError, match="vlm.scan"):
    registry.check_model_config(cfg.model)


def test_scanned_backbone_and_expert_equal_the_unrolled_ones():
  """vlm.scan=True (the 1b preset's layout: the expert scanned beside the backbone, reading layer l's
  keys and values) with the unrolled parameters stacked gives the same loss, gradients and chunk."""
  cfg = tiny_hybrid_config()
  model, params, batch = setup(cfg)
  scanned_cfg = tiny_hybrid_config()
  scanned_cfg.model.vlm.update(scan=True, remat="full")
  scanned_model = registry.build_model(scanned_cfg, num_datasets=1)
  depth = cfg.model.vlm.depth

  def stack(tree):
    tree = jax.tree.map(lambda x: x, tree)  # a copy to edit
    tree["vlm"]["backbone"] = layers.stack_blocks(tree["vlm"]["backbone"], depth)
    tree["expert"] = layers.stack_blocks(tree["expert"], depth)
    return tree

  stacked = stack(params)
  assert jax.tree.structure(stacked) == jax.tree.structure(  # shapes only: nothing to compile
      nn.unbox(jax.eval_shape(lambda b: registry.init_params(scanned_model, jax.random.key(0), b), batch)))
  grad = lambda m: jax.jit(jax.value_and_grad(lambda p: registry.loss_fn(m, p, batch, jax.random.key(1))[0]))
  (l0, g0), (l1, g1) = grad(model)(params), grad(scanned_model)(stacked)
  chex.assert_trees_all_close(l1, l0, rtol=1e-5)
  chex.assert_trees_all_close(g1, stack(g0), rtol=1e-3, atol=1e-6)
  act = lambda m, p: jax.jit(lambda b: registry.predict_actions(m, p, b, jax.random.key(3)))(batch)
  chex.assert_trees_all_close(act(scanned_model, stacked), act(model, params), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # ~1 min: two train steps compiled
def test_flops_of_the_scanned_hybrid_count_every_layer():
  """XLA counts a scan's body once: the trainer counts the step with every nested ``scan`` field
  (the hybrid's is ``model.vlm.scan``) unrolled, so scanned and unrolled report the same FLOPs."""
  from wam_jax.training import sharding, trainer
  assert trainer.scanned_fields(hybrid_configs.get_config("1b").model) == [("vlm", "scan")]
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])

  def flops(scan):
    cfg = tiny_hybrid_config()
    cfg.model.vlm.scan = scan
    cfg.train.batch_size = 2
    spec = trainer.abstract_batch(cfg.data, 2)
    run = trainer.setup_training(cfg, mesh, spec, num_datasets=1)
    return run.step_flops(run.train_step.lower(run.abstract_state, spec).compile(), spec)

  np.testing.assert_allclose(flops(True), flops(False), rtol=0.05)
