"""Transition encoder: what happened between o_t and o_t+k, read out by learned queries.

Shared by the inverse-dynamics model (queries -> an action chunk through a head)
and the latent-action model (queries -> a latent action ``z``). One bidirectional
transformer (``layers.Transformer``) over:

  frames    per camera, the T history frames o_t-T+1..o_t and the F future frames
            o_t+k..o_t+Fk as patch tokens (one ``encoders.ImageTokenizer``:
            the same patch embedding for both, time embeddings 0..T+F-1);
            padded history and future frames past an episode's end are masked
  motion    optional (``frame_difference``): patches of o_t+jk - o_t, the
            change an inverse model has to explain, made explicit
  context   proprio, instruction, dataset id (``encoders.ObservationEncoder``
            with no cameras); ``use_proprio`` / ``use_language`` switch the
            first two off (zero proprio, all-False language mask)
  state     optional (``use_future_proprio``): one token per future step, the
            proprio at t+jk (masked past the episode end). Robot logs without
            actions usually still record the robot's state; where the hand went
            is most of what the actions did. Video without state (humans, the
            web, a video model's plan) cannot feed it
  queries   Q learned tokens; their outputs [B, Q, D] are the readout
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from wam_jax.models import encoders, layers


def context_inputs(batch, *, use_proprio: bool, use_language: bool) -> dict:
  """The batch with proprio zeroed and/or the instruction masked out, as a model that must not use them sees it."""
  batch = dict(batch)
  if not use_proprio:
    batch["proprio"] = jnp.zeros_like(batch["proprio"])
  if not use_language:
    batch["language_mask"] = jnp.zeros_like(batch["language_mask"])
  return batch


class TransitionEncoder(nn.Module):
  """(history frames, future frames, context) + Q queries -> readout [B, Q, D] (module docstring)."""
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  cameras: tuple
  num_queries: int        # Q
  vocab_size: int
  num_datasets: int
  use_proprio: bool = True
  use_language: bool = True
  frame_difference: bool = True
  use_future_proprio: bool = False
  dropout: float = 0.0
  dot_general: layers.DotGeneral = None
  image: encoders.ImageFields = encoders.ImageFields()  # the frames' tokenizer (motion patches stay pixel differences)

  @nn.compact
  def __call__(self, batch, train: bool = False):
    d, dg = self.width, self.dot_general
    hist_mask_BT, fut_mask_BF = batch["history_mask"], batch["future_mask"]
    b, t = hist_mask_BT.shape
    f = fut_mask_BF.shape[1]
    tokens, masks = [], []
    for cam in self.cameras:
      hist_BTHWC, fut_BFHWC = batch[f"image_{cam}"], batch[f"future_image_{cam}"]
      chex.assert_rank([hist_BTHWC, fut_BFHWC], 5)
      chex.assert_equal_shape([hist_BTHWC[:, :1], fut_BFHWC[:, :1]])
      chex.assert_shape([hist_BTHWC, fut_BFHWC], [(b, t) + hist_BTHWC.shape[2:], (b, f) + hist_BTHWC.shape[2:]])
      frames = jnp.concatenate([hist_BTHWC, fut_BFHWC], axis=1)
      mask = jnp.concatenate([hist_mask_BT, fut_mask_BF], axis=1)
      tok, m = encoders.ImageTokenizer(d, self.patch_size, dg, self.image, name=f"frames_{cam}")(frames, mask)
      tok = tok + layers.learned_embedding(self, f"camera_{cam}", (d,), ("embed",))
      tokens.append(tok)
      masks.append(m)
      if self.frame_difference:  # o_t+jk - o_t in [-1, 1], patch-embedded with its own positions
        diff = (fut_BFHWC.astype(jnp.float32) - hist_BTHWC[:, -1:].astype(jnp.float32)) / 255.0
        patches_BFNP = encoders.to_patches(diff, self.patch_size)
        n = patches_BFNP.shape[2]
        mot = layers.logical_dense(d, ("patch", "embed"), dot_general=dg, name=f"motion_{cam}")(patches_BFNP)
        mot = mot + layers.learned_embedding(self, f"motion_pos_{cam}", (n, d), ("length", "embed"))
        tokens.append(mot.reshape(b, f * n, d))
        masks.append(jnp.broadcast_to(fut_mask_BF[:, :, None], (b, f, n)).reshape(b, f * n))
    ctx_BSD, ctx_mask_BS = encoders.ObservationEncoder(
        width=d, patch_size=self.patch_size, cameras=(), vocab_size=self.vocab_size,
        num_datasets=self.num_datasets, dot_general=dg, name="context")(
            context_inputs(batch, use_proprio=self.use_proprio, use_language=self.use_language))
    if self.use_future_proprio:
      chex.assert_shape(batch["future_proprio"], (b, f, batch["proprio"].shape[-1]))
      state_BFD = layers.logical_dense(d, (None, "embed"), dot_general=dg, name="future_proprio")(
          batch["future_proprio"])
      tokens.append(state_BFD + layers.learned_embedding(self, "future_proprio_time", (f, d), ("time", "embed")))
      masks.append(fut_mask_BF)
    queries = layers.learned_embedding(self, "queries", (self.num_queries, d), ("length", "embed"))
    tokens += [ctx_BSD, jnp.broadcast_to(queries[None], (b, self.num_queries, d))]
    masks += [ctx_mask_BS, jnp.ones((b, self.num_queries), bool)]
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dropout, dg, name="transformer")(
        jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), train=train)
    readout_BQD = x[:, -self.num_queries:]
    chex.assert_shape(readout_BQD, (b, self.num_queries, d))
    return readout_BQD
