"""The protocol's reference CNN (cnn_bc): presets build, padded history frames are ignored, the
loss falls, and the chunk it predicts has the head's shape."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import cnn_bc
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import registry

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def small_config(preset="tiny"):
  cfg = cnn_bc.get_config(preset)
  cfg.model.update(conv=(8, 16), width=16, depth=1, mlp_dim=32)
  cfg.data.update(image_size=16, history=2, action_horizon=4, max_text_len=8)
  cfg.train.update(compute_dtype="float32")
  return cfg


@pytest.fixture(scope="module")
def built():
  cfg = small_config()
  batch = make_batch(cfg, 4, num_datasets=2)
  model = registry.build_model(cfg, num_datasets=2)
  params = nn.meta.unbox(jax.jit(lambda b: registry.init_params(model, jax.random.key(0), b),
                                 compiler_options=FAST_COMPILE)(batch))
  loss = jax.jit(jax.value_and_grad(lambda p, b: registry.loss_fn(model, p, b, jax.random.key(1)), has_aux=True),
                 compiler_options=FAST_COMPILE)
  return cfg, batch, model, params, loss


@pytest.mark.parametrize("preset", ["tiny", "mt10_n2", "mt10_n20"])
def test_presets_resolve(preset):
  cfg = cnn_bc.get_config(preset)
  registry.check_model_config(cfg.model)
  assert cfg.model.name == "cnn_bc"


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown preset 'base' for cnn_bc"):
    cnn_bc.get_config("base")


def test_predicted_chunk_shape_and_padded_history_is_ignored(built):
  cfg, batch, model, params, _ = built
  predict = jax.jit(lambda p, b: registry.predict_actions(model, p, b, jax.random.key(2)))
  chunk = predict(params, batch)
  assert chunk.shape == (4, cfg.data.action_horizon, cfg.data.action_dim)
  # Row 0's oldest frame is padding: changing its pixels and proprio must not change the chunk.
  padded = dict(batch, history_mask=np.asarray(batch["history_mask"]).copy())
  padded["history_mask"][0, 0] = False
  base = predict(params, padded)
  image = np.asarray(padded["image_primary"]).copy()
  image[0, 0] = 255 - image[0, 0]
  proprio = np.asarray(padded["proprio"]).copy()
  proprio[0, 0] += 3.0
  moved = predict(params, dict(padded, image_primary=image, proprio=proprio))
  np.testing.assert_allclose(moved[0], base[0], atol=1e-6)
  # The same change to a frame that is not padding does change it.
  valid = dict(batch, history_mask=np.ones_like(padded["history_mask"]))
  assert not np.allclose(predict(params, valid)[0],
                         predict(params, dict(valid, image_primary=image, proprio=proprio))[0], atol=1e-4)


def test_loss_falls_on_a_tiny_batch(built):
  _, batch, _, params, loss = built
  tx = optax.adam(3e-3)
  opt_state, losses = tx.init(params), []
  for _ in range(30):
    (value, _), grads = loss(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(value))
  assert losses[-1] < 0.5 * losses[0], losses
