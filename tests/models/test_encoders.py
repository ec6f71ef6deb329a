"""The shared image tokenizer: ViT patch embedding and the convolutional stem."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wam_jax.models import encoders


def _frames(b=2, t=2, s=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t, s, s, 3)), jnp.uint8)


@pytest.mark.parametrize("stem", [(), (8,), (8, 16)])
def test_stem_keeps_the_token_grid_and_mask(stem):
  frames, mask = _frames(), jnp.array([[False, True], [True, True]])
  tok = encoders.ImageTokenizer(width=24, patch_size=8, image=encoders.ImageFields(stem=stem))
  params = tok.init(jax.random.key(0), frames, mask)
  out, out_mask = tok.apply(params, frames, mask)
  assert out.shape == (2, 2 * 16, 24)  # 32 px / patch 8 = 4 x 4 tokens per frame, whatever the stem
  np.testing.assert_array_equal(out_mask, np.repeat(np.asarray(mask), 16, axis=1))
  names = set(params["params"])
  assert {f"stem_{i}" for i in range(len(stem))} <= names and len(names) == 3 + len(stem)
  # The patch embedding sees (p / 2^L)^2 cells of the last stem's channels (3 pixels without a stem).
  cells = (8 // 2 ** len(stem)) ** 2 * (stem[-1] if stem else 3)
  assert params["params"]["patch_embed"]["kernel"].unbox().shape == (cells, 24)


def test_stem_tokens_are_local():
  """A pixel change in one 8x8 patch moves only the tokens whose stem receptive field covers it."""
  frames = _frames(b=1, t=1)
  tok = encoders.ImageTokenizer(width=16, patch_size=8, image=encoders.ImageFields(stem=(4, 8)))
  params = tok.init(jax.random.key(1), frames, jnp.ones((1, 1), bool))
  base, _ = tok.apply(params, frames, jnp.ones((1, 1), bool))
  changed, _ = tok.apply(params, frames.at[0, 0, 0:4, 0:4].set(255 - frames[0, 0, 0:4, 0:4]),
                         jnp.ones((1, 1), bool))
  moved = np.abs(np.asarray(changed - base)).max(-1)[0] > 1e-6
  assert moved[0] and not moved[1:].any()  # only the top-left token (of 16)


def test_stem_rejects_a_patch_it_cannot_halve_into():
  tok = encoders.ImageTokenizer(width=8, patch_size=4, image=encoders.ImageFields(stem=(4, 4, 4)))
  with pytest.raises(ValueError, match=r"model.patch_size=4 is not divisible by the stem's downsampling 8"):
    tok.init(jax.random.key(0), _frames(), jnp.ones((2, 2), bool))


def test_stem_strides_keep_the_token_grid_at_a_finer_stem():
  """A stride-1 first convolution: the stem reads the full-resolution image, then the patch embedding
  takes (p / 4)^2 cells of stem features instead of (p / 8)^2: the same 16 tokens per frame."""
  frames, mask = _frames(), jnp.ones((2, 2), bool)
  tok = encoders.ImageTokenizer(
      width=24, patch_size=8, image=encoders.ImageFields(stem=(4, 8, 8), stem_strides=(1, 2, 2)))
  params = tok.init(jax.random.key(0), frames, mask)
  out, _ = tok.apply(params, frames, mask)
  assert out.shape == (2, 2 * 16, 24)
  assert params["params"]["patch_embed"]["kernel"].unbox().shape == ((8 // 4) ** 2 * 8, 24)
  with pytest.raises(ValueError, match=r"model.stem_strides=\(1, 2\) needs one stride per model.stem entry"):
    encoders.ImageTokenizer(
        width=24, patch_size=8, image=encoders.ImageFields(stem=(4, 8, 8), stem_strides=(1, 2))).init(
        jax.random.key(0), frames, mask)


def test_spatial_softmax_finds_the_peak_of_each_channel():
  """A one-hot map -> the peak's pixel-centre coordinates in [-1, 1], x then y, per channel."""
  h, w = 8, 6
  logits = np.full((1, h, w, 3), -1e4, np.float32)
  peaks = [(0, 0), (7, 5), (2, 3)]  # (row, column)
  for k, (r, c) in enumerate(peaks):
    logits[0, r, c, k] = 0.0
  kp = np.asarray(encoders.spatial_softmax(jnp.asarray(logits)))
  expected = [(-1 + 2 * c / (w - 1), -1 + 2 * r / (h - 1)) for r, c in peaks]
  np.testing.assert_allclose(kp[0], expected, atol=1e-6)
  # Flat logits: every location equally likely -> the centre of the image.
  np.testing.assert_allclose(encoders.spatial_softmax(jnp.zeros((2, h, w, 4))), 0.0, atol=1e-6)


