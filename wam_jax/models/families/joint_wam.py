"""Family 3: joint prediction of the future frames and the action chunk from one policy.

One ``VideoPredictor`` pass over the history frames + instruction/proprio/dataset
context produces both outputs; the loss is
``video_weight * video_loss + action_weight * action_loss``. Action-free rows of
the mixture (all-False ``action_mask``) add only the video loss. It is
``VideoWAM`` (family 1) trained from scratch on both objectives at once, plus a
UWM-style decoupled mode; frames, tokens, sampling and video metrics are that
family's (this class subclasses it).

Two ways to put the actions in the pass (``model.decoupled``):

* ``False`` (joint readout, UVA-like; any video objective, any head): K action
  queries read the context and feed the head named by ``config.model.head``;
  future-frame tokens (regression queries or noisy flow deltas) sit beside them.
  The queries never attend to the future segment, so ``skip_video=True`` leaves
  the frame tokens out of the pass and returns the *same* chunk with
  C*F*N fewer tokens (tested); the video objective shapes the actions only through
  the shared context features, which the future tokens read.
* ``True`` (UWM: video objective ``flow``, head ``flow``): the noisy chunk is an
  action-token segment of the transformer with its own noise time tau_a, drawn
  independently of the frames' tau_v (each is set to exactly 0 or 1 with
  probability ``endpoint_prob``/2, so the clean and fully-noised ends inference
  uses are trained). Actions and future attend to each other; the action tokens'
  outputs condition the flow head's denoiser (``head.denoise``), which predicts the
  velocity eps - a0 as the head's own loss does. One network then serves as:

    mode               actions                 frames
    policy             denoised from noise     tau_v = 1 (pure noise, marginalised) if
                                               skip_video, else denoised jointly
    forward_dynamics   clean (given chunk)     denoised
    inverse_dynamics   denoised                clean (given future frames)
    video              tau_a = 1 (marginal)    denoised

  ``model.mode`` selects what ``predict_actions`` (policy | inverse_dynamics) and
  ``predict_frames`` do; ``predict_frames`` given the chunk just executed
  (``batch["actions"]``, what ``inference.CheckpointPolicy`` passes) is forward
  dynamics: the frame the model expects that chunk to produce. With skip_video the
  frame tokens are fully noised rather than left out: the network was trained with
  them present at every tau_v, and tau_v = 1 is exactly the marginal over frames.
  Validation reports each mode: ``fd_psnr`` (frames given the true chunk), ``video_psnr``
  (actions marginalised), ``id_action_l1`` (actions given the true future) beside
  ``policy_action_l1`` and ``copy_last_psnr``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wam_jax.models import frame_metrics, heads
from wam_jax.models import video_predictor as vp
from wam_jax.models.families.video_wam import VideoWAM
from wam_jax.models.heads.regression import action_errors, masked_mean

MODES = ("policy", "forward_dynamics", "inverse_dynamics", "video")
CLEAN, GENERATE, MARGINAL = "clean", "generate", "marginal"   # a stream's role in one sampling loop


class JointWAM(VideoWAM):
  """config.model: width/depth/..., frames, video.{objective, num_sampling_steps, delta_scale,
  t_min}, video_weight, action_weight, decoupled, endpoint_prob, mode, skip_video, head."""

  @staticmethod
  def check_config(model_cfg) -> None:
    vp.check_config(model_cfg)
    if model_cfg.mode not in MODES:
      raise ValueError(f"config.model.mode={model_cfg.mode!r} is not one of {list(MODES)}")
    for field in ("video_weight", "action_weight"):
      if not model_cfg[field] >= 0:
        raise ValueError(f"config.model.{field}={model_cfg[field]} must be >= 0")
    if not 0.0 <= model_cfg.endpoint_prob <= 1.0:
      raise ValueError(f"config.model.endpoint_prob={model_cfg.endpoint_prob} must be in [0, 1]")
    if model_cfg.decoupled and (model_cfg.video.objective != "flow" or model_cfg.head.name != "flow"):
      raise ValueError(f"config.model.decoupled=True needs model.video.objective='flow' and model.head.name="
                       f"'flow' (got {model_cfg.video.objective!r}, {model_cfg.head.name!r})")
    if not model_cfg.decoupled and model_cfg.mode != "policy":
      raise ValueError(f"config.model.mode={model_cfg.mode!r} needs model.decoupled=True (independent noise "
                       "levels); the joint readout has only the policy mode")

  def setup(self):
    cfg = self.config
    self.check_config(cfg)
    self._setup_world_model(action_conditioned=cfg.decoupled, actions_see_future=cfg.decoupled)
    self._setup_policy(action_queries=not cfg.decoupled)  # decoupled: the chunk is its own token segment

  # -- one predictor pass ---------------------------------------------------------
  def _predict(self, batch, hist, context, *, future=None, tau=None, see_future=None, queries=False,
               with_future=True, train=False, actions=None, action_tau=None):
    """Joint readout: (deltas, query outputs); decoupled: (deltas, action-token outputs [B, K, D]).

    ``VideoWAM._generate`` calls this for the video-only sampling loop: decoupled, the
    actions are then marginalised (pure noise at tau_a = 1).
    """
    del see_future  # the queries never see the future (module docstring)
    b = hist.shape[0]
    if not self.config.decoupled:
      q = jnp.broadcast_to(self.action_queries[None], (b,) + self.action_queries.shape) if queries else None
      return self.predictor(hist, batch["history_mask"], *context, future_BCFNP=future, tau_B=tau,
                            queries_BQD=q, with_future=with_future, train=train)
    k, a = self.data_config.action_horizon, self.data_config.action_dim
    if actions is None:  # marginalised
      actions = jax.random.normal(self.make_rng("noise"), (b, k, a))
      action_tau = jnp.ones((b,))
    # Padded steps and action-free rows are never attended to; an observation has every step.
    action_mask = batch["action_mask"] if "action_mask" in batch else jnp.ones((b, k), bool)
    out, _, act = self.predictor(hist, batch["history_mask"], *context, future_BCFNP=future, tau_B=tau,
                                 actions_BKA=actions, action_mask_BK=action_mask, action_tau_B=action_tau,
                                 train=train, return_action_features=True)
    return out, act

  # -- training -----------------------------------------------------------------
  def _endpoints(self, rng, tau_B):
    """tau with probability endpoint_prob/2 each set to exactly 0 (clean) or 1 (marginal)."""
    u = jax.random.uniform(rng, tau_B.shape)
    p = self.config.endpoint_prob / 2
    return jnp.where(u < p, 0.0, jnp.where(u < 2 * p, 1.0, tau_B))

  def __call__(self, batch, train: bool = True):
    """Training loss: (scalar, metrics). See the module docstring."""
    cfg, video = self.config, self.config.video
    hist, fut = self._tokens(batch, "image_"), self._tokens(batch, "future_image_")
    context = self.encoder(batch)
    b, c, f = fut.shape[:3]
    delta = (fut - hist[:, :, -1:]) * video.delta_scale
    mask_BKA = heads.loss_mask(batch)
    with_future = self.predicts_frames
    future_in = tau = None
    if video.objective == "flow":
      t_rng, eps_rng, end_rng = jax.random.split(self.make_rng("noise"), 3)
      tau = video.t_min + (1.0 - video.t_min) * jax.random.uniform(t_rng, (b,))
      if cfg.decoupled:
        tau = self._endpoints(end_rng, tau)
      eps = jax.random.normal(eps_rng, delta.shape)
      future_in = tau[:, None, None, None, None] * eps + (1.0 - tau[:, None, None, None, None]) * delta
    metrics = {}
    if cfg.decoupled:
      t_rng, eps_rng, end_rng = jax.random.split(self.make_rng("noise"), 3)
      tau_a = self._endpoints(end_rng, self.head.draw_time(t_rng, b))
      a0 = jnp.where(mask_BKA, batch["actions"], 0.0)
      x_a, target, tau_a = self.head.corrupt(a0, jax.random.normal(eps_rng, a0.shape), tau_a)
      out, feats = self._predict(batch, hist, context, future=future_in, tau=tau, actions=x_a,
                                 action_tau=tau_a, train=train)
      # Where tau_a = 0 the chunk is the clean condition of the frames: no action target.
      action_loss = masked_mean((self.head.denoise(x_a, tau_a, feats) - target) ** 2,
                                mask_BKA & (tau_a > 0)[:, None, None])
      metrics["denoise_mse"] = action_loss
    else:
      out, readout = self._predict(batch, hist, context, future=future_in, tau=tau, queries=True,
                                   with_future=with_future, train=train)
      action_loss, head_metrics = self.head(readout, batch["actions"], mask_BKA, train=train)
      metrics.update({k: v for k, v in head_metrics.items() if k != "loss_weight"})
    valid_BCF = jnp.broadcast_to(batch["future_mask"][:, None, :], (b, c, f))
    video_loss = 0.0
    if with_future:
      video_loss, video_metrics = vp.video_loss(out, delta, valid_BCF, video.get("loss_norm", "none"))
      metrics.update(video_metrics)
    metrics["action_loss"] = action_loss
    loss = cfg.video_weight * video_loss + cfg.action_weight * action_loss
    if self.is_initializing() and cfg.frames == "latents":
      self._frames(fut)
    elif not train and with_future and not self.is_initializing():
      metrics.update(self._video_metrics(batch, hist, fut, delta, context, valid_BCF))
      if cfg.decoupled:
        metrics.update(self._mode_metrics(batch, hist, fut, delta, context, valid_BCF, mask_BKA))
    return loss, metrics

  def _mode_metrics(self, batch, hist, fut, delta, context, valid_BCF, mask_BKA) -> dict:
    """Validation of the decoupled modes: forward dynamics (frames given the true chunk),
    inverse dynamics (actions given the true future) and the policy's actions."""
    real = frame_metrics.signed_to_unit(jnp.stack(
        [frame_metrics.uint8_to_signed(batch["future_image_" + c]) for c in self.data_config.cameras], 1))
    a_true = jnp.where(mask_BKA, batch["actions"], 0.0)
    _, fd = self._sample(batch, hist, context, actions=(CLEAN, a_true), video=(GENERATE, None))
    id_actions, _ = self._sample(batch, hist, context, actions=(GENERATE, None), video=(CLEAN, delta))
    policy_actions, _ = self._sample(batch, hist, context, actions=(GENERATE, None), video=(MARGINAL, None))
    pred = self._frames_from_delta(hist, fd)
    out = {"fd_psnr": masked_mean(frame_metrics.psnr(pred, real), valid_BCF)}
    for name, actions in (("id", id_actions), ("policy", policy_actions)):
      out.update({f"{name}_{k}": v for k, v in action_errors(actions, batch["actions"], mask_BKA).items()})
    return out

  # -- decoupled sampling -------------------------------------------------------------
  def _sample(self, batch, hist, context, *, actions, video):
    """One Euler loop over both streams; each is (CLEAN, value) | (GENERATE, None) | (MARGINAL, None).

    Returns (actions [B, K, A], scaled deltas [B, C, F, N, P]); a generated stream
    starts from noise and runs head.num_sampling_steps steps when actions are
    generated, else video.num_sampling_steps; a marginal one stays noise at tau = 1.
    """
    b, c, _, n, p = hist.shape
    k, a = self.data_config.action_horizon, self.data_config.action_dim
    a_rng, v_rng = jax.random.split(self.make_rng("noise"))
    (a_role, x_a), (v_role, x_v) = actions, video
    if a_role != CLEAN:
      x_a = jax.random.normal(a_rng, (b, k, a))
    if v_role != CLEAN:
      x_v = jax.random.normal(v_rng, (b, c, self.data_config.num_future, n, p))
    steps = self.head.num_sampling_steps if a_role == GENERATE else self.config.video.num_sampling_steps
    fixed = {CLEAN: 0.0, MARGINAL: 1.0}
    dt = 1.0 / steps
    for i in range(steps):  # few steps: unrolled
      t = 1.0 - i * dt
      tau_a = jnp.full((b,), fixed.get(a_role, t))
      tau_v = jnp.full((b,), fixed.get(v_role, t))
      x0_v, feats = self._predict(batch, hist, context, future=x_v, tau=tau_v, actions=x_a, action_tau=tau_a)
      if a_role == GENERATE:
        x_a = x_a - dt * self.head.denoise(x_a, tau_a, feats)
      if v_role == GENERATE:
        x_v = x_v - dt * (x_v - x0_v) / t
    return x_a, x_v

  # -- the family interface -------------------------------------------------------
  def predict_actions(self, batch):
    """Normalized action chunk [B, K, A], by ``mode`` and ``skip_video`` (module docstring)."""
    cfg = self.config
    hist, context = self._tokens(batch, "image_"), self.encoder(batch)
    if not cfg.decoupled:  # regression + skip_video=False: frames come out of the same pass
      with_future = self.predicts_frames and not cfg.skip_video and cfg.video.objective == "regression"
      _, readout = self._predict(batch, hist, context, queries=True, with_future=with_future)
      return self.head.sample(readout)
    if cfg.mode == "inverse_dynamics":
      if not all("future_image_" + c in batch for c in self.data_config.cameras):
        raise ValueError("config.model.mode='inverse_dynamics' needs the batch's future frames "
                         "(future_image_<camera>); a closed-loop policy uses mode='policy'")
      delta = (self._tokens(batch, "future_image_") - hist[:, :, -1:]) * cfg.video.delta_scale
      return self._sample(batch, hist, context, actions=(GENERATE, None), video=(CLEAN, delta))[0]
    if cfg.mode != "policy":
      raise ValueError(f"config.model.mode={cfg.mode!r} predicts frames, not actions; "
                       "actions come from mode='policy' or 'inverse_dynamics'")
    return self._sample(batch, hist, context, actions=(GENERATE, None),
                        video=(MARGINAL if cfg.skip_video else GENERATE, None))[0]

  @property
  def predicts_frames(self) -> bool:
    """False at video_weight = 0 without decoupling: the future-frame tokens are left out of the
    pass (the action queries never read them), so there is no video head to generate with."""
    return bool(self.config.decoupled or self.config.video_weight > 0)

  def predict_frames(self, batch):
    """Generated future frames {camera: uint8 [B, F, H, W, 3]}: given ``batch["actions"]`` when
    decoupled and the batch carries a chunk (forward dynamics), else actions marginalised."""
    cfg = self.config
    if not cfg.decoupled:
      return super().predict_frames(batch)
    hist, context = self._tokens(batch, "image_"), self.encoder(batch)
    if "actions" in batch and cfg.mode in ("policy", "forward_dynamics"):
      _, x_v = self._sample(batch, hist, context, actions=(CLEAN, batch["actions"]), video=(GENERATE, None))
    elif cfg.mode == "forward_dynamics":
      raise ValueError("config.model.mode='forward_dynamics' needs the chunk (batch['actions'])")
    else:
      _, x_v = self._sample(batch, hist, context, actions=(MARGINAL, None), video=(GENERATE, None))
    return self._frame_dict(self._frames_from_delta(hist, x_v))

  @nn.nowrap
  def lr_multipliers(self) -> tuple:
    """The autoencoder (latent frames) is frozen; everything else trains at the full rate."""
    return (("autoencoder/.*", 0.0),) if self.config.frames == "latents" else ()
