"""Joint prediction (family 3): action-free rows, learning, the decoupled (UWM) inference modes,
inverse dynamics on a synthetic linear system, and the sharded step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import joint_wam
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import registry
from tests import sharded_steps
from tests.models import fit
from wam_jax.training import sharding, trainer


def small_config(preset="tiny", **model_overrides):
  cfg = joint_wam.get_config(preset)
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.model.head.flow.update(width=32, depth=1, num_heads=2, mlp_dim=64, num_sampling_steps=3)
  cfg.model.video.num_sampling_steps = 2
  cfg.data.update(image_size=32, history=2, action_horizon=4, max_text_len=8, future_offset=2)
  cfg.train.update(steps=10, warmup_steps=1, batch_size=8, compute_dtype="float32", init_from="")
  cfg.mesh.shape = (1, 1, 1)
  cfg.model.update(model_overrides)
  return cfg


def setup(cfg, devices=None, batch_size=None):
  mesh = sharding.make_mesh(cfg.mesh.shape, devices or jax.devices()[:1])
  return trainer.setup_training(cfg, mesh, trainer.abstract_batch(cfg.data, batch_size or cfg.train.batch_size),
                                num_datasets=2)


def init(cfg, batch):
  model = registry.build_model(cfg, num_datasets=2)
  params = jax.jit(lambda b: registry.init_params(model, jax.random.key(0), b))(batch)
  return model, nn_unbox(params)


def nn_unbox(params):
  return nn.meta.unbox(params)


def perturbed(params, scale=0.05):
  """Params with every leaf nudged: the zero-initialised output layers would otherwise make
  the generated frames independent of the noise at initialisation."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def observation(batch):
  return {k: v for k, v in batch.items() if not k.startswith("future") and k not in ("actions", "action_mask", "step")}


# The decoupled preset compiles a larger step (noisy action tokens, several modes): its variants
# run with -m slow to keep the default suite near 10 minutes; the joint readout runs by default.
PRESETS = ["tiny", pytest.param("uwm_tiny", marks=pytest.mark.slow)]


# --- masks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_action_free_rows_give_zero_action_loss_gradient(preset):
  cfg = small_config(preset, video_weight=0.0)
  batch = make_batch(cfg, 4, num_datasets=2)
  batch["action_mask"][[0, 2]] = False  # action-free rows
  model, params = init(cfg, batch)

  def loss(params, actions):
    return registry.loss_fn(model, params, dict(batch, actions=actions), jax.random.key(3))[0]

  g_params, g_actions = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(batch["actions"]))
  g_actions = np.asarray(g_actions)
  assert not g_actions[[0, 2]].any()                 # their actions never reach the loss
  assert np.abs(g_actions[[1, 3]]).sum() > 0
  batch["action_mask"][:] = False                    # an all-video batch: no action-loss gradient at all
  g_params = jax.jit(jax.grad(loss))(params, jnp.asarray(batch["actions"]))
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(g_params))


# --- learning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_loss_falls_on_a_tiny_batch(preset):
  cfg = small_config(preset)
  cfg.train.update(learning_rate=3e-3, warmup_steps=1)
  run = setup(cfg)
  state = run.init_state(jax.random.key(0))
  batch = trainer._device_batch(make_batch(cfg, 8, num_datasets=2), run.batch_shardings)
  losses = []
  for _ in range(25):
    state, m = run.train_step(state, batch)
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


# --- decoupled modes -----------------------------------------------------------------------------

@pytest.mark.slow  # five modes, each compiled: ~1-2 min on 2 cores
def test_decoupled_modes_shapes_and_determinism():
  cfg = small_config("uwm_tiny")
  full = make_batch(cfg, 2, num_datasets=2)
  params = perturbed(init(cfg, full)[1])
  k, a, s = cfg.data.action_horizon, cfg.data.action_dim, cfg.data.image_size
  obs = observation(full)
  with_chunk = dict(obs, actions=full["actions"])
  with_future = dict(obs, future_image_primary=full["future_image_primary"])
  outputs = {}
  for mode, skip, method, batch in [("policy", True, "actions", obs), ("policy", False, "actions", obs),
                                    ("inverse_dynamics", True, "actions", with_future),
                                    ("forward_dynamics", True, "frames", with_chunk),
                                    ("video", True, "frames", obs)]:
    cfg.model.update(mode=mode, skip_video=skip)
    model = registry.build_model(cfg, num_datasets=2)
    fn = registry.predict_actions if method == "actions" else registry.predict_frames
    predict = jax.jit(lambda p, b, r: fn(model, p, b, r))
    x, y, z = (jax.device_get(predict(params, batch, jax.random.key(i))) for i in (7, 7, 8))
    if method == "actions":
      assert x.shape == (2, k, a)
    else:
      x, y, z = x["primary"], y["primary"], z["primary"]
      assert x.shape == (2, cfg.data.num_future, s, s, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, y)
    assert np.any(x != z), (mode, skip)
    outputs[mode, skip] = x
  assert np.any(outputs["policy", True] != outputs["policy", False])
  cfg.model.mode = "video"
  with pytest.raises(ValueError, match="predicts frames, not actions"):
    registry.predict_actions(registry.build_model(cfg, num_datasets=2), params, obs, jax.random.key(0))
  cfg.model.mode = "inverse_dynamics"
  with pytest.raises(ValueError, match="needs the batch's future frames"):
    registry.predict_actions(registry.build_model(cfg, num_datasets=2), params, obs, jax.random.key(0))


