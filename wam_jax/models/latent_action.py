"""The latent-action model (Genie / LAPA): infer a latent action z from (o_t, o_t+k), predict o_t+k from o_t and z.

  encoder   ``transition.TransitionEncoder`` over history + future frames (no
            proprio or instruction by default: z must come from the pixels),
            Q latent queries -> [B, Q, D]
  bottleneck ``latent.kind``: "vq" (a ``quantizers.VectorQuantizer`` of
            ``latent.num_codes`` codes of ``latent.code_dim`` dims), "fsq"
            (``quantizers.FiniteScalarQuantizer`` with ``latent.levels``:
            code_dim = len(levels), num_codes = prod(levels), no auxiliary
            loss) or "continuous" (``quantizers.GaussianBottleneck``,
            ``latent.code_dim`` dims, ``latent.kl_weight``). The capacity is
            these config fields. VQ and FSQ codes are discrete (``discrete``):
            the latent policy classifies them.
  decoder   ``video_predictor.VideoPredictor`` in forward-dynamics mode: the
            latent tokens take the place of the action chunk (K = Q, A = Z); it
            predicts the change of the future frames' pixel patches from the
            last history frame (zero output = copy-last). ``recon_norm='copy'``
            divides its MSE by copying's (as ``video.loss_norm``): the raw MSE's
            learnable part is ~0.002, below any bottleneck regulariser. ``decoder_history`` = h
            > 0 lets it see only the last h history frames (Genie/LAPA decode from
            o_t alone): with more, the motion already visible in the history
            predicts much of the change and z is not needed.

Trained on action-free video only (actions are never read). Two failures
are watched by the validation metrics: z carrying nothing (the decoder's error
with z shuffled across the batch, ``shuffled_z_loss``, is then no worse than
with the true z, ``recon_loss``) and a collapsed codebook (``code_perplexity``,
``codes_used``); a z copying the future frame is prevented by the capacity.
This module lives under the parameter path ``lam/`` in both families that use
it (``latent_action`` trains it, ``latent_policy`` reads it frozen), so
``train.init_from`` hands it over by path.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.models import encoders, layers, quantizers, transition
from wam_jax.models import video_predictor as vp
from wam_jax.models.heads.regression import masked_mean

KINDS = ("vq", "fsq", "continuous")


def discrete(latent_cfg) -> bool:
  """Whether the latent is a code (VQ, FSQ: integer codes in [0, num_codes)) rather than a vector."""
  return latent_cfg.kind in ("vq", "fsq")


def check_config(model_cfg) -> None:
  """config.model of a latent-action model; a one-line ValueError naming the field."""
  lat = model_cfg.latent
  if lat.kind not in KINDS:
    raise ValueError(f"config.model.latent.kind={lat.kind!r} is not one of {list(KINDS)}")
  for field, lo in (("num_codes", 2), ("code_dim", 1), ("num_tokens", 1)):
    if int(lat[field]) < lo:
      raise ValueError(f"config.model.latent.{field}={lat[field]} must be >= {lo}")
  if lat.kind == "fsq":
    levels = tuple(int(v) for v in lat.get("levels", ()))
    if not levels or min(levels) < 2:
      raise ValueError(f"config.model.latent.levels={levels}: kind='fsq' needs one level >= 2 per code dim")
    if int(lat.code_dim) != len(levels) or int(lat.num_codes) != int(np.prod(levels)):
      raise ValueError(f"config.model.latent.kind='fsq' with levels={levels} needs code_dim={len(levels)} and "
                       f"num_codes={int(np.prod(levels))} (got code_dim={lat.code_dim}, num_codes={lat.num_codes})")
  if model_cfg.get("recon_norm", "none") not in vp.LOSS_NORMS:
    raise ValueError(f"config.model.recon_norm={model_cfg.recon_norm!r} is not one of {list(vp.LOSS_NORMS)}")
  if int(model_cfg.get("decoder_history", 0)) < 0:
    raise ValueError(f"config.model.decoder_history={model_cfg.decoder_history} must be >= 0 (0: every history frame)")
  for field in ("commitment", "entropy_weight", "kl_weight"):
    if not lat[field] >= 0:
      raise ValueError(f"config.model.latent.{field}={lat[field]} must be >= 0")


class LatentActionModel(nn.Module):
  config: object        # the latent-action model config (config.model, or config.model.lam)
  data_config: object   # config.data
  num_datasets: int
  vocab_size: int
  dot_general: layers.DotGeneral = None

  def setup(self):
    cfg, data, lat = self.config, self.data_config, self.config.latent
    p = cfg.patch_size
    self.encoder = transition.TransitionEncoder(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, patch_size=p,
        cameras=tuple(data.cameras), num_queries=lat.num_tokens, vocab_size=self.vocab_size,
        num_datasets=self.num_datasets, use_proprio=cfg.use_proprio, use_language=cfg.use_language,
        frame_difference=cfg.frame_difference, dropout=cfg.dropout, dot_general=self.dot_general,
        image=encoders.image_fields(cfg))
    if discrete(lat):
      self.to_code = layers.logical_dense(lat.code_dim, ("embed", None), dot_general=self.dot_general)
      self.bottleneck = (quantizers.VectorQuantizer(lat.num_codes, lat.code_dim, lat.commitment, lat.entropy_weight)
                         if lat.kind == "vq" else quantizers.FiniteScalarQuantizer(tuple(int(v) for v in lat.levels)))
    else:
      self.bottleneck = quantizers.GaussianBottleneck(lat.code_dim, self.dot_general)
    self.context = encoders.ObservationEncoder(
        width=cfg.width, patch_size=p, cameras=(), vocab_size=self.vocab_size,
        num_datasets=self.num_datasets, dot_general=self.dot_general)
    self.decoder = vp.VideoPredictor(
        width=cfg.width, depth=cfg.decoder_depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
        token_dim=3 * p * p, tokens_per_frame=(data.image_size // p) ** 2, num_cameras=len(data.cameras),
        history=data.history, num_future=data.num_future, action_conditioned=True,
        action_horizon=lat.num_tokens, action_dim=lat.code_dim, dropout=cfg.dropout, dot_general=self.dot_general,
        stem=tuple(cfg.get("stem", ())))

  def _tokens(self, batch, prefix):
    """Pixel-patch tokens [B, C, T, N, P] of every camera."""
    return jnp.stack([vp.frames_to_tokens(batch[prefix + c], representation="pixels", patch=self.config.patch_size)
                      for c in self.data_config.cameras], axis=1)

  def encode(self, batch, train: bool = False):
    """(z [B, Q, Z], codes int [B, Q] or None, bottleneck loss, metrics); rows weighted by future_mask[:, 0]."""
    readout_BQD = self.encoder(batch, train=train)
    valid_B = batch["future_mask"][:, 0]
    if discrete(self.config.latent):
      return self.bottleneck(self.to_code(readout_BQD), valid_B)
    return self.bottleneck(readout_BQD, valid_B, train=train)

  def decode_errors(self, batch, z_BQZ, train: bool = False):
    """Per example mean squared error of the predicted future-frame change [B] and its mask [B]."""
    hist, fut = self._tokens(batch, "image_"), self._tokens(batch, "future_image_")
    b = hist.shape[0]
    chex.assert_shape(z_BQZ, (b, self.config.latent.num_tokens, self.config.latent.code_dim))
    ctx = self.context(transition.context_inputs(batch, use_proprio=self.config.use_proprio,
                                                 use_language=self.config.use_language))
    hist_mask = batch["history_mask"]
    keep = int(self.config.get("decoder_history", 0))
    if keep:  # the decoder sees only the last ``keep`` frames: motion visible in the history needs no z
      hist_mask = hist_mask & (jnp.arange(hist_mask.shape[1]) >= hist_mask.shape[1] - keep)[None]
    out, _ = self.decoder(hist, hist_mask, *ctx, actions_BKA=z_BQZ,
                          action_mask_BK=jnp.ones(z_BQZ.shape[:2], bool), train=train)
    delta = fut - hist[:, :, -1:]
    mask_BF = batch["future_mask"]
    err_BCF = jnp.mean((out - delta) ** 2, axis=(-2, -1))
    err_B = jnp.sum(jnp.mean(err_BCF, axis=1) * mask_BF, axis=1) / jnp.maximum(mask_BF.sum(1), 1)
    copy_B = jnp.sum(jnp.mean(jnp.mean(delta ** 2, axis=(-2, -1)), axis=1) * mask_BF, axis=1) / jnp.maximum(
        mask_BF.sum(1), 1)
    return err_B, copy_B, mask_BF[:, 0]

  def __call__(self, batch, train: bool = True):
    """(loss, metrics): decoder MSE on the future change + the bottleneck's loss (weighted)."""
    lat = self.config.latent
    z, _, aux, metrics = self.encode(batch, train)
    err_B, copy_B, valid_B = self.decode_errors(batch, z, train)
    recon = masked_mean(err_B, valid_B)
    weight = lat.kl_weight if lat.kind == "continuous" else 1.0
    metrics = dict(metrics, recon_loss=recon, loss_weight=valid_B.sum().astype(jnp.float32))
    recon_term = recon
    if self.config.get("recon_norm", "none") == "copy":  # the fraction of copying's error left (1.0 = copy)
      recon_term = vp.relative_to_copy(recon, masked_mean(copy_B, valid_B))
      metrics["recon_vs_copy"] = recon_term
    if not train:  # does z carry the transition? The same decoder with z of another example
      shuffled, _, _ = self.decode_errors(batch, jnp.roll(jax.lax.stop_gradient(z), 1, axis=0), train)
      metrics.update(shuffled_z_loss=masked_mean(shuffled, valid_B), copy_last_loss=masked_mean(copy_B, valid_B))
    return recon_term + weight * aux, metrics
