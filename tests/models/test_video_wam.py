"""The video WAM (family 1): masks and shapes, learning beyond copy-last, stage-to-stage restore,
frozen adaptation, both inference paths, and the sharded step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import video_wam
from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import registry
from wam_jax.models.families import video_wam as video_wam_lib
from wam_jax.models import video_predictor as vp
from wam_jax.training import checkpoint as ckpt_lib
from tests import sharded_steps
from tests.models import fit
from wam_jax.training import sharding, trainer


def small_config(preset="pretrain_tiny", **model_overrides):
  cfg = video_wam.get_config(preset)
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.data.update(image_size=32, history=2, action_horizon=4, max_text_len=8, future_offset=2)
  cfg.train.update(steps=10, warmup_steps=1, batch_size=8, compute_dtype="float32", init_from="")
  cfg.mesh.shape = (1, 1, 1)
  for key, value in model_overrides.items():
    section, field = key.split(".")
    cfg.model[section][field] = value
  return cfg


def setup(cfg, devices=None, num_datasets=2, batch_size=None):
  devices = devices or jax.devices()[:1]
  mesh = sharding.make_mesh(cfg.mesh.shape, devices)
  spec = trainer.abstract_batch(cfg.data, batch_size or cfg.train.batch_size)
  return trainer.setup_training(cfg, mesh, spec, num_datasets=num_datasets)


def observation(batch):
  """What a policy gets at inference: no future frames, actions or step."""
  return {k: v for k, v in batch.items() if not k.startswith("future") and k not in ("actions", "action_mask", "step")}


def moving_squares(cfg, batch_size, seed, size=4, speed=1):
  """Batches of a square moving at a constant velocity over a gray background.

  History = frames at t-1 and t, target = frame at t+k: predicting it needs the
  velocity (a nonzero step in {-speed..speed}^2 px per frame), which only the
  two history frames give.
  """
  rs = np.random.RandomState(seed)
  s, k = cfg.data.image_size, cfg.data.future_offset
  batch = make_batch(cfg, batch_size, seed=seed)
  hist = np.full((batch_size, 2, s, s, 3), 40, np.uint8)
  fut = np.full((batch_size, 1, s, s, 3), 40, np.uint8)
  for i in range(batch_size):
    v = np.zeros(2, int)
    while not v.any():  # a still square is the copy baseline's exact answer: always move
      v = rs.randint(-speed, speed + 1, size=2)
    lo, hi = np.maximum(0, -v * (1 + k)), np.minimum(s - size, s - size - v * (1 + k))
    p0 = np.array([rs.randint(lo[j], hi[j] + 1) for j in range(2)])
    color = rs.randint(120, 256, size=3)
    for frames, idx, t in ((hist, 0, 0), (hist, 1, 1), (fut, 0, 1 + k)):
      y, x = p0 + v * t
      frames[i, idx, y:y + size, x:x + size] = color
  batch.update({"image_primary": hist, "future_image_primary": fut,
                "history_mask": np.ones((batch_size, 2), bool), "future_mask": np.ones((batch_size, 1), bool)})
  return batch


# --- masks and shapes --------------------------------------------------------------------------

def test_segment_mask_blocks():
  kinds = np.array([vp.CONTEXT] * 3 + [vp.ACTIONS] * 2 + [vp.FUTURE] * 2 + [vp.QUERIES] * 2)
  keys = np.ones((2, len(kinds)), bool)
  keys[:, 1] = False  # a padded context token
  mask = np.asarray(vp.segment_mask(kinds, jnp.asarray(keys), jnp.asarray([True, False])))
  ctx, act, fut, qry = (np.flatnonzero(kinds == k) for k in (vp.CONTEXT, vp.ACTIONS, vp.FUTURE, vp.QUERIES))
  for b in range(2):
    m = mask[b]
    assert not m[:, 1].any()                                     # padding is never attended
    assert not m[np.ix_(ctx, np.r_[act, fut, qry])].any()        # the context sees only itself
    assert m[np.ix_(fut, np.r_[0, 2, act, fut])].all()          # the future sees context, actions, itself
    assert not m[np.ix_(qry, act)].any()                         # queries never see the action chunk
    assert not m[np.ix_(np.r_[ctx, act, fut], qry)].any()       # nobody reads the queries
    assert m[np.ix_(qry, fut)].all() == (b == 0)                 # queries see the future only where asked


@pytest.mark.parametrize("frames,objective,stem", [
    ("pixels", "regression", ()),
    ("pixels", "regression", (4, 8)),
    pytest.param("pixels", "flow", (), marks=pytest.mark.slow),
    pytest.param("latents", "regression", (), marks=pytest.mark.slow),
    pytest.param("latents", "regression", (16,), marks=pytest.mark.slow)])
def test_output_shapes(frames, objective, stem):
  cfg = small_config("policy_tiny", **{"video.objective": objective})
  cfg.model.frames = frames
  cfg.model.update(latent_patch_size=2, stem=stem)
  run = setup(cfg)
  state = run.init_state(jax.random.key(0))
  pred_params = state.params["predictor"]
  # The history frames go through the conv stem (the VLA's encoders.conv_stem) before history_in;
  # the future segment stays in the frame representation.
  assert {f"history_stem_{i}" for i in range(len(stem))} == {k for k in pred_params if k.startswith("history_stem")}
  n, p = video_wam_lib.token_geometry(cfg.model, cfg.data.image_size)
  channels = 3 if frames == "pixels" else cfg.model.autoencoder.latent_channels
  side = int(round((p // channels) ** 0.5))
  stem_in = (side // 2 ** len(stem)) ** 2 * stem[-1] if stem else p
  assert pred_params["history_in"]["kernel"].shape == (stem_in, cfg.model.width)
  assert pred_params["future_out"]["kernel"].shape == (cfg.model.width, p)
  batch = make_batch(cfg, 8)
  d = cfg.data
  predicted = run.predict_frames(state.params, trainer._device_batch(batch, run.batch_shardings), jax.random.key(1))
  assert {k: (v.shape, v.dtype) for k, v in predicted.items()} == {
      "primary": ((8, d.num_future, d.image_size, d.image_size, 3), np.uint8)}
  metrics = run.eval_step(state.params, trainer._device_batch(batch, run.batch_shardings), jax.random.key(1))
  for name in ("video_loss", "video_psnr", "video_ssim", "copy_last_psnr", "copy_last_ssim", "action_l1"):
    assert np.isfinite(float(metrics[name])), name
  # A fresh predictor outputs zero change: its regression frames are the last frame (copy-last).
  if objective == "regression" and frames == "pixels":
    np.testing.assert_allclose(metrics["video_psnr"], metrics["copy_last_psnr"], rtol=1e-5)
    np.testing.assert_array_equal(predicted["primary"][:, 0], batch["image_primary"][:, -1])


def test_video_loss_ignores_frames_past_the_episode_end_and_actions_of_action_free_rows():
  cfg = small_config("policy_tiny")
  run = setup(cfg)
  params = run.init_state(jax.random.key(0)).params
  batch = make_batch(cfg, 8)
  batch["future_mask"][:3] = False
  batch["action_mask"][5] = False  # an action-free row
  loss = lambda b: float(registry.loss_fn(run.model, params, b, jax.random.key(0), train=False)[0])
  changed = dict(batch, future_image_primary=batch["future_image_primary"].copy(), actions=batch["actions"].copy())
  changed["future_image_primary"][:3] = 255 - changed["future_image_primary"][:3]
  changed["actions"][5] = -changed["actions"][5]
  assert loss(batch) == loss(changed)
  changed["future_image_primary"][4] = 255 - changed["future_image_primary"][4]
  assert loss(batch) != loss(changed)


def test_skip_video_reads_the_context_features_of_the_training_pass():
  """Queries that do not see the future get the same features with or without a future segment:
  skip_video's one pass is exactly what the queries read during training."""
  cfg = small_config("policy_tiny", **{"video.objective": "flow", "video.action_conditioned": True})
  run = setup(cfg)
  params = run.init_state(jax.random.key(0)).params
  batch = make_batch(cfg, 4)
  b, n, p = 4, 16, 3 * 8 * 8

  def readout(with_future):
    def f(model, batch):
      hist = model._tokens(batch, "image_")
      fut = jax.random.normal(jax.random.key(2), (b, 1, 1, n, p))
      return model._predict(batch, hist, model.encoder(batch), future=fut, tau=jnp.full((b,), 0.3), queries=True,
                            see_future=jnp.zeros((b,), bool), with_future=with_future)[1]
    return run.model.apply({"params": params}, batch, method=f)
  np.testing.assert_allclose(readout(True), readout(False), atol=1e-5)


