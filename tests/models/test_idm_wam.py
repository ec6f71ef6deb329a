"""Family 2 (inverse-dynamics WAMs): every preset builds, the IDM's masks and learning, the latent-action
model's diagnostics, the quantizers, the latent policy's frozen latent-action model, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import idm_wam
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import quantizers, registry
from wam_jax.training import state as state_lib


# Compiling is most of these tests' time: XLA's cheapest CPU backend settings halve it (numerics stay float32).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def small_config(preset="idm_tiny"):
  cfg = idm_wam.get_config(preset)
  sizes = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.model.update(sizes)
  if "lam" in cfg.model:  # the latent policy's own copy of the latent-action model
    cfg.model.lam.update(sizes, decoder_depth=1)
  if "decoder_depth" in cfg.model:
    cfg.model.decoder_depth = 1
  cfg.data.update(image_size=16, history=2, action_horizon=2, future_offset=2, max_text_len=8)
  cfg.train.update(steps=10, warmup_steps=1, batch_size=4, compute_dtype="float32", init_from="")
  cfg.mesh.shape = (1, 1, 1)
  return cfg


def init(cfg, batch):
  model = registry.build_model(cfg, num_datasets=2)
  params = jit(lambda b: registry.init_params(model, jax.random.key(0), b))(batch)
  return model, nn.meta.unbox(params)


class Built:
  """One preset at small size: its model, params at init, and ONE compiled training loss + gradient
  ``value_and_grad(params, actions, batch) -> ((loss, metrics), (g_params, g_actions))`` (train=True), which
  the preset, mask, learning and freezing tests all reuse (compiling is most of these tests' time)."""

  def __init__(self, preset, cfg=None, batch=None):
    self.cfg = small_config(preset) if cfg is None else cfg
    self.batch = make_batch(self.cfg, 4, num_datasets=2) if batch is None else batch
    self.model, self.params = init(self.cfg, self.batch)
    model = self.model

    def loss(params, actions, batch):
      return registry.loss_fn(model, params, dict(batch, actions=actions), jax.random.key(1))
    self.value_and_grad = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

  def __call__(self, params, batch):
    return self.value_and_grad(params, jnp.asarray(batch["actions"]), batch)

  def train(self, steps: int, tx):
    """``steps`` updates on self.batch through ``tx``; returns (params, losses)."""
    params, opt_state, losses = self.params, tx.init(self.params), []
    update = jit(tx.update)
    for _ in range(steps):
      (loss, _), (grads, _) = self(params, self.batch)
      updates, opt_state = update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      losses.append(float(loss))
    return params, losses


@pytest.fixture(scope="module")
def built():
  cache = {}

  def get(preset):
    if preset not in cache:
      cache[preset] = Built(preset)
    return cache[preset]
  return get


# --- every preset ----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", idm_wam.PRESETS)
def test_preset_builds_and_gives_a_finite_loss_and_gradient(preset, built):
  b = built(preset)
  (loss, metrics), (grads, _) = jax.device_get(b(b.params, b.batch))
  assert np.isfinite(float(loss)), metrics
  assert all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values()), metrics
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_unknown_preset_lists_the_known_ones():
  with pytest.raises(ValueError, match="known: idm_tiny, latent_tiny, latent_policy_tiny, finetune_tiny"):
    idm_wam.get_config("idm_huge")


# --- IDM -------------------------------------------------------------------------------------------

def test_idm_rows_without_a_future_frame_or_actions_give_zero_gradient(built):
  b = built("idm_tiny")
  batch = {k: np.copy(v) for k, v in b.batch.items()}
  batch["future_mask"][1] = False   # the future frame lies past the episode end
  batch["action_mask"][2] = False   # an action-free row
  _, (_, g_actions) = b(b.params, batch)
  g_actions = np.asarray(g_actions)
  assert not g_actions[[1, 2]].any()     # their targets never reach the loss
  assert np.abs(g_actions[[0, 3]]).sum() > 0
  # Only excluded rows: the loss depends on no parameter.
  batch["future_mask"][:] = False
  batch["future_mask"][3] = True
  batch["action_mask"][3] = False
  _, (g_params, _) = b(b.params, batch)
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(g_params))


