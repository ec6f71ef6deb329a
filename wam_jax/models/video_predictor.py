"""The video world model's predictor: frames at t+k from history frames, instruction and (optionally) actions.

One bidirectional transformer (``layers.Transformer``) over four token segments,
with a block attention mask:

  segment   tokens                                           attends to
  --------  -----------------------------------------------  -----------------------------------
  context   C*T*N history-frame tokens + the caller's         context
            context tokens (proprio, instruction, dataset id)
  actions   K action tokens (forward-dynamics mode only)      context, actions (+ future where
                                                             actions_see_future: joint denoising)
  future    C*F*N tokens of the frames at t+k, .., t+F*k      context, actions, future
  queries   Q readout tokens (a policy's action queries)      context; future where see_future[b]

C cameras, T history frames, F future frames, N tokens per frame. The context
never attends to later segments, so its features are the same whether or not a
future is being generated: a policy reading only the context (``skip_video``)
gets the world model's own features in one pass. Queries never see the action
tokens (that would leak the chunk they predict).

Frames enter as tokens [B, C, T, N, P] of a frame representation
(``frames_to_tokens``: pixel patches in [-1, 1], or patches of autoencoder
latents). The future segment predicts, per future token, the *change* from the
last history frame's token (``delta``): a zero output is the copy-last-frame
baseline, and the output layer starts at zero, so training starts at that
baseline. Objectives (``objective``):

* ``regression``: future tokens are a learned query (+ positions); the output
  is the delta, trained with MSE.
* ``flow``: flow matching on the straight path over the delta tokens, the
  action heads' convention (``heads/flow.py``): x_tau = tau eps + (1 - tau) x0,
  tau = 1 is noise. The network predicts the clean x0 (data prediction, MSE on
  x0) and the sampler derives the velocity (x_tau - x0_hat) / tau, integrating
  from tau = 1 to 0 in a few Euler steps (``VideoWAM`` runs the loop). A
  velocity target (eps - x0) would make the net carry the noise of every
  one of the P = 768 values of a pixel patch through its D = 128 width; on a
  moving-square test it left the static background noisy (PSNR 2 dB *below*
  copy-last after 400 steps where data prediction is 2.5 dB above).

The video loss (``video_loss``, one definition for every family) is that MSE; with
``video.loss_norm='copy'`` it is divided by the same batch's MSE of predicting no change
(no gradient through the divisor), so 1.0 is the copy-last baseline whatever the frame
representation, ``delta_scale`` or dataset. Beside an action loss this matters: the raw MSE of
a 64 px frame's change is ~0.02, of which ~0.002 is learnable, and its gradient on the shared
trunk is ~10^3 times smaller than an L1 action head's (BUILD_NOTES.md, "The video loss never
reached the trunk"), so a family's ``video_weight`` of 1 trained no world model at all.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.models import encoders, frame_metrics, layers
from wam_jax.models.heads.denoiser import timestep_embedding
from wam_jax.models.heads.regression import masked_mean

REPRESENTATIONS = ("pixels", "latents")
OBJECTIVES = ("regression", "flow")
LOSS_NORMS = ("none", "copy")

# Segment kinds and which kinds each may attend to (row: query kind, column: key kind).
CONTEXT, ACTIONS, FUTURE, QUERIES = 0, 1, 2, 3
_SEES = np.array([
    # context actions future queries
    [1, 0, 0, 0],  # context
    [1, 1, 0, 0],  # actions
    [1, 1, 1, 0],  # future
    [1, 0, 0, 0],  # queries (+ future where see_future)
], bool)


def frames_to_tokens(frames_BTHWC, *, representation: str, patch: int, autoencoder=None):
  """uint8 [B, T, H, W, 3] -> tokens [B, T, N, P] in the frame representation.

  pixels: N = (H/p)(W/p), P = 3p^2, values in [-1, 1]. latents: the
  autoencoder's [h, w, C] latents cut into p x p patches, P = C p^2.
  """
  chex.assert_rank(frames_BTHWC, 5)
  if representation == "pixels":
    return encoders.patchify(frames_BTHWC, patch)
  b, t, h, w, _ = frames_BTHWC.shape
  latents = autoencoder.encode(frames_BTHWC.reshape(b * t, h, w, 3))
  latents = latents.reshape((b, t) + latents.shape[1:])
  return encoders.to_patches(latents, patch, field="config.model.latent_patch_size")


def tokens_to_frames(tokens_BTNP, *, representation: str, patch: int, image_size: int, autoencoder=None):
  """The inverse of ``frames_to_tokens``: tokens -> signed frames float [B, T, H, W, 3] (unclipped)."""
  if representation == "pixels":
    return encoders.from_patches(tokens_BTNP, patch, image_size, image_size)
  h, w, _ = autoencoder.latent_shape(image_size, image_size)
  latents = encoders.from_patches(tokens_BTNP, patch, h, w)
  b, t = latents.shape[:2]
  frames = autoencoder.decode(latents.reshape((b * t,) + latents.shape[2:]))
  return frames.reshape((b, t) + frames.shape[1:])


def segment_mask(kinds_N: np.ndarray, key_mask_BN, see_future_B=None, actions_see_future: bool = False):
  """[B, N, N] attention mask of a token sequence whose segment kinds are ``kinds_N``.

  ``key_mask_BN`` drops padded keys; ``see_future_B`` (bool [B] or None = False)
  opens the queries -> future block per example; ``actions_see_future`` opens the
  actions -> future block (joint denoising of both, ``families/joint_wam.py``).
  """
  sees = _SEES.copy()
  sees[ACTIONS, FUTURE] = actions_see_future
  static = sees[kinds_N[:, None], kinds_N[None, :]]
  mask = jnp.broadcast_to(jnp.asarray(static)[None], (key_mask_BN.shape[0],) + static.shape)
  if see_future_B is not None:
    opens = jnp.asarray((kinds_N[:, None] == QUERIES) & (kinds_N[None, :] == FUTURE))
    mask = mask | (opens[None] & see_future_B[:, None, None])
  return mask & key_mask_BN[:, None, :]


def grid_position_init(rng, shape, dtype=jnp.float32):
  """[N, D] position table of a square g x g token grid: sin/cos of the row (first D/2) and the
  column (last D/2), as ViT/MAE's fixed 2D embedding; learned from there. Neighbouring
  patches start out similar, so motion between them is quick to learn."""
  del rng
  n, d = shape
  g = int(round(n ** 0.5))
  if g * g != n or d % 4:
    raise ValueError(f"a {n}-token frame is not a square grid, or width {d} is not a multiple of 4")
  rows, cols = jnp.divmod(jnp.arange(n), g)
  # timestep_embedding(tau) has angles 1000 tau f: tau = position / 1000 gives angles position f.
  table = jnp.concatenate([timestep_embedding(rows / 1000.0, d // 2), timestep_embedding(cols / 1000.0, d // 2)], -1)
  return table.astype(dtype)


class VideoPredictor(nn.Module):
  """Predicts the future-frame token deltas (from a learned query, or from noisy deltas); reads out queries.

  Geometry fields: C cameras, T history, F future frames, N tokens per frame,
  P token size; ``action_horizon`` K and ``action_dim`` A when
  ``action_conditioned``.
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  token_dim: int          # P
  tokens_per_frame: int   # N
  num_cameras: int        # C
  history: int            # T
  num_future: int         # F
  objective: str = "regression"
  action_conditioned: bool = False
  action_horizon: int = 0
  action_dim: int = 0
  actions_see_future: bool = False  # joint (UWM) denoising: action tokens attend to the future too
  dropout: float = 0.0
  dot_general: layers.DotGeneral = None
  # Convolutional stem of the history frames (``encoders.conv_stem``; the VLA's ``model.stem``):
  # tokens -> their grid of ``token_channels`` values (3 for pixels, the autoencoder's latent
  # channels) -> 3x3 stride-2 convolutions -> the same N tokens of stem features -> ``history_in``.
  # The future segment stays in the frame representation (it is what is predicted).
  stem: tuple = ()
  token_channels: int = 3

  def _history_tokens(self, history_BCTNP):
    """[B, C, T, N, P] -> the tokens ``history_in`` embeds: the tokens, or their stem features."""
    if not self.stem:
      return history_BCTNP
    b, c, t, n, p = history_BCTNP.shape
    g, side = int(round(n ** 0.5)), int(round((p // self.token_channels) ** 0.5))
    if g * g != n or side * side * self.token_channels != p:
      raise ValueError(f"model.stem needs square frames of square tokens: {n} tokens of {p} values "
                       f"with {self.token_channels} channels per position")
    grid = encoders.from_patches(history_BCTNP.reshape(b * c, t, n, p), side, g * side, g * side)
    feats = encoders.stem_patches(grid, side, tuple(self.stem), field="the token side",
                                  prefix="history_stem")
    return feats.reshape((b, c, t, n, feats.shape[-1]))

  @nn.compact
  def __call__(self, history_BCTNP, history_mask_BT, context_BSD, context_mask_BS, *,
               future_BCFNP=None, tau_B=None, actions_BKA=None, action_mask_BK=None, action_tau_B=None,
               queries_BQD=None, see_future_B=None, with_future: bool = True, train: bool = False,
               return_action_features: bool = False):
    """Returns (predicted deltas [B, C, F, N, P] or None, query outputs [B, Q, D] or None), and the
    action tokens' outputs [B, K, D] third if ``return_action_features``.

    history_BCTNP: history-frame tokens; history_mask_BT: False for padding.
    context_BSD/context_mask_BS: the caller's other context tokens.
    future_BCFNP, tau_B: the noisy delta tokens x_tau and their time (flow only).
    actions_BKA, action_mask_BK: the chunk a forward-dynamics model conditions on
      (action_conditioned only; action-free rows have an all-False mask).
    action_tau_B: the noise time [B] of actions_BKA when they are noisy (joint
      denoising); None: clean actions, no time embedding.
    queries_BQD, see_future_B: readout tokens and, per example, whether they see
      the future segment. with_future=False leaves the future segment out.
    """
    b, c, t, n, p = history_BCTNP.shape
    chex.assert_shape(history_BCTNP, (b, self.num_cameras, self.history, self.tokens_per_frame, self.token_dim))
    chex.assert_shape(history_mask_BT, (b, self.history))
    chex.assert_rank([context_BSD, context_mask_BS], [3, 2])
    d, dg = self.width, self.dot_general
    cam = layers.learned_embedding(self, "camera", (self.num_cameras, d), (None, "embed"))
    time = layers.learned_embedding(self, "time", (self.history + self.num_future, d), ("time", "embed"))
    pos = self.param("pos", nn.with_logical_partitioning(grid_position_init, ("length", "embed")),
                     (self.tokens_per_frame, d))

    def positions(first_time: int, num_times: int):  # camera + time + in-frame position: [1, C, times, N, D]
      return (cam[:, None, None] + time[first_time:first_time + num_times][None, :, None] + pos[None, None])[None]

    hist = layers.logical_dense(d, ("patch", "embed"), dot_general=dg, name="history_in")(
        self._history_tokens(history_BCTNP))
    hist = (hist + positions(0, t)).reshape(b, c * t * n, d)
    hist_mask = jnp.broadcast_to(history_mask_BT[:, None, :, None], (b, c, t, n)).reshape(b, c * t * n)
    tokens = [hist, context_BSD]
    masks = [hist_mask, context_mask_BS]
    kinds = [CONTEXT] * (c * t * n + context_BSD.shape[1])

    if self.action_conditioned:
      chex.assert_shape(actions_BKA, (b, self.action_horizon, self.action_dim))
      act = layers.logical_dense(d, ("action", "embed"), dot_general=dg, name="action_in")(actions_BKA)
      act = act + layers.learned_embedding(self, "action_time", (self.action_horizon, d), ("time", "embed"))
      if action_tau_B is not None:
        chex.assert_shape(action_tau_B, (b,))
        tau_a = layers.logical_dense(self.mlp_dim, (None, "mlp"), dot_general=dg, name="action_tau_in")(
            timestep_embedding(action_tau_B, d))
        act = act + layers.logical_dense(d, ("mlp", "embed"), dot_general=dg, name="action_tau_out")(
            nn.silu(tau_a))[:, None]
      tokens.append(act)
      masks.append(action_mask_BK)
      kinds += [ACTIONS] * self.action_horizon

    f = self.num_future
    if with_future:
      if self.objective == "regression":
        query = layers.learned_embedding(self, "future_query", (d,), ("embed",))
        fut = jnp.broadcast_to(query + positions(t, f), (b, c, f, n, d))
      else:
        chex.assert_shape(future_BCFNP, (b, c, f, n, p))
        chex.assert_shape(tau_B, (b,))
        fut = layers.logical_dense(d, ("patch", "embed"), dot_general=dg, name="future_in")(future_BCFNP)
        tau = layers.logical_dense(self.mlp_dim, (None, "mlp"), dot_general=dg, name="tau_in")(
            timestep_embedding(tau_B, d))
        tau = layers.logical_dense(d, ("mlp", "embed"), dot_general=dg, name="tau_out")(nn.silu(tau))
        fut = fut + positions(t, f) + tau[:, None, None, None]
      tokens.append(fut.reshape(b, c * f * n, d))
      masks.append(jnp.ones((b, c * f * n), bool))
      kinds += [FUTURE] * (c * f * n)

    if queries_BQD is not None:
      tokens.append(queries_BQD)
      masks.append(jnp.ones(queries_BQD.shape[:2], bool))
      kinds += [QUERIES] * queries_BQD.shape[1]

    x = jnp.concatenate(tokens, axis=1)
    mask = segment_mask(np.asarray(kinds), jnp.concatenate(masks, axis=1),
                        see_future_B if with_future else None, self.actions_see_future)
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dropout, dg, name="transformer")(
        x, mask, train=train)

    kinds = np.asarray(kinds)  # segments are contiguous: slice them back out
    future_out = queries_out = None
    if with_future:
      start = int(np.argmax(kinds == FUTURE))
      out = layers.logical_dense(p, ("embed", "patch"), dot_general=dg, kernel_init=nn.initializers.zeros_init(),
                                 name="future_out")(x[:, start:start + c * f * n])
      future_out = out.reshape(b, c, f, n, p)
    if queries_BQD is not None:
      queries_out = x[:, len(kinds) - queries_BQD.shape[1]:]
    if return_action_features:
      start = int(np.argmax(kinds == ACTIONS))
      return future_out, queries_out, x[:, start:start + self.action_horizon]
    return future_out, queries_out


def video_loss(out_BCFNP, delta_BCFNP, valid_BCF, loss_norm: str = "none"):
  """(loss, metrics) of predicted change tokens ``out`` against the true change ``delta``.

  metrics["video_loss"] is always the MSE over valid frames (comparable across runs); the
  returned loss is that MSE, or with ``loss_norm='copy'`` the MSE over the batch's copy-last MSE
  (``video_loss_vs_copy``: 1.0 is copying the last frame, 0.7 a 30% better prediction).
  """
  chex.assert_equal_shape((out_BCFNP, delta_BCFNP))
  chex.assert_shape(valid_BCF, out_BCFNP.shape[:3])
  mse = masked_mean(jnp.mean((out_BCFNP - delta_BCFNP) ** 2, axis=(-2, -1)), valid_BCF)
  if loss_norm == "none":
    return mse, {"video_loss": mse}
  if loss_norm != "copy":
    raise ValueError(f"config.model.video.loss_norm={loss_norm!r} is not one of {list(LOSS_NORMS)}")
  relative = relative_to_copy(mse, masked_mean(jnp.mean(delta_BCFNP ** 2, axis=(-2, -1)), valid_BCF))
  return relative, {"video_loss": mse, "video_loss_vs_copy": relative}


def relative_to_copy(mse, copy_mse):
  """``mse`` as the fraction of copy-last's error left (1.0 = copying); no gradient through the divisor."""
  return mse / jax.lax.stop_gradient(jnp.maximum(copy_mse, 1e-12))


def check_config(model_cfg) -> None:
  """The world-model fields of config.model; raises a one-line ValueError naming the field."""
  if model_cfg.frames not in REPRESENTATIONS:
    raise ValueError(f"config.model.frames={model_cfg.frames!r} is not one of {list(REPRESENTATIONS)}")
  image = encoders.image_fields(model_cfg)
  for field in ("stem_strides", "keypoints", "flat_token"):
    if getattr(image, field):
      raise ValueError(f"config.model.{field}={getattr(image, field)!r}: the video predictor reads frames as its own token "
                       "grid (model.stem only); this field is for the families that read frames through "
                       "encoders.ImageTokenizer (vla, idm, latent actions, latent policy)")
  video = model_cfg.video
  if video.objective not in OBJECTIVES:
    raise ValueError(f"config.model.video.objective={video.objective!r} is not one of {list(OBJECTIVES)}")
  if not 1 <= int(video.num_sampling_steps) <= 100:
    raise ValueError(f"config.model.video.num_sampling_steps={video.num_sampling_steps} must be in [1, 100]")
  if not video.delta_scale > 0:
    raise ValueError(f"config.model.video.delta_scale={video.delta_scale} must be positive")
  if not 0.0 <= video.t_min < 1.0:
    raise ValueError(f"config.model.video.t_min={video.t_min} must be in [0, 1)")
  if video.get("loss_norm", "none") not in LOSS_NORMS:
    raise ValueError(f"config.model.video.loss_norm={video.loss_norm!r} is not one of {list(LOSS_NORMS)}")