# --- learning ------------------------------------------------------------------------------------

def squares_run(objective):
  """The ``objective`` predictor trained 300 steps on moving squares (16 px frames, 4 px patches):
  its held-out metrics."""
  cfg = small_config("pretrain_tiny", **{"video.objective": objective, "video.num_sampling_steps": 1})
  cfg.model.update(width=64, num_heads=4, mlp_dim=128, patch_size=4)
  cfg.data.image_size = 16
  cfg.train.update(steps=300, warmup_steps=20, learning_rate=3e-3, batch_size=32)
  return fit.train_then_evaluate(setup, cfg, moving_squares)


def test_predictor_beats_copy_last_on_moving_squares():  # ~35 s: issue 10 asks for it in CI
  """Measured: 18.1 dB vs copy-last 15.8 after 300 steps (SSIM 0.35 vs 0.29)."""
  m = squares_run("regression")
  assert m["video_psnr"] > m["copy_last_psnr"] + 1.0, m
  assert m["video_ssim"] > m["copy_last_ssim"], m
  assert m["video_loss"] < 0.8 * m["copy_last_video_loss"], m


@pytest.mark.slow
def test_flow_objective_learns_the_future_deltas():
  """The flow predictor's x0 error at random noise levels falls well below predicting no change
  (measured 0.050 vs 0.108). Its one-step *samples* do not beat copy-last in PSNR after 300 steps
  (15.7 vs 15.8 dB): BUILD_NOTES, "Video WAM"."""
  m = squares_run("flow")
  assert m["video_loss"] < 0.6 * m["copy_last_video_loss"], m