def test_idm_loss_falls_on_a_tiny_batch(built):
  b = built("idm_tiny")
  _, losses = b.train(30, optax.adam(3e-3))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_idm_predict_actions_needs_the_future_frame(built):
  b = built("idm_tiny")
  pred = jit(lambda p, x: registry.predict_actions(b.model, p, x, jax.random.key(0)))(b.params, b.batch)
  assert pred.shape == (4, b.cfg.data.action_horizon, b.cfg.data.action_dim)
  assert np.isfinite(np.asarray(pred)).all()
  no_future = {k: v for k, v in b.batch.items() if not k.startswith("future")}
  with pytest.raises(ValueError, match=r"future_image_primary.*not a closed-loop policy"):
    registry.predict_actions(b.model, b.params, no_future, jax.random.key(0))
  with pytest.raises(ValueError, match="future_mask"):
    registry.predict_actions(b.model, b.params, {k: v for k, v in b.batch.items() if k != "future_mask"},
                             jax.random.key(0))


def _state_system(cfg, n, seed):
  """Frames that show nothing (one grey image); the hand starts at the origin and moves by the chunk's
  one repeated action each step, so only future_proprio tells the chunk: [n] windows of batch.py keys."""
  batch = make_batch(cfg, n, seed=seed)
  rs = np.random.RandomState(seed)
  k = cfg.data.action_horizon
  v = rs.uniform(-1, 1, (n, 1, cfg.data.action_dim)).astype(np.float32)
  for key in batch:
    if "image" in key:
      batch[key] = np.full_like(batch[key], 128)
  batch.update(actions=np.repeat(v, k, axis=1), action_mask=np.ones((n, k), bool),
               action_dim_mask=np.ones((n, cfg.data.action_dim), bool),
               history_mask=np.ones_like(batch["history_mask"]), future_mask=np.ones_like(batch["future_mask"]))
  batch["proprio"] = np.zeros_like(batch["proprio"])  # the hand starts at the origin
  batch["future_proprio"] = 0.5 * k * v[:, :, :batch["proprio"].shape[-1]]
  return batch


def test_future_proprio_lets_the_idm_read_the_chunk_the_frames_do_not_show():
  """``model.use_future_proprio``: the IDM learns a chunk that only the state at t+k reveals (blank
  frames) to a small error; the same IDM without it cannot beat predicting the mean. Masked-out
  future steps (past the episode end) leave the prediction unchanged."""
  errors = {}
  for use in (True, False):
    cfg = small_config()
    cfg.model.use_future_proprio = use
    cfg.data.update(action_dim=4, proprio_dim=4)
    held_out = _state_system(cfg, 64, 1)
    b = Built("idm_tiny", cfg, _state_system(cfg, 128, 0))
    params, _ = b.train(150, optax.adam(3e-3))
    predict = jit(lambda p, x: registry.predict_actions(b.model, p, x, jax.random.key(0)))
    errors[use] = float(np.abs(np.asarray(predict(params, held_out)) - held_out["actions"]).mean())
    if use:
      moved = dict(held_out, future_proprio=held_out["future_proprio"] + 1.0)
      gone = dict(held_out, future_mask=np.zeros_like(held_out["future_mask"]))
      gone_moved = dict(moved, future_mask=gone["future_mask"])
      assert np.abs(np.asarray(predict(params, moved)) - np.asarray(predict(params, held_out))).max() > 0.05
      np.testing.assert_allclose(predict(params, gone_moved), predict(params, gone), atol=1e-6)
  assert errors[True] < 0.1 and errors[False] > 0.4, errors  # uniform(-1, 1): the mean's L1 is 0.5


# --- latent-action model ---------------------------------------------------------------------------

def test_latent_action_validation_metrics_and_deterministic_codes(built):
  b = built("latent_tiny")
  cfg, batch, model, params = b.cfg, b.batch, b.model, b.params
  _, metrics = jax.device_get(
      jit(lambda p, x: registry.loss_fn(model, p, x, jax.random.key(1), train=False))(params, batch))
  for key in ("code_perplexity", "codes_used", "shuffled_z_loss", "recon_loss", "copy_last_loss"):
    assert key in metrics and np.isfinite(float(metrics[key])), (key, metrics)
  num_codes = cfg.model.latent.num_codes
  assert 1 <= float(metrics["codes_used"]) <= num_codes
  assert 1.0 - 1e-5 <= float(metrics["code_perplexity"]) <= float(metrics["codes_used"]) + 1e-5
  codes = jit(lambda p, b, r: model.apply({"params": p}, b, rngs={"noise": r},
                                              method="predict_latent_actions"))
  a, b = np.asarray(codes(params, batch, jax.random.key(0))), np.asarray(codes(params, batch, jax.random.key(9)))
  assert a.shape == (4, cfg.model.latent.num_tokens) and a.dtype.kind == "i"
  assert ((a >= 0) & (a < num_codes)).all()
  np.testing.assert_array_equal(a, b)


