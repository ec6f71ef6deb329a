"""Family 1: the video-backbone world-action model (video WAM).

A video world model (``models/video_predictor.py``) pretrained on action-free
video, then adapted to act. One module serves both stages:

* stage 1 (``model.policy.enabled=False``): history frames + instruction (+
  proprio, dataset id) -> the frames at t+k..t+F*k. Loss: the video loss.
* stage 2 (``model.policy.enabled=True``, restored from stage 1 by parameter
  path with ``train.init_from``): K action queries read the same transformer
  and feed the action head named by ``config.model.head``. Loss: the head's
  action loss + ``video.loss_weight`` x the video loss on the same batch
  (co-training; action-free rows have an all-False action mask and add only
  the video loss). ``policy.adapt`` (frozen | last_n_blocks | full) and
  ``policy.backbone_lr_multiplier`` become per-parameter learning-rate
  multipliers (``lr_multipliers``, applied by the shared optimizer).

During stage-2 training each example's queries see the future segment with
probability ``policy.see_future_prob``, so one checkpoint serves both
inference paths (``policy.skip_video``):

* ``skip_video=True``: one pass over context + queries; the queries read the
  world model's context features and no frame is generated (Fast-WAM).
* ``skip_video=False``: generate the future frames first (regression: the
  future segment of the same pass; flow: ``video.num_sampling_steps`` Euler
  steps, then a pass at tau = 0 on the generated frames), then read the
  queries with the future visible.

In forward-dynamics mode (``video.action_conditioned``) the future segment
also sees the action chunk; in stage 2 it is hidden wherever the queries see
the future (or the chunk would leak into its own prediction).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import encoders, frame_metrics, heads, layers
from wam_jax.models import video_predictor as vp
from wam_jax.models.frame_autoencoder import FrameAutoencoder, downsample_factor
from wam_jax.models.heads import build_head
from wam_jax.models.heads.regression import masked_mean

ADAPT = ("frozen", "last_n_blocks", "full")
NEW_PARAMS = "action_queries|head/.*"   # what stage 2 adds on top of the stage-1 backbone


def token_geometry(model_cfg, image_size: int) -> tuple[int, int]:
  """(tokens per frame N, token size P) of the frame representation."""
  if model_cfg.frames == "pixels":
    p = model_cfg.patch_size
    return (image_size // p) ** 2, 3 * p * p
  ae = model_cfg.autoencoder
  grid = image_size // downsample_factor(ae.channels, ae.get("patch", 0))
  q = model_cfg.latent_patch_size
  return (grid // q) ** 2, ae.latent_channels * q * q


class VideoWAM(nn.Module):
  config: object        # config.model
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  @staticmethod
  def check_config(model_cfg) -> None:
    """config.model's world-model and policy fields; a one-line ValueError naming the field."""
    vp.check_config(model_cfg)
    pol = model_cfg.policy
    if pol.adapt not in ADAPT:
      raise ValueError(f"config.model.policy.adapt={pol.adapt!r} is not one of {list(ADAPT)}")
    if pol.adapt == "last_n_blocks" and not 1 <= pol.last_n_blocks <= model_cfg.depth:
      raise ValueError(f"config.model.policy.last_n_blocks={pol.last_n_blocks} must be in [1, model.depth="
                       f"{model_cfg.depth}]")
    if not pol.backbone_lr_multiplier >= 0:
      raise ValueError(f"config.model.policy.backbone_lr_multiplier={pol.backbone_lr_multiplier} must be >= 0")
    if not 0.0 <= pol.see_future_prob <= 1.0:
      raise ValueError(f"config.model.policy.see_future_prob={pol.see_future_prob} must be in [0, 1]")

  def setup(self):
    cfg = self.config
    self.check_config(cfg)
    self._setup_world_model(action_conditioned=cfg.video.action_conditioned)
    if cfg.policy.enabled:
      self._setup_policy(action_queries=True)

  def _setup_world_model(self, *, action_conditioned: bool, actions_see_future: bool = False):
    """The frame representation, context encoder and video predictor (called from ``setup``;
    ``families/joint_wam.py`` builds the same world model with its own action segment)."""
    cfg, data = self.config, self.data_config
    n, p = token_geometry(cfg, data.image_size)
    if cfg.frames == "latents":
      self.autoencoder = FrameAutoencoder.from_config(cfg.autoencoder)
    # Proprio, instruction and dataset-id tokens; frames are the predictor's own tokens.
    self.encoder = encoders.ObservationEncoder(
        width=cfg.width, patch_size=cfg.patch_size, cameras=(), vocab_size=self.vocab_size,
        num_datasets=self.num_datasets, dot_general=self.dot_general, text_pool=cfg.get("text_pool", False))
    self.predictor = vp.VideoPredictor(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, token_dim=p,
        tokens_per_frame=n, num_cameras=len(data.cameras), history=data.history, num_future=data.num_future,
        objective=cfg.video.objective, action_conditioned=action_conditioned,
        actions_see_future=actions_see_future, action_horizon=data.action_horizon, action_dim=data.action_dim,
        dropout=cfg.dropout, dot_general=self.dot_general, stem=tuple(cfg.get("stem", ())),
        token_channels=3 if cfg.frames == "pixels" else cfg.autoencoder.latent_channels)

  def _setup_policy(self, *, action_queries: bool):
    """The action head named by config.model.head, and K learned action queries if asked."""
    cfg, data = self.config, self.data_config
    if action_queries:
      self.action_queries = self.param(
          "action_queries", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
          (data.action_horizon, cfg.width))
    self.head = build_head(cfg.head, horizon=data.action_horizon, action_dim=data.action_dim,
                           dot_general=self.dot_general)

  # -- frames <-> tokens ----------------------------------------------------------
  def _tokens(self, batch, prefix: str):
    """Frames batch[prefix + cam] of every camera -> tokens [B, C, T, N, P] (no gradient)."""
    cfg = self.config
    patch = cfg.patch_size if cfg.frames == "pixels" else cfg.latent_patch_size
    ae = self.autoencoder if cfg.frames == "latents" else None
    toks = [vp.frames_to_tokens(batch[prefix + cam], representation=cfg.frames, patch=patch, autoencoder=ae)
            for cam in self.data_config.cameras]
    return jax.lax.stop_gradient(jnp.stack(toks, axis=1))

  def _frames(self, tokens_BCFNP):
    """Tokens [B, C, F, N, P] -> frames in [0, 1] on the uint8 grid (as a saved frame), [B, C, F, H, W, 3]."""
    cfg = self.config
    b, c, f = tokens_BCFNP.shape[:3]
    frames = vp.tokens_to_frames(
        tokens_BCFNP.reshape((b, c * f) + tokens_BCFNP.shape[3:]), representation=cfg.frames,
        patch=cfg.patch_size if cfg.frames == "pixels" else cfg.latent_patch_size,
        image_size=self.data_config.image_size, autoencoder=self.autoencoder if cfg.frames == "latents" else None)
    return frame_metrics.quantize(frame_metrics.signed_to_unit(frames.reshape((b, c, f) + frames.shape[2:])))

  # -- one predictor pass -------------------------------------------------------
  def _predict(self, batch, hist, context, *, future=None, tau=None, see_future=None, queries=False,
               with_future=True, train=False):
    b = hist.shape[0]
    actions = action_mask = None
    if self.config.video.action_conditioned:
      k, a = self.data_config.action_horizon, self.data_config.action_dim
      actions = batch.get("actions", jnp.zeros((b, k, a)))
      action_mask = batch.get("action_mask", jnp.zeros((b, k), bool))
      if see_future is not None:  # where queries read the future, it must not have seen their chunk
        action_mask = action_mask & ~see_future[:, None]
    q = jnp.broadcast_to(self.action_queries[None], (b,) + self.action_queries.shape) if queries else None
    return self.predictor(hist, batch["history_mask"], *context, future_BCFNP=future, tau_B=tau,
                          actions_BKA=actions, action_mask_BK=action_mask, queries_BQD=q,
                          see_future_B=see_future, with_future=with_future, train=train)

  def _generate(self, batch, hist, context):
    """Predicted (scaled) delta tokens of the future frames [B, C, F, N, P]."""
    video = self.config.video
    if video.objective == "regression":
      return self._predict(batch, hist, context)[0]
    b, c, _, n, p = hist.shape
    x = jax.random.normal(self.make_rng("noise"), (b, c, self.data_config.num_future, n, p))
    dt = 1.0 / video.num_sampling_steps
    for i in range(video.num_sampling_steps):  # few steps: unrolled
      tau = 1.0 - i * dt
      x0 = self._predict(batch, hist, context, future=x, tau=jnp.full((b,), tau))[0]
      x = x - dt * (x - x0) / tau  # Euler on the velocity implied by the predicted x0
    return x

  # -- the family interface -------------------------------------------------------
  def __call__(self, batch, train: bool = True):
    """Training loss: (scalar, metrics). See the module docstring."""
    cfg, video, pol = self.config, self.config.video, self.config.policy
    hist, fut = self._tokens(batch, "image_"), self._tokens(batch, "future_image_")
    context = self.encoder(batch)
    b, c, f = fut.shape[:3]
    delta = (fut - hist[:, :, -1:]) * video.delta_scale
    with_future = not pol.enabled or video.loss_weight > 0 or pol.see_future_prob > 0
    see_future = None
    if pol.enabled and train:
      see_future = jax.random.bernoulli(self.make_rng("dropout"), pol.see_future_prob, (b,))
    elif pol.enabled:  # validation reads the actions as inference will
      see_future = jnp.full((b,), not pol.skip_video)
    future_in = tau = None
    if video.objective == "flow":  # both objectives predict the clean delta; flow sees it noised
      t_rng, eps_rng = jax.random.split(self.make_rng("noise"))
      tau = video.t_min + (1.0 - video.t_min) * jax.random.uniform(t_rng, (b,))
      eps = jax.random.normal(eps_rng, delta.shape)
      future_in = tau[:, None, None, None, None] * eps + (1.0 - tau[:, None, None, None, None]) * delta
    out, readout = self._predict(batch, hist, context, future=future_in, tau=tau, see_future=see_future,
                                 queries=pol.enabled, with_future=with_future, train=train)
    valid_BCF = jnp.broadcast_to(batch["future_mask"][:, None, :], (b, c, f))
    metrics = {}
    video_loss = 0.0
    if with_future:
      video_loss, video_metrics = vp.video_loss(out, delta, valid_BCF, video.get("loss_norm", "none"))
      metrics.update(video_metrics)
    if pol.enabled:
      mask_BKA = heads.loss_mask(batch)
      action_loss, head_metrics = self.head(readout, batch["actions"], mask_BKA, train=train)
      metrics.update(head_metrics, action_loss=action_loss)
      loss = action_loss + video.loss_weight * video_loss
    else:
      loss = video_loss
      metrics["loss_weight"] = valid_BCF.sum().astype(jnp.float32)
    if self.is_initializing() and cfg.frames == "latents":
      self._frames(fut)  # creates the decoder's params (only frame outputs use it)
    elif not train and with_future:
      metrics.update(self._video_metrics(batch, hist, fut, delta, context, valid_BCF))
    return loss, metrics

  def _video_metrics(self, batch, hist, fut, delta, context, valid_BCF) -> dict:
    """PSNR/SSIM at t+k..t+F*k of the generated frames and of copying the last frame, and the
    video loss of predicting no change (``copy_last_video_loss``)."""
    cams = self.data_config.cameras
    real = jnp.stack([frame_metrics.uint8_to_signed(batch["future_image_" + c]) for c in cams], 1)
    last = jnp.stack([frame_metrics.uint8_to_signed(batch["image_" + c][:, -1:]) for c in cams], 1)
    real, last = frame_metrics.signed_to_unit(real), frame_metrics.signed_to_unit(last)
    pred = self._frames_from_delta(hist, self._generate(batch, hist, context))
    out = {"copy_last_video_loss": masked_mean(jnp.mean(delta ** 2, axis=(-2, -1)), valid_BCF)}
    for name, frames in (("video", pred), ("copy_last", jnp.broadcast_to(last, real.shape))):
      out[f"{name}_psnr"] = masked_mean(frame_metrics.psnr(frames, real), valid_BCF)
      out[f"{name}_ssim"] = masked_mean(frame_metrics.ssim(frames, real), valid_BCF)
    if self.config.frames == "latents":  # the autoencoder's ceiling on the same frames
      out["recon_psnr"] = masked_mean(frame_metrics.psnr(self._frames(fut), real), valid_BCF)
    return out

  def _frames_from_delta(self, hist, delta):
    """Frames in [0, 1], [B, C, F, H, W, 3], from predicted change tokens ``delta`` [B, C, F, N, P]
    (scaled by ``video.delta_scale``) added to the last history frame's tokens ``hist[:, :, -1:]``."""
    return self._frames(hist[:, :, -1:] + delta / self.config.video.delta_scale)

  def _frame_dict(self, frames_BCFHW3):
    """{camera: uint8 [B, F, H, W, 3]}: the ``predict_frames`` output of every family."""
    return {cam: frame_metrics.unit_to_uint8(frames_BCFHW3[:, i]) for i, cam in enumerate(self.data_config.cameras)}

  def _frame_context(self, batch):
    """What the video predictor conditions on: the context encoder (the hybrid: its VLM backbone)."""
    return self.encoder(batch)

  def predict_frames(self, batch):
    """Generated future frames: {camera: uint8 [B, F, H, W, 3]}."""
    hist = self._tokens(batch, "image_")
    return self._frame_dict(self._frames_from_delta(hist, self._generate(batch, hist, self._frame_context(batch))))

  def predict_actions(self, batch):
    """Normalized action chunk [B, K, A], by ``policy.skip_video`` (module docstring)."""
    cfg = self.config
    if not cfg.policy.enabled:
      raise ValueError("config.model.policy.enabled=False: a stage-1 video model has no action readout "
                       "(train a policy stage, e.g. video_wam.py:policy_tiny)")
    hist, context = self._tokens(batch, "image_"), self.encoder(batch)
    b = hist.shape[0]
    if cfg.policy.skip_video:
      _, readout = self._predict(batch, hist, context, queries=True, with_future=False)
    else:
      future = tau = None
      if cfg.video.objective == "flow":
        future, tau = self._generate(batch, hist, context), jnp.zeros((b,))
      _, readout = self._predict(batch, hist, context, future=future, tau=tau, queries=True,
                                 see_future=jnp.ones((b,), bool))
    return self.head.sample(readout)

  @nn.nowrap
  def lr_multipliers(self) -> tuple:
    """((parameter-path regex, learning-rate multiplier), ...), first match wins (training/state.py).

    The autoencoder is always frozen (a fixed latent space); in stage 2 the new
    parameters train at the full rate and the backbone as ``policy.adapt`` says.
    """
    cfg, pol = self.config, self.config.policy
    rules = [("autoencoder/.*", 0.0)] if cfg.frames == "latents" else []
    if not pol.enabled:
      return tuple(rules)
    rules.append((NEW_PARAMS, 1.0))
    m = float(pol.backbone_lr_multiplier)
    if pol.adapt == "last_n_blocks":
      blocks = "|".join(f"block_{i}" for i in range(cfg.depth - pol.last_n_blocks, cfg.depth))
      rules.append((f"predictor/transformer/({blocks}|ln_final)/.*", m))
    rules.append((".*", m if pol.adapt == "full" else 0.0))
    return tuple(rules)