# --- stage 1 -> stage 2 --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1_run(syn_data_dir, tmp_path_factory):  # noqa: F811
  cfg = small_config("pretrain_tiny")
  cfg.data.update(data_dir=str(syn_data_dir), cache_dir=str(syn_data_dir / "_cache"))
  cfg.train.update(steps=4, log_every=2, val_every=4, val_batches=1, ckpt_every=4, summary_every=4,
                   matmul_peak_gflops=100.0)
  workdir = tmp_path_factory.mktemp("stage1")
  result = trainer.train(cfg, workdir, devices=jax.devices()[:1])
  return cfg, workdir, result


def test_stage1_trains_and_validates_video_metrics(stage1_run):
  _, _, result = stage1_run
  for name in ("val_video_loss", "val_video_psnr", "val_copy_last_psnr", "val_video_ssim", "val_copy_last_ssim"):
    assert np.isfinite(result[name]), name


def test_restore_by_path_changes_exactly_the_backbone(stage1_run):
  cfg1, workdir, _ = stage1_run
  cfg2 = small_config("policy_tiny")
  fresh = jax.device_get(setup(cfg2).init_state(jax.random.key(0)).params)
  run2 = setup(cfg2)
  restored = jax.device_get(ckpt_lib.load_params_into(workdir, run2.init_state(jax.random.key(0)).params))
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
  stage1 = jax.device_get(ckpt.restore(setup(cfg1).abstract_state)[0].params)
  ckpt.close()
  flat = lambda t: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(t)}
  fresh, restored, stage1 = flat(fresh), flat(restored), flat(stage1)
  new = {k for k in fresh if k not in stage1}
  assert new and all(k.startswith(("['action_queries']", "['head']")) for k in new), new
  for k in fresh:
    if k in new:
      np.testing.assert_array_equal(restored[k], fresh[k], err_msg=k)   # the new head stays initialised
    else:
      np.testing.assert_array_equal(restored[k], stage1[k], err_msg=k)  # the backbone is stage 1's


@pytest.mark.parametrize("adapt", ["frozen", pytest.param("last_n_blocks", marks=pytest.mark.slow)])
def test_adaptation_trains_only_what_it_says(adapt):
  cfg = small_config("policy_tiny", **{"policy.adapt": adapt, "policy.last_n_blocks": 1})
  cfg.train.learning_rate = 1e-2
  run = setup(cfg)
  state = run.init_state(jax.random.key(0))
  before = jax.device_get(state.params)
  for i in range(3):
    state, _ = run.train_step(state, trainer._device_batch(make_batch(cfg, 8, seed=i, num_datasets=2),
                                                           run.batch_shardings))
  after = jax.device_get(state.params)
  changed = {jax.tree_util.keystr(k): bool(np.any(a != b)) for (k, a), b in
             zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(after))}
  trainable = lambda k: k.startswith(("['action_queries']", "['head']")) or (
      adapt == "last_n_blocks" and k.startswith(("['predictor']['transformer']['block_1']",
                                                 "['predictor']['transformer']['ln_final']")))
  for k, was_changed in changed.items():
    if not trainable(k):
      assert not was_changed, f"{k} changed under adapt={adapt}"
  assert changed["['action_queries']"] and changed["['head']['proj']['kernel']"]
  if adapt == "last_n_blocks":
    assert changed["['predictor']['transformer']['block_1']['mlp']['wi']['kernel']"]