def test_decoder_history_hides_the_older_frames_from_the_latent_decoder(built):
  """decoder_history=1: the decoder's error for a given z no longer changes with the older history
  frame (the motion it shows would make z unnecessary); with 0 (all frames) it does."""
  b = built("latent_tiny")
  z = jnp.ones((4, b.cfg.model.latent.num_tokens, b.cfg.model.latent.code_dim))
  older = dict(b.batch, image_primary=b.batch["image_primary"].copy())
  older["image_primary"][:, 0] = 255 - older["image_primary"][:, 0]
  leaves, tree = jax.tree.flatten(b.params)  # away from init, where the zero-initialised output ignores all
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(jax.random.key(i), x.shape)
                                     for i, x in enumerate(leaves)])
  errors = {}
  for keep in (0, 1):
    cfg = small_config("latent_tiny")
    cfg.model.decoder_history = keep
    model = registry.build_model(cfg, num_datasets=2)
    fn = jit(lambda p, x: model.apply({"params": p}, x, z, method=lambda m, x, z: m.lam.decode_errors(x, z)[0]))
    errors[keep] = [np.asarray(fn(params, x)) for x in (b.batch, older)]
  assert np.abs(errors[0][0] - errors[0][1]).max() > 1e-6
  np.testing.assert_allclose(errors[1][0], errors[1][1], rtol=1e-6, atol=1e-7)
  cfg = small_config("latent_tiny")
  cfg.model.decoder_history = -1
  with pytest.raises(ValueError, match="config.model.decoder_history=-1"):
    registry.check_model_config(cfg.model)


def test_copy_normalized_reconstruction_is_the_raw_one_over_copying(built):
  """recon_norm='copy': the decoder term is recon_loss / copy_last_loss (1.0 = copying); the raw
  recon_loss and the bottleneck's loss are unchanged, so the loss moves by exactly that term."""
  b = built("latent_tiny")
  cfg = small_config("latent_tiny")
  cfg.model.recon_norm = "copy"
  model = registry.build_model(cfg, num_datasets=2)
  run = lambda m: jax.device_get(jit(lambda p, x: registry.loss_fn(m, p, x, jax.random.key(1), train=False))(
      b.params, b.batch))
  (raw_loss, raw), (rel_loss, rel) = run(b.model), run(model)
  np.testing.assert_allclose(rel["recon_loss"], raw["recon_loss"], rtol=1e-6)
  np.testing.assert_allclose(rel["recon_vs_copy"], raw["recon_loss"] / raw["copy_last_loss"], rtol=1e-5)
  np.testing.assert_allclose(rel_loss - rel["recon_vs_copy"], raw_loss - raw["recon_loss"], rtol=1e-4, atol=1e-6)
  cfg.model.recon_norm = "per_example"
  with pytest.raises(ValueError, match="config.model.recon_norm='per_example'"):
    registry.check_model_config(cfg.model)


@pytest.mark.slow  # a fifth model to compile (~8 s)
def test_continuous_latent_is_deterministic_at_evaluation():
  cfg = small_config("latent_tiny")
  cfg.model.latent.kind = "continuous"
  batch = make_batch(cfg, 3, num_datasets=2)
  model, params = init(cfg, batch)
  z = jit(lambda p, b, r: model.apply({"params": p}, b, rngs={"noise": r}, method="predict_latent_actions"))
  a = np.asarray(z(params, batch, jax.random.key(0)))
  assert a.shape == (3, cfg.model.latent.num_tokens, cfg.model.latent.code_dim)
  np.testing.assert_array_equal(a, np.asarray(z(params, batch, jax.random.key(5))))
  _, metrics = jit(lambda p, x: registry.loss_fn(model, p, x, jax.random.key(1), train=False))(params, batch)
  assert {"kl", "recon_loss", "shuffled_z_loss"} <= set(metrics)


# --- quantizers ------------------------------------------------------------------------------------

def test_vector_quantizer_straight_through_gradient_reaches_the_input():
  vq = quantizers.VectorQuantizer(num_codes=4, code_dim=3, commitment=0.25)
  x = jax.random.normal(jax.random.key(0), (2, 5, 3))
  w = jax.random.normal(jax.random.key(2), x.shape)
  params = nn.meta.unbox(jit(vq.init)(jax.random.key(1), x))

  @jit
  def run(params, x):
    z, codes, _, _ = vq.apply(params, x)
    # backward: the identity through the quantization, d sum(w z) / dx = d sum(w normalize(x)) / dx
    g = jax.grad(lambda x: jnp.sum(w * vq.apply(params, x)[0]))(x)
    g_ref = jax.grad(lambda x: jnp.sum(w * quantizers.l2_normalize(x)))(x)
    return z, codes, quantizers.l2_normalize(params["params"]["codebook"]), g, g_ref

  z, codes, cb, g, g_ref = jax.device_get(run(params, x))
  np.testing.assert_allclose(z, cb[codes], atol=1e-6)  # forward: the codes
  np.testing.assert_allclose(g, g_ref, atol=1e-6)
  assert np.abs(g).sum() > 0


