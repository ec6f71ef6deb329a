"""Family 4, stage 3: the hybrid VLA-WAM. A VLM backbone hands off to a world model and an action expert.

  backbone   the stage-2 VLM (``families/vlm.py``, parameters under ``vlm/``) over the
             current frame of each camera and the instruction, tokenized with the
             language model's BPE (``data.text_tokenizer``): image tokens bidirectional,
             instruction causal (the VLM's prefix-LM mask).
  world      the video world model's predictor (``models/video_predictor.py``, as
             family 1 builds it) whose context is the backbone's outputs projected to
             its width; it predicts the frames at t+k from the history frames as an
             auxiliary objective (``video_weight``; 0 leaves it out). Its gradient
             reaches the backbone: the VLM's features must carry scene evolution.
  expert     the action expert, pi0-style: a narrower transformer with the backbone's
             depth, heads and head size, over [proprio token; K action tokens]; in
             every layer its tokens attend to the *backbone's* keys and values of the
             same layer (``layers.Transformer(prefix_kvs=...)``) and to each other. With
             the flow head the action tokens are the noisy chunk + the flow time:
             training draws (tau, eps) as ``heads/flow.py`` does, and sampling runs
             the backbone once and the expert ``head.num_sampling_steps`` times on its
             cached keys and values. The expert's outputs go through the flow head's
             denoiser (``head.denoise``) for the velocity. Any other head reads
             learned action queries through the expert once.

``backbone_tuning``: ``full`` (the VLM trains at ``backbone_lr_multiplier``),
``last_n_blocks`` (only its last ``last_n_blocks`` blocks and final norm train)
or ``frozen``; the world module and the expert always train.

Stage hand-off: ``train.init_from=<stage-2 run> train.init_from_map='=vlm/'`` puts the
VLM's parameters under ``vlm/`` and leaves the world module and the expert fresh.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from wam_jax.models import heads, layers
from wam_jax.models import video_predictor as vp
from wam_jax.models.families.video_wam import VideoWAM
from wam_jax.models.families.vlm import VisionLanguageModel
from wam_jax.models.heads import build_head
from wam_jax.models.heads.denoiser import timestep_embedding
from wam_jax.models.heads.regression import action_errors, masked_mean

TUNING = ("frozen", "last_n_blocks", "full")


class HybridWAM(VideoWAM):

  @staticmethod
  def check_config(model_cfg) -> None:
    """Fields of config.model; a one-line ValueError naming the field."""
    vp.check_config(model_cfg)
    VisionLanguageModel.check_config(model_cfg.vlm)
    if model_cfg.video.objective != "regression":
      raise ValueError(f"config.model.video.objective={model_cfg.video.objective!r}: the hybrid's world "
                       "module predicts by regression only")
    if model_cfg.backbone_tuning not in TUNING:
      raise ValueError(f"config.model.backbone_tuning={model_cfg.backbone_tuning!r} is not one of {list(TUNING)}")
    if model_cfg.backbone_tuning == "last_n_blocks" and model_cfg.vlm.scan:
      raise ValueError("config.model.backbone_tuning='last_n_blocks' needs the unrolled backbone "
                       "(config.model.vlm.scan=False): a scanned stack keeps all its layers in one array")
    if model_cfg.backbone_tuning == "last_n_blocks" and not 1 <= model_cfg.last_n_blocks <= model_cfg.vlm.depth:
      raise ValueError(f"config.model.last_n_blocks={model_cfg.last_n_blocks} must be in [1, model.vlm.depth="
                       f"{model_cfg.vlm.depth}]")
    if not model_cfg.video_weight >= 0:
      raise ValueError(f"config.model.video_weight={model_cfg.video_weight} must be >= 0")

  def setup(self):
    cfg, data = self.config, self.data_config
    self.check_config(cfg)
    v, e = cfg.vlm, cfg.expert
    self.vlm = VisionLanguageModel(v, ml_collections.ConfigDict({"vocab_size": v.vocab_size}),
                                   dot_general=self.dot_general)
    if self.predicts_frames:
      self._setup_world_model(action_conditioned=False)
      self.context_proj = layers.logical_dense(cfg.width, (None, "embed"), dot_general=self.dot_general)
    self.expert = layers.Transformer(  # scanned and rematerialized as the backbone, layer l beside layer l
        v.depth, v.num_heads, e.mlp_dim, 0.0, self.dot_general, norm=v.norm, activation=v.activation,
        rope_max_wavelength=v.rope_max_wavelength, head_dim=v.width // v.num_heads, scan=v.scan, remat=v.remat)
    k, dg = data.action_horizon, self.dot_general
    self.proprio_in = layers.logical_dense(e.width, (None, "embed"), dot_general=dg)
    self.action_pos = self.param("action_pos", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                            ("length", "embed")), (k, e.width))
    if self.flow:
      self.action_in = layers.logical_dense(e.width, ("action", "embed"), dot_general=dg)
      self.time_in = layers.logical_dense(e.mlp_dim, (None, "mlp"), dot_general=dg)
      self.time_out = layers.logical_dense(e.width, ("mlp", "embed"), dot_general=dg)
    self.head = build_head(cfg.head, horizon=k, action_dim=data.action_dim, dot_general=dg)

  @property
  def flow(self) -> bool:
    return self.config.head.name == "flow"

  @property
  def predicts_frames(self) -> bool:
    return self.config.video_weight > 0

  # -- backbone -----------------------------------------------------------------------
  def _prefix(self, batch, train: bool):
    """The VLM over [current frame of each camera; instruction]:
    (hidden [B, M, Dv], every layer's keys/values (``layers.LayerKV``), key mask [B, M])."""
    frames = jnp.concatenate([batch["image_" + c][:, -1:] for c in self.data_config.cameras], axis=1)
    tokens, text_mask = batch["language_tokens"], batch["language_mask"]
    text_length = text_mask.sum(axis=1).astype(jnp.int32)
    hidden, i, kvs = self.vlm.prefix_hidden(frames, tokens, text_length, train, return_kvs=True)
    key_mask = jnp.concatenate([jnp.ones(hidden.shape[:1] + (i,), bool), text_mask], axis=1)
    return hidden, kvs, key_mask

  # -- action expert --------------------------------------------------------------------
  def _expert(self, kvs, key_mask_BM, proprio_BP, x_BKA=None, tau_B=None, train: bool = False):
    """Expert outputs at the K action tokens [B, K, We] (noisy chunk + time with the flow head)."""
    b, m = key_mask_BM.shape
    act = jnp.broadcast_to(self.action_pos[None], (b,) + self.action_pos.shape)
    if self.flow:
      width = self.config.expert.width
      time = self.time_out(nn.silu(self.time_in(timestep_embedding(tau_B, width))))
      act = act + self.action_in(x_BKA) + time[:, None]
    x = jnp.concatenate([self.proprio_in(proprio_BP)[:, None], act], axis=1)
    positions = jnp.broadcast_to(m + jnp.arange(x.shape[1]), x.shape[:2])  # after the prefix (RoPE)
    return self.expert(x, None, train=train, positions_BN=positions, prefix_kvs=(kvs, key_mask_BM))[:, 1:]

  def _sample_actions(self, kvs, key_mask_BM, proprio_BP):
    """Normalized chunk [B, K, A]: Euler steps of the flow head over the cached prefix, or one pass."""
    b = key_mask_BM.shape[0]
    if not self.flow:
      return self.head.sample(self._expert(kvs, key_mask_BM, proprio_BP))
    x = self.head.initial_noise(b)
    dt = 1.0 / self.head.num_sampling_steps
    for i in range(self.head.num_sampling_steps):  # few steps: unrolled; the backbone ran once
      tau = jnp.full((b,), 1.0 - i * dt)
      x = x - dt * self.head.denoise(x, tau, self._expert(kvs, key_mask_BM, proprio_BP, x, tau))
    return x

  # -- the family interface ---------------------------------------------------------------
  def __call__(self, batch, train: bool = True):
    """Training loss: action loss + video_weight x the world module's video loss; (loss, metrics)."""
    cfg = self.config
    hidden, kvs, key_mask = self._prefix(batch, train)
    proprio = batch["proprio"][:, -1]
    mask_BKA = heads.loss_mask(batch)
    metrics = {}
    if self.flow:
      b = proprio.shape[0]
      t_rng, eps_rng = jax.random.split(self.make_rng("noise"))
      a0 = jnp.where(mask_BKA, batch["actions"], 0.0)
      x_t, target, tau = self.head.corrupt(a0, jax.random.normal(eps_rng, a0.shape), self.head.draw_time(t_rng, b))
      feats = self._expert(kvs, key_mask, proprio, x_t, tau, train=train)
      action_loss = masked_mean((self.head.denoise(x_t, tau, feats) - target) ** 2, mask_BKA)
      metrics["denoise_mse"] = action_loss
      if not train and not self.is_initializing():
        metrics.update(action_errors(self._sample_actions(kvs, key_mask, proprio), batch["actions"], mask_BKA))
    else:
      action_loss, head_metrics = self.head(self._expert(kvs, key_mask, proprio, train=train), batch["actions"],
                                            mask_BKA, train=train)
      metrics.update({k: v for k, v in head_metrics.items() if k != "loss_weight"})
    metrics.update(action_loss=action_loss, loss_weight=mask_BKA.sum().astype(jnp.float32))
    loss = action_loss
    if self.predicts_frames:
      hist, fut = self._tokens(batch, "image_"), self._tokens(batch, "future_image_")
      context = (self.context_proj(hidden), key_mask)
      delta = (fut - hist[:, :, -1:]) * cfg.video.delta_scale
      out, _ = self._predict(batch, hist, context, train=train)
      b, c, f = fut.shape[:3]
      valid_BCF = jnp.broadcast_to(batch["future_mask"][:, None, :], (b, c, f))
      video_loss, video_metrics = vp.video_loss(out, delta, valid_BCF, cfg.video.get("loss_norm", "none"))
      metrics.update(video_metrics)
      loss = loss + cfg.video_weight * video_loss
      if not train and not self.is_initializing():
        metrics.update(self._video_metrics(batch, hist, fut, delta, context, valid_BCF))
    return loss, metrics

  def predict_actions(self, batch):
    """Normalized action chunk [B, K, A]: one backbone pass, then the expert (the world module idles)."""
    _, kvs, key_mask = self._prefix(batch, train=False)
    return self._sample_actions(kvs, key_mask, batch["proprio"][:, -1])

  def _frame_context(self, batch):
    """The world module reads the VLM's projected features (``predict_frames`` is VideoWAM's)."""
    if not self.predicts_frames:
      raise ValueError("config.model.video_weight=0: the hybrid was trained without its world module")
    hidden, _, key_mask = self._prefix(batch, train=False)
    return self.context_proj(hidden), key_mask

  @nn.nowrap
  def lr_multipliers(self) -> tuple:
    """The VLM backbone as ``backbone_tuning`` says; the world module and the expert at the full rate."""
    cfg = self.config
    m = float(cfg.backbone_lr_multiplier)
    if cfg.backbone_tuning == "frozen":
      return (("vlm/.*", 0.0),)
    if cfg.backbone_tuning == "last_n_blocks":
      blocks = "|".join(f"block_{i}" for i in range(cfg.vlm.depth - cfg.last_n_blocks, cfg.vlm.depth))
      return ((f"vlm/backbone/({blocks}|ln_final)/.*", m), ("vlm/.*", 0.0))
    return (("vlm/.*", m),)
