"""Action heads on synthetic targets: mode coverage, fit, determinism, masking, config checks.

A toy model maps a condition vector c [B, C] to K readout tokens with a small
MLP and hands them to the head, so each test trains in a second or two.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from wam_jax.models import heads, registry
from wam_jax.models.heads import diffusion, discrete

K, A, C, D = 4, 2, 8, 32
SMALL = dict(width=64, depth=1, num_heads=4, mlp_dim=128)
TRAIN_STEPS, TRAIN_BATCH, SAMPLES, LOSS_BATCH = 800, 128, 256, 8


def head_config(name, **fields):
  cfg = heads.default_head_config(name)
  if name in heads.FIELD_CHECKS:
    cfg[name].update(dict(SMALL, **fields))
  return cfg


# One config per case; each case's jitted functions are built once and shared by the tests.
CASES = {
    "l1": head_config("l1"),
    "mse": head_config("mse"),
    "diffusion": head_config("diffusion"),                                  # transformer denoiser
    "flow": head_config("flow", denoiser="mlp", noise_samples=2),           # MLP denoiser
    "discrete": head_config("discrete", num_bins=64, decoding="sample"),
    "discrete_ar": head_config("discrete", num_bins=64, autoregressive=True),
}


class Toy(nn.Module):
  """c [B, C] -> MLP -> readout [B, K, D] -> head."""
  head_cfg: object

  def setup(self):
    self.hidden = nn.Dense(128)
    self.enc = nn.Dense(K * D)
    self.head = heads.build_head(self.head_cfg, horizon=K, action_dim=A)

  def readout(self, c_BC):
    return self.enc(nn.gelu(self.hidden(c_BC))).reshape(c_BC.shape[0], K, D)

  def __call__(self, c_BC, actions_BKA, mask_BKA, train=True):
    return self.head(self.readout(c_BC), actions_BKA, mask_BKA, train=train)

  def sample(self, c_BC):
    return self.head.sample(self.readout(c_BC))


def rngs(key):
  return {"noise": key, "dropout": key}


class Harness:
  """Jitted init / loss+grads / training scan / sampler of one case."""

  def __init__(self, head_cfg):
    self.model = model = Toy(head_cfg)
    self.tx = tx = optax.adam(3e-3)

    def loss(params, c, actions, mask, key, train=True):
      return model.apply({"params": params}, c, actions, mask, train=train, rngs=rngs(key))

    def train_scan(params, c_SBC, actions_SBKA, key):
      tx = optax.adam(optax.cosine_decay_schedule(3e-3, c_SBC.shape[0]))  # decay: less SGD noise at the end

      def step(carry, xs):
        params, opt = carry
        c, actions, k = xs
        grads = jax.grad(lambda p: loss(p, c, actions, jnp.ones_like(actions, bool), k)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), None
      keys = jax.random.split(key, c_SBC.shape[0])
      return jax.lax.scan(step, (params, tx.init(params)), (c_SBC, actions_SBKA, keys))[0][0]

    self.loss = jax.jit(loss, static_argnames="train")  # used with train=False only
    # ((loss, metrics), (d params, d actions)) of (params, c, actions, mask, key)
    self.loss_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
    self.train_scan = jax.jit(train_scan)
    self.sample = sampler(model)
    c, x = jnp.zeros((2, C)), jnp.zeros((2, K, A))
    self.params = jax.jit(lambda k: nn.meta.unbox(model.init({"params": k, **rngs(k)}, c, x, x > -1))["params"])(
        jax.random.key(0))

  def train(self, make_batch, steps=TRAIN_STEPS, seed=0):
    """Adam from the initial params on ``steps`` fresh batches of make_batch(key, B) -> (c, actions)."""
    c, actions = make_batch(jax.random.key(seed), steps * TRAIN_BATCH)
    return self.train_scan(self.params, c.reshape(steps, TRAIN_BATCH, C),
                           actions.reshape(steps, TRAIN_BATCH, K, A), jax.random.key(seed + 1))


def sampler(model):
  return jax.jit(lambda p, c, key: model.apply({"params": p}, c, rngs=rngs(key), method="sample"))


@functools.lru_cache(maxsize=None)
def harness(case) -> Harness:
  return Harness(CASES[case])


def bimodal_batch(key, b):
  """The same condition distribution for both modes: a chunk is all +0.8 or all -0.8 by a coin flip."""
  kc, km = jax.random.split(key)
  c = jax.random.normal(kc, (b, C))
  sign = jnp.where(jax.random.bernoulli(km, 0.5, (b, 1, 1)), 1.0, -1.0)
  return c, jnp.broadcast_to(0.8 * sign, (b, K, A))


W_TRUE = np.random.RandomState(0).randn(C, K * A).astype(np.float32) / np.sqrt(C)


def unimodal_batch(key, b):
  c = jax.random.normal(key, (b, C))
  return c, (0.7 * jnp.tanh(c @ W_TRUE)).reshape(b, K, A)


# ----------------------------------------------------------------------------
# Multimodality: the reason these heads exist.
# ----------------------------------------------------------------------------
def mode_shares(samples):
  """Fractions of entries near +0.8, near -0.8, and between the modes (|x| < 0.4)."""
  x = np.asarray(samples).ravel()
  return np.mean(np.abs(x - 0.8) < 0.25), np.mean(np.abs(x + 0.8) < 0.25), np.mean(np.abs(x) < 0.4)


def one_condition():
  return jnp.broadcast_to(jax.random.normal(jax.random.key(7), (1, C)), (SAMPLES, C))


def test_mse_regression_collapses_to_the_mean_of_a_bimodal_target():
  h = harness("mse")
  params = h.train(bimodal_batch)
  pred = np.asarray(h.sample(params, jax.random.normal(jax.random.key(7), (SAMPLES, C)), jax.random.key(0)))
  plus, minus, between = mode_shares(pred)
  assert abs(pred.mean()) < 0.1 and between > 0.95 and plus + minus < 0.02, (pred.mean(), plus, minus, between)


@pytest.mark.parametrize("case", ["diffusion", "flow", "discrete"])
def test_generative_head_keeps_both_modes(case):
  h = harness(case)
  params = h.train(bimodal_batch)
  samples = np.asarray(h.sample(params, one_condition(), jax.random.key(0)))  # one condition, 256 draws
  plus, minus, between = mode_shares(samples)
  assert 0.3 < plus < 0.7 and 0.3 < minus < 0.7, (plus, minus)
  assert plus + minus > 0.9 and between < 0.05, (plus, minus, between)
  if case != "discrete":  # the denoisers see the whole chunk: one chunk, one mode
    coherent = np.mean(np.all(np.sign(samples) == np.sign(samples[:, :1, :1]), axis=(1, 2)))
    assert coherent > 0.9, coherent


# ----------------------------------------------------------------------------
# Fit, determinism, masking, loss.
# ----------------------------------------------------------------------------
# Stated mean |error| of a sampled chunk on the unimodal target (mean |target| 0.38) after TRAIN_STEPS.
FIT_TOLERANCE = {"l1": 0.06, "diffusion": 0.08, "flow": 0.08, "discrete": 0.08, "discrete_ar": 0.08}


@pytest.mark.parametrize("case", sorted(FIT_TOLERANCE))
def test_head_fits_a_unimodal_target(case):
  h = harness(case)
  params = h.train(unimodal_batch)
  sample = h.sample
  if case == "discrete":  # decoding is an inference-time choice: same params, argmax
    sample = sampler(Toy(head_config("discrete", num_bins=64, decoding="argmax")))
  c, target = unimodal_batch(jax.random.key(99), SAMPLES)
  err = float(jnp.abs(sample(params, c, jax.random.key(0)) - target).mean())
  assert err < FIT_TOLERANCE[case], err


@pytest.mark.parametrize("case", ["diffusion", "flow", "discrete"])
def test_sampling_is_deterministic_given_the_key(case):
  h = harness(case)
  c = jax.random.normal(jax.random.key(3), (SAMPLES, C))
  a, b = h.sample(h.params, c, jax.random.key(0)), h.sample(h.params, c, jax.random.key(0))
  chex.assert_trees_all_equal(a, b)
  chex.assert_shape(a, (SAMPLES, K, A))
  assert float(jnp.abs(a - h.sample(h.params, c, jax.random.key(1))).max()) > 1e-3


MASKED = ["l1", "mse", "diffusion", "flow", "discrete", "discrete_ar"]


def tiny_batch():
  c, actions = unimodal_batch(jax.random.key(11), LOSS_BATCH)
  mask = jnp.ones_like(actions, bool).at[:, K // 2:].set(False).at[:, :, -1].set(False)  # steps and a dim
  return c, actions, mask


@pytest.mark.parametrize("case", MASKED)
def test_masked_entries_contribute_nothing(case):
  h = harness(case)
  c, actions, mask = tiny_batch()
  garbage = jnp.where(mask, actions, 5.0 * jax.random.normal(jax.random.key(3), actions.shape))
  key = jax.random.key(4)
  ((l0, metrics), (g0, da0)), ((l1, _), (g1, _)) = (h.loss_and_grads(h.params, c, x, mask, key)
                                                     for x in (actions, garbage))
  chex.assert_trees_all_close(l0, l1, rtol=1e-6)
  chex.assert_trees_all_close(g0, g1, rtol=1e-5, atol=1e-7)
  if not case.startswith("discrete"):  # binning has no gradient; for the others d loss / d masked action = 0
    assert float(jnp.abs(jnp.where(mask, 0.0, da0)).max()) == 0.0
    assert float(jnp.abs(jnp.where(mask, da0, 0.0)).max()) > 0.0
  assert float(metrics["loss_weight"]) == float(mask.sum())


def test_loss_mask_is_real_steps_times_real_dims():
  batch = {"action_mask": jnp.array([[True, True, False], [True, False, False]]),
           "action_dim_mask": jnp.array([[True, False], [True, True]])}
  mask = heads.loss_mask(batch)
  chex.assert_shape(mask, (2, 3, 2))
  np.testing.assert_array_equal(mask, [[[1, 0], [1, 0], [0, 0]], [[1, 1], [0, 0], [0, 0]]])


@pytest.mark.parametrize("case", MASKED)
def test_loss_falls_on_a_tiny_batch(case):
  h = harness(case)
  c, actions, mask = tiny_batch()
  update = jax.jit(h.tx.update)
  params, opt = h.params, h.tx.init(h.params)
  eval_key = jax.random.key(12)
  before = float(h.loss_and_grads(params, c, actions, mask, eval_key)[0][0])
  for i in range(60):
    _, (grads, _) = h.loss_and_grads(params, c, actions, mask, jax.random.key(i))
    updates, opt = update(grads, opt, params)
    params = optax.apply_updates(params, updates)
  after = float(h.loss_and_grads(params, c, actions, mask, eval_key)[0][0])
  assert after < 0.5 * before, (before, after)


def test_validation_metrics_include_sampled_action_error():
  h = harness("flow")
  c, actions, mask = tiny_batch()
  _, metrics = h.loss(h.params, c, actions, mask, jax.random.key(1), train=False)
  assert {"action_l1", "action_mse", "denoise_mse", "loss_weight"} <= set(metrics)


# ----------------------------------------------------------------------------
# Pieces.
# ----------------------------------------------------------------------------
def test_binning_quantization_error_is_at_most_half_a_bin():
  x = jnp.linspace(-1, 1, 10_001)
  for bins in (16, 256):
    err = jnp.abs(discrete.detokenize(discrete.tokenize(x, bins), bins) - x)
    assert float(err.max()) <= 1.0 / bins + 1e-6
    np.testing.assert_allclose(float(err.mean()), 0.5 / bins, rtol=0.02)  # uniform data: a quarter bin width
  np.testing.assert_array_equal(discrete.tokenize(jnp.array([-3.0, -1.0, 1.0, 3.0]), 8), [0, 0, 7, 7])


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_diffusion_parameterizations_invert_the_corruption(prediction):
  """Given the exact training target as the net's output, the sampler recovers x0 and eps."""
  head = diffusion.DiffusionHead(horizon=K, action_dim=A, prediction=prediction, clip_sample=False)
  kx, ke = jax.random.split(jax.random.key(0))
  x0, eps = jax.random.uniform(kx, (5, K, A), minval=-1, maxval=1), jax.random.normal(ke, (5, K, A))
  t = jnp.array([0, 10, 50, 90, 98])
  x_t, target, _ = head.corrupt(x0, eps, t)
  ab = jnp.asarray(head.alpha_bar)[t][:, None, None]
  x0_hat, eps_hat = head.x0_and_eps(x_t, target, ab)
  chex.assert_trees_all_close((x0_hat, eps_hat), (x0, eps), atol=2e-3)