# --- inference -----------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", [pytest.param("regression", marks=pytest.mark.slow), "flow"])
def test_both_inference_paths_return_deterministic_chunks(objective):
  cfg = small_config("policy_tiny", **{"video.objective": objective})
  cfg.model.head = registry.heads.default_head_config("flow")
  params = setup(cfg).init_state(jax.random.key(0)).params
  obs = observation(make_batch(cfg, 2))
  chunks = {}
  for skip in (True, False):
    cfg.model.policy.skip_video = skip
    model = registry.build_model(cfg, num_datasets=2)
    predict = jax.jit(lambda p, b, r: registry.predict_actions(model, p, b, r))
    a, b, c = (np.asarray(predict(params, obs, jax.random.key(s))) for s in (7, 7, 8))
    assert a.shape == (2, cfg.data.action_horizon, cfg.data.action_dim)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)  # the flow head samples: another key, another chunk
    chunks[skip] = a
  assert np.any(chunks[True] != chunks[False])


def test_stage1_model_is_not_a_policy():
  cfg = small_config("pretrain_tiny")
  run = setup(cfg)
  params = run.init_state(jax.random.key(0)).params
  with pytest.raises(ValueError, match="config.model.policy.enabled"):
    registry.predict_actions(run.model, params, observation(make_batch(cfg, 2)), jax.random.key(0))


def test_config_errors_name_the_field():
  for field, value in [("policy.adapt", "partial"), ("video.objective", "diffusion"), ("policy.last_n_blocks", 9)]:
    cfg = small_config("policy_tiny", **{"policy.adapt": "last_n_blocks", field: value})
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      registry.check_model_config(cfg.model)
  cfg = small_config("policy_tiny")
  cfg.model.frames = "voxels"
  with pytest.raises(ValueError, match="config.model.frames"):
    registry.check_model_config(cfg.model)
  # The ImageTokenizer's fields, not the predictor's.
  for field, value in [("keypoints", 8), ("stem_strides", (1, 2)), ("flat_token", True)]:
    cfg = small_config("policy_tiny")
    cfg.model[field] = value
    with pytest.raises(ValueError, match=f"config.model.{field}=.*the video predictor reads frames"):
      registry.check_model_config(cfg.model)


# --- sharding ------------------------------------------------------------------------------------

def test_sharded_step_matches_single_device():  # ~50 s: issue 10 asks for it in CI
  if jax.device_count() < 8:
    pytest.skip("needs 8 host devices (tests/conftest.py sets XLA_FLAGS)")
  cfg = small_config("policy_tiny", **{"video.objective": "flow", "policy.backbone_lr_multiplier": 0.5})
  batches = [make_batch(cfg, 8, seed=i, num_datasets=2) for i in range(2)]
  sharded_steps.assert_sharded_matches_single_device(cfg, batches, num_datasets=2)


# --- summaries and the checkpoint policy -------------------------------------------------------

def test_predicted_frame_summaries_show_last_frame_real_future_then_prediction():
  cfg = small_config("pretrain_tiny")
  batch = make_batch(cfg, 8)
  predicted = {"primary": 255 - batch["future_image_primary"]}
  img = trainer.predicted_frame_summaries(batch, predicted)["predicted/primary"]
  s = cfg.data.image_size
  assert img.shape == (4, s, 3 * s, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[1, :, :s], batch["image_primary"][1, -1])
  np.testing.assert_array_equal(img[1, :, s:2 * s], batch["future_image_primary"][1, 0])
  np.testing.assert_array_equal(img[1, :, 2 * s:], predicted["primary"][1, 0])


@pytest.fixture(scope="module")
def stage2_run(stage1_run, tmp_path_factory):
  cfg1, stage1_dir, _ = stage1_run
  cfg = small_config("policy_tiny")
  cfg.data = cfg1.data
  cfg.train.update(steps=4, log_every=2, val_every=4, val_batches=1, ckpt_every=4, summary_every=0,
                   matmul_peak_gflops=100.0, init_from=str(stage1_dir))
  workdir = tmp_path_factory.mktemp("stage2")
  return cfg, workdir, trainer.train(cfg, workdir, devices=jax.devices()[:1])