def chunks_on_both_paths(cfg, params, batch):
  """The chunk predicted with skip_video True, then False (same params and key): two [B, K, A]."""
  chunks = []
  for skip in (True, False):
    cfg.model.skip_video = skip
    model = registry.build_model(cfg, num_datasets=2)
    chunks.append(np.asarray(jax.jit(lambda p, b, r: registry.predict_actions(model, p, b, r))(
        params, observation(batch), jax.random.key(0))))
  return chunks


def test_joint_readout_skip_video_gives_the_same_chunk():
  """The action queries never attend to the frame tokens: leaving them out changes nothing."""
  cfg = small_config("tiny")
  batch = make_batch(cfg, 2, num_datasets=2)
  _, params = init(cfg, batch)
  np.testing.assert_allclose(*chunks_on_both_paths(cfg, params, batch), atol=1e-5)


def test_video_weight_zero_is_the_actions_only_network_without_a_frame_generator():
  """The ablation has no frame tokens: it trains, gives the same chunk on either inference path, and
  tells the trainer and evaluator it predicts no frames."""
  cfg = small_config("tiny", video_weight=0.0)
  batch = make_batch(cfg, 4, num_datasets=2)
  model, params = init(cfg, batch)
  assert not registry.predicts_frames(model)
  assert not any("future_query" in "/".join(map(str, k)) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0])
  run = setup(cfg, batch_size=4)
  assert run.predict_frames is None  # no frame summaries, no rollout consistency
  state = run.init_state(jax.random.key(0))
  state, m = run.train_step(state, trainer._device_batch(batch, run.batch_shardings))
  assert np.isfinite(float(m["loss"])) and "video_loss" not in m
  np.testing.assert_allclose(*chunks_on_both_paths(cfg, params, batch), atol=1e-5)
  full = small_config("tiny")
  assert registry.predicts_frames(registry.build_model(full, num_datasets=2))


def test_config_errors_name_the_field():
  for overrides, field in [(dict(mode="dreaming"), "config.model.mode"),
                           (dict(mode="video"), "config.model.mode"),
                           (dict(decoupled=True), "config.model.decoupled"),
                           (dict(video_weight=-1.0), "config.model.video_weight")]:
    with pytest.raises(ValueError, match=field):
      registry.check_model_config(small_config("tiny", **overrides).model)
  with pytest.raises(ValueError, match="known: tiny, base"):
    joint_wam.get_config("huge")


# --- inverse dynamics on a synthetic linear system -----------------------------------------------

def linear_system(cfg, batch_size, seed):
  """A bright square over gray moves by the chunk's displacement: future position = p0 + k * a[:2]
  (the action is a velocity held for the chunk; dims past 2 are zero). The history frames are the
  same still frame, so only the future frame tells the action."""
  rs = np.random.RandomState(seed)
  s, size, k = cfg.data.image_size, 4, cfg.data.future_offset
  batch = make_batch(cfg, batch_size, seed=seed, num_datasets=2)
  hist = np.full((batch_size, 2, s, s, 3), 40, np.uint8)
  fut = np.full((batch_size, 1, s, s, 3), 40, np.uint8)
  actions = np.zeros(batch["actions"].shape, np.float32)
  for i in range(batch_size):
    v = rs.randint(-2, 3, size=2)
    p0 = rs.randint(2 * k, s - size - 2 * k + 1, size=2)
    hist[i, :, p0[0]:p0[0] + size, p0[1]:p0[1] + size] = 220
    p1 = p0 + k * v
    fut[i, 0, p1[0]:p1[0] + size, p1[1]:p1[1] + size] = 220
    actions[i, :, :2] = v / 2.0
  batch.update(image_primary=hist, future_image_primary=fut, actions=actions,
               history_mask=np.ones((batch_size, 2), bool), future_mask=np.ones((batch_size, 1), bool),
               action_mask=np.ones(batch["action_mask"].shape, bool),
               action_dim_mask=np.ones(batch["action_dim_mask"].shape, bool))
  return batch


@pytest.mark.slow  # trains ~300 steps (~2 min on 2 cores)
def test_inverse_dynamics_recovers_the_action_of_a_linear_system_from_clean_frames():
  cfg = small_config("uwm_tiny")
  # Clean frames (tau_v = 0) in 40% of the rows, so the inverse-dynamics mode is trained often.
  cfg.model.update(width=64, num_heads=4, mlp_dim=128, patch_size=4, endpoint_prob=0.8)
  cfg.data.update(image_size=16)
  cfg.train.update(steps=1000, warmup_steps=20, learning_rate=2e-3, batch_size=32)
  m = fit.train_then_evaluate(setup, cfg, linear_system)
  # Actions are in {-1, -0.5, 0, 0.5, 1} on 2 dims (mean |a| 0.6 there, 0 elsewhere).
  assert m["id_action_l1"] < 0.5 * m["policy_action_l1"], m
  assert m["id_action_l1"] < 0.12, m


# --- sharding ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_step_matches_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 host devices (tests/conftest.py sets XLA_FLAGS)")
  cfg = small_config("uwm_tiny")
  batches = [make_batch(cfg, 8, seed=i, num_datasets=2) for i in range(2)]
  for b in batches:
    b["action_mask"][5] = False
  sharded_steps.assert_sharded_matches_single_device(cfg, batches, num_datasets=2)