def test_code_usage_perplexity():
  n = 8
  usage = jit(quantizers.code_usage, static_argnums=1)
  uniform = usage(jnp.arange(2 * n).reshape(4, 4) % n, n)
  np.testing.assert_allclose(float(uniform["code_perplexity"]), n, rtol=1e-5)
  assert float(uniform["codes_used"]) == n
  single = usage(jnp.full((4, 4), 5), n)
  np.testing.assert_allclose(float(single["code_perplexity"]), 1.0, rtol=1e-6)
  assert float(single["codes_used"]) == 1
  # Rows of weight 0 are not counted.
  weighted = usage(jnp.array([[0], [1]]), n, jnp.array([True, False]))
  assert float(weighted["codes_used"]) == 1


def test_gaussian_bottleneck_kl_is_zero_at_the_prior():
  bottleneck = quantizers.GaussianBottleneck(code_dim=3)
  x = jax.random.normal(jax.random.key(0), (2, 4, 6))
  params = nn.meta.unbox(jit(bottleneck.init)(jax.random.key(1), x))
  zeros = jax.tree.map(jnp.zeros_like, params)  # mu = 0, logvar = 0 for every input
  apply = jit(bottleneck.apply)
  z, codes, kl, metrics = apply(zeros, x)
  assert codes is None and z.shape == (2, 4, 3)
  np.testing.assert_allclose(float(kl), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(metrics["latent_std"]), 1.0, rtol=1e-6)
  _, _, kl_random, _ = apply(params, x)
  assert float(kl_random) > 0


# --- latent policy ---------------------------------------------------------------------------------

def test_latent_policy_freezes_the_latent_action_model(built):
  """The trainer's optimizer (``make_optimizer`` with the family's ``lr_multipliers``) leaves lam/ bitwise
  unchanged, weight decay included, and moves every other parameter."""
  b = built("latent_policy_tiny")
  cfg = b.cfg
  cfg.train.update(learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
  tx = state_lib.make_optimizer(cfg.train, b.model.lr_multipliers())
  after, losses = b.train(2, tx)
  assert np.isfinite(losses).all()
  changed = {state_lib.param_path(path): not np.array_equal(x, y)
             for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(b.params), jax.tree.leaves(after))}
  lam = {p: c for p, c in changed.items() if p.startswith("lam/")}
  rest = {p: c for p, c in changed.items() if not p.startswith("lam/")}
  assert lam and not any(lam.values()), [p for p, c in lam.items() if c]
  assert rest and all(rest.values()), [p for p, c in rest.items() if not c]


def test_latent_policy_and_latent_action_are_not_policies(built):
  for preset, match in (("latent_tiny", "not a policy"), ("latent_policy_tiny", "not robot actions")):
    b = built(preset)
    with pytest.raises(ValueError, match=match):
      registry.predict_actions(b.model, b.params, b.batch, jax.random.key(0))


# --- config errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,field,value", [
    ("latent_tiny", "kind", "bogus"),
    ("latent_tiny", "num_codes", 1),
    ("latent_tiny", "code_dim", 0),
    ("latent_tiny", "num_tokens", 0),
    ("latent_tiny", "commitment", -1.0),
    ("latent_tiny", "kl_weight", float("nan")),
    ("latent_policy_tiny", "kind", "bogus"),
])
def test_config_errors_name_the_field(preset, field, value):
  cfg = small_config(preset)
  latent = cfg.model.lam.latent if preset == "latent_policy_tiny" else cfg.model.latent
  latent[field] = value
  with pytest.raises(ValueError, match=rf"config\.model\.latent\.{field}="):
    registry.check_model_config(cfg.model)


def test_idm_head_config_error_names_the_field():
  cfg = small_config("idm_tiny")
  cfg.model.head.name = "bogus"
  with pytest.raises(ValueError, match=r"config\.model\.head\.name='bogus'"):
    registry.build_model(cfg, num_datasets=1)