@pytest.mark.slow  # two trainer runs end to end (~35 s)
def test_stage2_checkpoint_acts_through_both_inference_paths(stage2_run):
  from wam_jax import inference
  from tests.data.synthetic import SYN_RES
  _, workdir, result = stage2_run
  assert np.isfinite(result["val_action_l1"]) and np.isfinite(result["val_video_psnr"])
  obs = {"image_primary": np.full((SYN_RES, SYN_RES, 3), 90, np.uint8), "proprio": np.zeros(4, np.float32)}
  for skip in (True, False):
    policy = inference.load_policy(workdir, skip_video=skip)
    assert policy.config.model.policy.skip_video is skip
    assert policy.predicted_frame() is None  # nothing observed yet
    chunk = policy(obs, "task 0")
    assert chunk.shape == (4, 4) and np.all(np.isfinite(chunk))
    s = policy.data_cfg.image_size
    assert policy.predicted_frame().shape == (s, s, 3)  # what recorded rollouts show beside the real frame


def test_rollout_frames_show_each_prediction_at_the_step_it_was_made_for():
  from wam_jax.evaluation import rollout
  frames = np.full((6, 8, 8, 3), 50, np.uint8)
  out = rollout.beside_predictions(frames, {2: np.full((4, 4, 3), 200, np.uint8), 9: np.zeros((4, 4, 3), np.uint8)})
  assert out.shape == (6, 8, 16, 3)
  np.testing.assert_array_equal(out[:, :, :8], frames)
  assert (out[2, :, 8:] == 200).all() and (out[[0, 1, 3, 4, 5], :, 8:] == 0).all()


def test_copy_normalized_video_loss_is_one_at_copy_and_free_of_the_frames_scale():
  rs = np.random.RandomState(0)
  delta = jnp.asarray(rs.normal(size=(4, 1, 2, 6, 12)), jnp.float32)
  out = jnp.asarray(rs.normal(size=delta.shape), jnp.float32)
  valid = jnp.asarray([[[True, True]], [[True, False]], [[False, False]], [[True, True]]])
  loss, metrics = vp.video_loss(jnp.zeros_like(delta), delta, valid, "copy")
  np.testing.assert_allclose(loss, 1.0, rtol=1e-6)  # predicting no change is the unit
  raw, raw_metrics = vp.video_loss(out, delta, valid)
  rel, rel_metrics = vp.video_loss(out, delta, valid, "copy")
  assert set(raw_metrics) == {"video_loss"} and set(rel_metrics) == {"video_loss", "video_loss_vs_copy"}
  np.testing.assert_allclose(rel_metrics["video_loss"], raw, rtol=1e-6)  # the MSE is still logged
  copy = float(vp.video_loss(jnp.zeros_like(delta), delta, valid)[0])
  np.testing.assert_allclose(rel, raw / copy, rtol=1e-5)
  np.testing.assert_allclose(vp.video_loss(3 * out, 3 * delta, valid, "copy")[0], rel, rtol=1e-5)
  # The divisor carries no gradient: the gradient is the MSE's, divided by the copy MSE.
  g_rel = jax.grad(lambda o: vp.video_loss(o, delta, valid, "copy")[0])(out)
  g_raw = jax.grad(lambda o: vp.video_loss(o, delta, valid)[0])(out)
  np.testing.assert_allclose(g_rel, g_raw / copy, rtol=1e-5, atol=1e-9)
  with pytest.raises(ValueError, match="config.model.video.loss_norm='mean'"):
    vp.video_loss(out, delta, valid, "mean")


def test_copy_normalized_family_loss_starts_at_exactly_one():
  """The future head starts at zero (copy-last), so at init the video term of the loss is 1.0."""
  cfg = small_config("pretrain_tiny", **{"video.loss_norm": "copy"})
  run = setup(cfg)
  params = run.init_state(jax.random.key(0)).params
  loss, metrics = registry.loss_fn(run.model, params, make_batch(cfg, 8), jax.random.key(0), train=False)
  np.testing.assert_allclose(loss, 1.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["video_loss_vs_copy"], 1.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["video_loss"], metrics["copy_last_video_loss"], rtol=1e-5)
  cfg.model.video.loss_norm = "per_pixel"
  with pytest.raises(ValueError, match="config.model.video.loss_norm='per_pixel'"):
    video_wam_lib.VideoWAM.check_config(cfg.model)