def test_keypoints_add_one_token_per_frame_that_follows_a_small_dot():
  """``keypoints=K``: T*(N+1) tokens, the mask repeated over the extra one, and the keypoint token of
  a frame moves when a 2 px dot moves within one 8 px patch (where a patch token's content changes
  but its position embedding does not)."""
  frames, mask = _frames(), jnp.array([[False, True], [True, True]])
  tok = encoders.ImageTokenizer(
      width=24, patch_size=8, image=encoders.ImageFields(stem=(4, 8), keypoints=5, keypoint_level=0))
  params = tok.init(jax.random.key(0), frames, mask)
  out, out_mask = tok.apply(params, frames, mask)
  assert out.shape == (2, 2 * 17, 24)
  np.testing.assert_array_equal(out_mask, np.repeat(np.asarray(mask), 17, axis=1))
  p = params["params"]
  assert p["keypoint_logits"]["kernel"].unbox().shape == (1, 1, 4, 5)  # level 0: the first conv's 4 channels
  assert p["keypoint_embed"]["kernel"].unbox().shape == (10, 24)  # 5 keypoints x (x, y)
  black = jnp.zeros((1, 2, 32, 32, 3), jnp.uint8)
  dot_a, dot_b = black.at[0, :, 9:11, 9:11].set(255), black.at[0, :, 13:15, 13:15].set(255)
  ta, _ = tok.apply(params, dot_a, jnp.ones((1, 2), bool))
  tb, _ = tok.apply(params, dot_b, jnp.ones((1, 2), bool))
  assert float(jnp.abs(ta[0, 16] - tb[0, 16]).max()) > 1e-3  # the keypoint token moved


@pytest.mark.parametrize("stem", [(), (4, 8)])
def test_flat_token_reads_the_whole_frame_with_weights_per_position(stem):
  """``flat_token``: T*(N+1) tokens, the extra one after the patches (and after the keypoint token when
  both are on) embedding all N patches' features with one matrix. Unlike a patch token, whose weights
  are shared by every patch, it sees which patch a feature is in: the same 2 px square in two
  different patches gives the same bag of patch embeddings (before positions) but two flat tokens."""
  frames, mask = _frames(), jnp.array([[False, True], [True, True]])
  tok = encoders.ImageTokenizer(width=24, patch_size=8, image=encoders.ImageFields(stem=stem, flat_token=True))
  params = tok.init(jax.random.key(0), frames, mask)
  out, out_mask = tok.apply(params, frames, mask)
  assert out.shape == (2, 2 * 17, 24)
  np.testing.assert_array_equal(out_mask, np.repeat(np.asarray(mask), 17, axis=1))
  features = 8 * 8 * 3 if not stem else 2 * 2 * 8  # per patch: pixels, or the stem's 2 x 2 cells of 8 channels
  assert params["params"]["flat_embed"]["kernel"].unbox().shape == (16 * features, 24)
  black = jnp.zeros((1, 2, 32, 32, 3), jnp.uint8)
  # A 2 px square in patch (1, 1) or (1, 2), placed so the stem's receptive fields (7 px) stay in the patch.
  square_a, square_b = black.at[0, :, 11:13, 11:13].set(255), black.at[0, :, 11:13, 19:21].set(255)
  ta, _ = tok.apply(params, square_a, jnp.ones((1, 2), bool))
  tb, _ = tok.apply(params, square_b, jnp.ones((1, 2), bool))
  pos = params["params"]["pos"].unbox()
  bag_a, bag_b = np.sort(np.asarray(ta[0, :16] - pos), axis=0), np.sort(np.asarray(tb[0, :16] - pos), axis=0)
  np.testing.assert_allclose(bag_a, bag_b, atol=1e-5)  # the patches' contents, unordered: the same
  assert float(jnp.abs(ta[0, 16] - tb[0, 16]).max()) > 1e-3  # the flat token tells the two apart
  both = encoders.ImageTokenizer(
      width=24, patch_size=8, image=encoders.ImageFields(stem=(4, 8), keypoints=3, flat_token=True))
  both_params = both.init(jax.random.key(0), frames, mask)
  assert both.apply(both_params, frames, mask)[0].shape == (2, 2 * 18, 24)


def test_keypoints_need_a_stem_and_a_level_of_it():
  frames, mask = _frames(), jnp.ones((2, 2), bool)
  with pytest.raises(ValueError, match="model.keypoints needs a convolutional stem"):
    encoders.ImageTokenizer(width=8, patch_size=8, image=encoders.ImageFields(keypoints=4)).init(
        jax.random.key(0), frames, mask)
  with pytest.raises(ValueError, match=r"model.keypoint_level=2 is not a level of model.stem=\(4, 8\)"):
    encoders.ImageTokenizer(
        width=8, patch_size=8, image=encoders.ImageFields(stem=(4, 8), keypoints=4, keypoint_level=2)).init(
        jax.random.key(0), frames, mask)


