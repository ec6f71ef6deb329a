"""The shared image tokenizer: ViT patch embedding and the convolutional stem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.models import encoders


def _frames(b=2, t=2, s=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t, s, s, 3)), jnp.uint8)


@pytest.mark.parametrize("stem", [(), (8,), (8, 16)])
def test_stem_keeps_the_token_grid_and_mask(stem):
  frames, mask = _frames(), jnp.array([[False, True], [True, True]])
  tok = encoders.ImageTokenizer(width=24, patch_size=8, stem=stem)
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
  tok = encoders.ImageTokenizer(width=16, patch_size=8, stem=(4, 8))
  params = tok.init(jax.random.key(1), frames, jnp.ones((1, 1), bool))
  base, _ = tok.apply(params, frames, jnp.ones((1, 1), bool))
  changed, _ = tok.apply(params, frames.at[0, 0, 0:4, 0:4].set(255 - frames[0, 0, 0:4, 0:4]),
                         jnp.ones((1, 1), bool))
  moved = np.abs(np.asarray(changed - base)).max(-1)[0] > 1e-6
  assert moved[0] and not moved[1:].any()  # only the top-left token (of 16)


def test_stem_rejects_a_patch_it_cannot_halve_into():
  tok = encoders.ImageTokenizer(width=8, patch_size=4, stem=(4, 4, 4))
  with pytest.raises(ValueError, match=r"model.patch_size=4 .* 2\^len\(model.stem\)=8"):
    tok.init(jax.random.key(0), _frames(), jnp.ones((2, 2), bool))