def test_finite_scalar_quantizer_grid_codes_and_straight_through_gradient():
  levels = (5, 4, 3)  # odd and even levels
  fsq = quantizers.FiniteScalarQuantizer(levels)
  x = 3.0 * jax.random.normal(jax.random.key(0), (512, 2, 3))
  z, codes, aux, metrics = jax.device_get(jit(lambda x: fsq.apply({}, x))(x))
  assert float(aux) == 0.0 and codes.shape == (512, 2) and codes.min() >= 0 and codes.max() < 60
  for i, lv in enumerate(levels):  # each dim takes exactly its L values, scaled into [-1, 1]
    values = np.unique(np.round(z[..., i] * (lv // 2)).astype(int))
    expected = np.arange(-(lv // 2), lv - lv // 2) if lv % 2 == 0 else np.arange(-(lv // 2), lv // 2 + 1)
    np.testing.assert_array_equal(values, expected)
  assert len(np.unique(codes)) == 60 and float(metrics["codes_used"]) == 60  # every grid point reachable
  np.testing.assert_allclose(jax.device_get(fsq.apply({}, jnp.asarray(codes), method="codes_to_z")), z, atol=1e-6)
  # Backward: the identity through the rounding, i.e. the gradient of the bound / (L // 2).
  w = jax.random.normal(jax.random.key(1), x.shape)
  g = jax.grad(lambda x: jnp.sum(w * fsq.apply({}, x)[0]))(x)
  g_ref = jax.grad(lambda x: jnp.sum(w * fsq.apply({}, x, method="bound") / jnp.asarray([2.0, 2.0, 1.0])))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g)).sum() > 0


def test_fsq_latent_action_model_trains_and_its_policy_classifies_the_codes():
  cfg = small_config("latent_tiny")
  lat = cfg.model.latent
  lat.kind, lat.levels, lat.code_dim, lat.num_codes = "fsq", (3, 3), 2, 9
  registry.check_model_config(cfg.model)
  batch = make_batch(cfg, 4, num_datasets=2)
  model, params = init(cfg, batch)
  loss, metrics = jit(lambda p, x: registry.loss_fn(model, p, x, jax.random.key(1), train=False))(params, batch)
  assert np.isfinite(float(loss)) and {"recon_loss", "shuffled_z_loss", "code_perplexity", "codes_used"} <= set(metrics)
  assert "vq_loss" not in metrics  # no codebook, no auxiliary loss
  codes = jit(lambda p, x: registry.predict_latent_actions(model, p, x, jax.random.key(0)))(params, batch)
  assert codes.shape == (4, lat.num_tokens) and codes.dtype == jnp.int32
  pcfg = small_config("latent_policy_tiny")  # stage 2 classifies the 9 codes of each token
  plat = pcfg.model.lam.latent
  plat.kind, plat.levels, plat.code_dim, plat.num_codes = "fsq", (3, 3), 2, 9
  pmodel, pparams = init(pcfg, batch)
  _, pm = jit(lambda p, x: registry.loss_fn(pmodel, p, x, jax.random.key(1), train=False))(pparams, batch)
  assert {"latent_ce", "latent_accuracy"} <= set(pm) and float(pm["latent_ce"]) > 0
  lat.num_codes = 8
  with pytest.raises(ValueError, match=r"kind='fsq' with levels=\(3, 3\) needs code_dim=2 and num_codes=9"):
    registry.check_model_config(cfg.model)


@pytest.mark.parametrize("preset", ["idm_tiny", "latent_policy_tiny"])
def test_keypoints_reach_the_family_through_its_image_fields(preset):
  """``model.keypoints`` and ``model.flat_token`` (encoders.image_fields) build their tokens in the
  family's frame reader, and the loss's gradient reaches their weights (the IDM's transition encoder;
  the latent policy's observation encoder)."""
  cfg = small_config(preset)
  cfg.model.update(stem=(4, 8), keypoints=3, keypoint_level=1, flat_token=True)
  batch = make_batch(cfg, 4, num_datasets=2)
  model, params = init(cfg, batch)
  grads = jit(jax.grad(lambda p: registry.loss_fn(model, p, batch, jax.random.key(1))[0]))(params)
  for name, shape in [("keypoint_logits", (1, 1, 8, 3)), ("flat_embed", None)]:
    found = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g)
             for path, g in jax.tree_util.tree_leaves_with_path(grads) if name in str(path)}
    kernels = {path: g for path, g in found.items() if path.endswith("kernel")}
    assert kernels and all(shape is None or g.shape == shape for g in kernels.values()), (name, sorted(found))
    assert any(np.abs(g).sum() > 0 for g in kernels.values()), (name, sorted(found))