def test_image_fields_read_a_config_into_one_hashable_value():
  """``image_fields(config.model)``: every field from the config (lists become tuples), the default where
  a config lacks one, and a value hashable enough to be a module attribute under ``jit``."""
  cfg = ml_collections.ConfigDict(dict(stem=[32, 64], stem_strides=[1, 2], keypoints=np.int64(8), flat_token=1))
  image = encoders.image_fields(cfg)
  assert image == encoders.ImageFields(stem=(32, 64), stem_strides=(1, 2), keypoints=8, keypoint_level=0,
                                       flat_token=True)
  assert hash(image) == hash(encoders.ImageFields((32, 64), (1, 2), 8, 0, True))
  assert encoders.image_fields(ml_collections.ConfigDict()) == encoders.ImageFields()


def test_text_pool_is_one_token_the_mean_of_the_valid_byte_tokens():
  """``text_pool``: the instruction becomes one token, the masked mean of the same (unpooled) byte
  tokens with the same parameters; padding bytes past the mask do not move it."""
  b, length, width = 2, 6, 16
  ids = jnp.array([[5, 9, 2, 7, 0, 0], [3, 3, 8, 1, 4, 6]])
  batch = {"image_cam": jnp.asarray(_frames(b=b, t=1, s=16)), "history_mask": jnp.ones((b, 1), bool),
           "proprio": jnp.ones((b, 1, 4)), "language_tokens": ids,
           "language_mask": jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool),
           "dataset_id": jnp.zeros((b,), jnp.int32)}
  make = lambda pool: encoders.ObservationEncoder(width=width, patch_size=8, cameras=("cam",), vocab_size=16,
                                                  num_datasets=1, text_pool=pool)
  full, pooled = make(False), make(True)
  params = full.init(jax.random.PRNGKey(0), batch)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      pooled.init(jax.random.PRNGKey(0), batch))
  tok_full, mask_full = full.apply(params, batch)
  tok_pool, mask_pool = pooled.apply(params, batch)
  assert tok_pool.shape == (b, tok_full.shape[1] - (length - 1), width)
  text = slice(-1 - length, -1)  # the text tokens sit just before the dataset token
  expected = np.stack([np.asarray(tok_full[0, text][:4]).mean(0), np.asarray(tok_full[1, text]).mean(0)])
  np.testing.assert_allclose(tok_pool[:, -2], expected, rtol=1e-5, atol=1e-6)
  assert mask_pool[:, -2].all() and mask_pool.shape == tok_pool.shape[:2]
  np.testing.assert_array_equal(tok_pool[:, :-2], tok_full[:, :text.start])  # images, proprio unchanged
  moved = dict(batch, language_tokens=ids.at[0, 4:].set(11))  # other bytes where the mask is False
  np.testing.assert_allclose(pooled.apply(params, moved)[0], tok_pool, rtol=0, atol=0)


@pytest.mark.parametrize("config,preset", [("vla_baseline", "tiny"), ("video_wam", "policy_tiny"),
                                           ("joint_wam", "tiny"), ("idm_wam", "latent_policy_tiny")])
def test_text_pool_reaches_every_family_that_reads_the_instruction(config, preset):
  """``model.text_pool`` is a field of each family's config and reaches its ObservationEncoder: the
  pooled instruction makes the lowered loss cheaper (one token instead of L), parameters unchanged."""
  import importlib  # pylint: disable=g-import-not-at-top
  from wam_jax.data.fake_batch import make_batch  # pylint: disable=g-import-not-at-top
  from wam_jax.models import registry  # pylint: disable=g-import-not-at-top
  flops, shapes = {}, {}
  for pool in (False, True):
    cfg = importlib.import_module(f"experiments.configs.{config}").get_config(preset)
    assert cfg.model.text_pool is False  # off by default: saved runs keep their identity
    cfg.model.text_pool = pool
    cfg.train.init_from = ""
    batch = make_batch(cfg, 2)
    model = registry.build_model(cfg, num_datasets=1)
    shapes[pool] = jax.eval_shape(lambda b, m=model: registry.init_params(m, jax.random.key(0), b), batch)
    cost = jax.jit(lambda p, b, m=model: registry.loss_fn(m, p, b, jax.random.key(1), train=False)).lower(
        shapes[pool], batch).cost_analysis()
    flops[pool] = (cost if isinstance(cost, dict) else cost[0])["flops"]
  assert jax.tree_util.tree_structure(shapes[True]) == jax.tree_util.tree_structure(shapes[False])
  assert flops[True] < 0.95 * flops[False], flops