def test_cosine_schedule_and_ddim_timesteps():
  ab = diffusion.cosine_alpha_bar(100)
  assert ab.shape == (100,) and np.all(np.diff(ab) < 0) and 0.99 < ab[0] < 1 and ab[-1] < 1e-4
  ts, prev = diffusion.ddim_timesteps(100, 10)
  assert ts[0] == 99 and ts[-1] == 0 and prev[-1] == -1 and np.all(np.diff(ts) < 0)
  np.testing.assert_array_equal(diffusion.ddim_timesteps(100, 1)[0], [99])


def test_sampling_steps_change_at_inference_without_new_params():
  cfg, params = CASES["flow"], harness("flow").params
  c = jax.random.normal(jax.random.key(3), (SAMPLES, C))
  outs = {}
  for steps in (1, 50):
    cfg_n = cfg.copy_and_resolve_references()
    heads.set_sampling_steps(cfg_n, steps)
    assert heads.build_head(cfg_n, horizon=K, action_dim=A).num_sampling_steps == steps
    outs[steps] = sampler(Toy(cfg_n))(params, c, jax.random.key(0))  # the same params
  assert float(jnp.abs(outs[1] - outs[50]).max()) > 1e-4
  with pytest.raises(ValueError, match="head 'discrete' has no sampling steps"):
    heads.set_sampling_steps(heads.default_head_config("discrete"), 5)


