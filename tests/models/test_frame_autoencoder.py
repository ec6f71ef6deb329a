"""Frame metrics (PSNR, SSIM), the frame autoencoder, and its hand-over to video_wam by parameter path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import frame_autoencoder as ae_config
from experiments.configs import video_wam
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import frame_metrics
from wam_jax.models.frame_autoencoder import FrameAutoencoder
from wam_jax.training import sharding, trainer


def test_psnr_and_ssim_known_values():
  rs = np.random.RandomState(0)
  a = rs.rand(2, 32, 32, 3).astype(np.float32)
  np.testing.assert_allclose(frame_metrics.psnr(a, a), [100.0, 100.0])          # identical: capped
  np.testing.assert_allclose(frame_metrics.psnr(a, np.clip(a, 0, 1) * 0 + 0.5), frame_metrics.psnr(a, np.full_like(a, 0.5)))
  shifted = np.full((1, 8, 8, 3), 0.5, np.float32)
  np.testing.assert_allclose(frame_metrics.psnr(shifted, shifted + 0.1), [20.0], rtol=1e-5)  # mse 0.01
  np.testing.assert_allclose(frame_metrics.ssim(a, a), [1.0, 1.0], rtol=1e-5)
  noisy = np.clip(a + 0.2 * rs.randn(*a.shape), 0, 1).astype(np.float32)
  s = np.asarray(frame_metrics.ssim(a, noisy))
  assert np.all((0 < s) & (s < 0.9))
  np.testing.assert_allclose(frame_metrics.ssim(noisy, a), s, rtol=1e-5)        # symmetric
  # A brightness change alone keeps structure: SSIM stays far above that of noise.
  assert float(frame_metrics.ssim(a[:1], np.clip(a[:1] * 0.9, 0, 1))[0]) > 0.95


def test_autoencoder_shapes_and_unit_rms_latents():
  ae = FrameAutoencoder(channels=(8, 16), latent_channels=4)
  frames = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  params = ae.init(jax.random.key(0), frames)["params"]
  z = ae.apply({"params": params}, frames, method="encode")
  assert z.shape == (3, 8, 8, 4) == (3,) + ae.latent_shape(32, 32)
  # Unit RMS up to the 1e-6 epsilon, which only bites on near-zero latents at init.
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(z * z, -1)), 1.0, rtol=2e-2)
  assert ae.apply({"params": params}, z, method="decode").shape == (3, 32, 32, 3)
  # Every parameter carries logical axis names.
  boxed = ae.init(jax.random.key(0), frames)["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
  assert leaves and all(hasattr(x, "names") for x in leaves)
  with pytest.raises(ValueError, match="autoencoder.channels"):
    ae.latent_shape(30, 30)


def test_pixel_blocks_round_trip_and_a_patch_autoencoder_keeps_the_latent_grid():
  from wam_jax.models import frame_autoencoder as fae
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  blocks = fae.space_to_depth(x, 2)
  assert blocks.shape == (2, 4, 6, 12)
  np.testing.assert_array_equal(blocks[0, 1, 2], x[0, 2:4, 4:6].reshape(-1))  # one 2x2 block, row-major
  np.testing.assert_array_equal(fae.depth_to_space(blocks, 2), x)
  # The tiny preset's (64,) + patch 2 has the latent grid of (32, 64) without patches.
  plain, patched = FrameAutoencoder((8, 16), 4), FrameAutoencoder((16,), 4, patch=2)
  assert plain.latent_shape(32, 32) == patched.latent_shape(32, 32) == (8, 8, 4)
  frames = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  params = patched.init(jax.random.key(0), frames)["params"]
  assert patched.apply({"params": params}, frames, method="encode").shape == (3, 8, 8, 4)
  assert patched.apply({"params": params}, frames).shape == (3, 32, 32, 3)
  assert params["stem"]["kernel"].value.shape[2] == 12 and params["to_rgb"]["kernel"].value.shape[3] == 12
  with pytest.raises(ValueError, match="not divisible"):
    patched.latent_shape(34, 34)  # divisible by the patch (2), not by patch x stage (4)


def small_ae_config():
  cfg = ae_config.get_config("tiny")
  cfg.model.autoencoder.update(channels=(16,), latent_channels=4)  # + the preset's patch 2
  cfg.data.update(image_size=32, max_text_len=8)
  cfg.train.update(steps=40, warmup_steps=2, batch_size=8, learning_rate=3e-3)
  cfg.mesh.shape = (1, 1, 1)
  return cfg


def test_autoencoder_learns_and_hands_its_params_to_video_wam_by_path():
  cfg = small_ae_config()
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  run = trainer.setup_training(cfg, mesh, trainer.abstract_batch(cfg.data, 8), num_datasets=2)
  state = run.init_state(jax.random.key(0))
  batch = make_batch(cfg, 8)
  # Smooth frames (a colour gradient per image) an autoencoder can learn in a few steps.
  ramp = np.linspace(0, 1, 32, dtype=np.float32)
  for key in ("image_primary", "future_image_primary"):
    color = np.random.RandomState(len(key)).rand(8, batch[key].shape[1], 1, 1, 3)
    batch[key] = (255 * color * ramp[None, None, :, None, None]).astype(np.uint8) + 0 * batch[key]
  dev = trainer._device_batch(batch, run.batch_shardings)
  first = jax.device_get(run.eval_step(state.params, dev, jax.random.key(0)))
  for _ in range(cfg.train.steps):
    state, _ = run.train_step(state, dev)
  last = jax.device_get(run.eval_step(state.params, dev, jax.random.key(0)))
  assert last["recon_l1"] < 0.5 * first["recon_l1"] and last["recon_psnr"] > first["recon_psnr"] + 3, (first, last)
  frames = run.predict_frames(state.params, dev, jax.random.key(0))
  assert frames["primary"].shape == batch["future_image_primary"].shape

  # The same paths and shapes under video_wam (frames='latents'): train.init_from restores them.
  vcfg = video_wam.get_config("pretrain_latent_tiny")
  vcfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, latent_patch_size=2)
  vcfg.model.autoencoder = cfg.model.autoencoder
  vcfg.data.update(image_size=32, max_text_len=8)
  vrun = trainer.setup_training(vcfg, mesh, trainer.abstract_batch(vcfg.data, 8), num_datasets=2)
  flat = lambda t: {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(t)}
  ae_params, wam_params = flat(state.params), flat(vrun.abstract_state.params)
  assert all(k.startswith("['autoencoder']") for k in ae_params)
  assert all(wam_params.get(k) == shape for k, shape in ae_params.items())
  assert ("autoencoder/.*", 0.0) in vrun.model.lr_multipliers()  # frozen in the world model