# ----------------------------------------------------------------------------
# Config: one field picks the head; every field is checked before any work.
# ----------------------------------------------------------------------------
def parse(*overrides):
  argv = ["prog", "--config=experiments/configs/vla_baseline.py:tiny", *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return holder.value


def test_head_name_override_picks_up_that_heads_defaults():
  config = parse("--config.model.head.name=flow", "--config.model.head.flow.num_sampling_steps=5")
  registry.check_model_config(config.model)
  head = heads.build_head(config.model.head, horizon=8, action_dim=7)
  assert type(head).__name__ == "FlowHead" and head.num_sampling_steps == 5
  assert head.timestep_distribution == "beta" and head.denoiser == "transformer"
  config = parse("--config.model.head.name=diffusion", "--config.model.head.num_sampling_steps=3")
  assert heads.build_head(config.model.head, horizon=8, action_dim=7).num_sampling_steps == 3


def test_unknown_head_field_fails_at_parse_time():
  with pytest.raises((AttributeError, KeyError), match="bogus"):
    parse("--config.model.head.flow.bogus=1")


@pytest.mark.parametrize("override,message", [
    ("--config.model.head.name=difusion", "config.model.head.name='difusion' is not a head"),
    ("--config.model.head.diffusion.prediction=score", "config.model.head.diffusion.prediction='score'"),
    ("--config.model.head.flow.num_sampling_steps=0", r"config.model.head.flow.num_sampling_steps=0 must be"),
    ("--config.model.head.diffusion.num_sampling_steps=101", "config.model.head.diffusion.num_sampling_steps=101"),
    ("--config.model.head.flow.timestep_distribution=gauss", "config.model.head.flow.timestep_distribution"),
    ("--config.model.head.discrete.decoding=beam", "config.model.head.discrete.decoding='beam'"),
    ("--config.model.head.discrete.temperature=0.0", "config.model.head.discrete.temperature=0.0"),
    ("--config.model.head.num_sampling_steps=-1", "config.model.head.num_sampling_steps=-1"),
    ("--config.model.head.flow.width=130", "config.model.head.flow.width=130 is not divisible"),
])
def test_bad_head_values_are_one_line_errors_naming_the_field(override, message):
  config = parse(override)
  with pytest.raises(ValueError, match=message) as err:
    registry.check_model_config(config.model)
  assert "\n" not in str(err.value)


def test_programmatic_unknown_sub_field_is_named():
  cfg = heads.default_head_config("flow").to_dict()
  cfg["flow"]["sampling_steps"] = 3
  with pytest.raises(ValueError, match=r"config.model.head.flow.sampling_steps is not a field of the flow head"):
    heads.check_head_config(cfg)
  old = {"name": "diffusion"}  # a config saved before heads had sub-configs: defaults fill in
  heads.check_head_config(old)
  assert heads.build_head(old, horizon=4, action_dim=2).num_sampling_steps == 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffusion", "flow", "discrete"])
def test_vla_family_trains_and_samples_with_the_head(name):
  from experiments.configs import vla_baseline
  from wam_jax.data.fake_batch import make_batch
  config = vla_baseline.get_config("tiny")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.head.name = name
  model = registry.build_model(config, num_datasets=1)
  batch = make_batch(config, 2)
  params = jax.jit(functools.partial(registry.init_params, model))(jax.random.key(0), batch)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(functools.partial(registry.loss_fn, model), has_aux=True))(
      params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and float(optax.global_norm(grads)) > 0
  actions = jax.jit(functools.partial(registry.predict_actions, model))(params, batch, jax.random.key(2))
  chex.assert_shape(actions, (2, config.data.action_horizon, config.data.action_dim))
  chex.assert_tree_all_finite(actions)
