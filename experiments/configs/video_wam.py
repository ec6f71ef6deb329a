"""Family 1, the video-backbone world-action model: pretrain on video, then adapt to act.

Two stages, chained by ``train.init_from`` (parameters restored by path):

  # Stage 1: the video world model on action-free frames (demos' frames + action-free video).
  experiments/train.py --config=experiments/configs/video_wam.py:pretrain_tiny --workdir=runs/video_pretrain_tiny
  # Stage 2: + action queries and a head, adapted on the demos (co-trained with the video loss).
  experiments/train.py --config=experiments/configs/video_wam.py:policy_tiny --workdir=runs/video_policy_tiny

Latent frames: first ``frame_autoencoder.py:tiny`` into runs/frame_ae_tiny, then the
``pretrain_latent_tiny`` and ``policy_latent_tiny`` presets. Base sizes: ``pretrain_base``,
``policy_base``. A from-scratch control: ``policy_tiny`` with ``--config.train.init_from=''``.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import frame_autoencoder
from wam_jax.models import heads

PRESETS = ("pretrain_tiny", "policy_tiny", "pretrain_latent_tiny", "policy_latent_tiny",
           "pretrain_base", "policy_base")
# The protocol (shared/PROTOCOL.md) at the tiny size: stage 1 (``pretrain_mt10``) on the action-free
# video pool only, so one pretraining serves every N and seed (as the protocol reuses it); stage 2
# (``policy_mt10_n{N}``) on the N labeled demos + the pool (less video, the video loss only there).
PROTOCOL_PRESETS = ("pretrain_mt10",) + tuple(f"policy_mt10_n{n}" for n in (2, 5, 20))


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="video_wam",
      width=128,
      depth=4,
      num_heads=4,
      mlp_dim=512,
      dropout=0.0,
      frames="pixels",          # "pixels" (frame patches) | "latents" (of the frame autoencoder)
      patch_size=16,            # pixels: patch side in pixels
      stem=(),                  # conv stem of the history frames (VideoPredictor.stem; the VLA's model.stem)
      text_pool=False,          # the instruction as one token (encoders.ObservationEncoder; the VLA's model.text_pool)
      latent_patch_size=4,      # latents: patch side in latent cells (16 x 16 latents -> 16 tokens)
      autoencoder=frame_autoencoder.autoencoder_config(),  # latents: must match the restored run
      video=ml_collections.ConfigDict(dict(
          objective="regression",   # "regression" (MSE on the change) | "flow" (flow matching)
          loss_weight=1.0,          # stage 2: weight of the video loss beside the action loss (0: none)
          action_conditioned=False,  # forward dynamics: the future also sees the action chunk
          num_sampling_steps=4,     # flow: Euler steps when generating frames
          delta_scale=1.0,          # the predicted change (future - last frame tokens) is scaled by this
          loss_norm="none",         # "none" (MSE) | "copy" (MSE over copy-last MSE: 1.0 = copying; scale-free)
          t_min=0.0,                # flow: training times tau ~ U[t_min, 1]
      )),
      policy=ml_collections.ConfigDict(dict(
          enabled=False,            # stage 2: action queries + head
          adapt="full",             # "frozen" | "last_n_blocks" | "full": which backbone params train
          last_n_blocks=2,
          backbone_lr_multiplier=1.0,  # learning-rate multiplier of the trained backbone params
          see_future_prob=0.5,      # training: chance an example's queries see the future segment
          skip_video=True,          # inference: read actions without generating frames
      )),
      head=heads.default_head_config("l1"),
  ))


def get_config(arg: str = "pretrain_tiny") -> ml_collections.ConfigDict:
  if arg not in PRESETS + PROTOCOL_PRESETS:
    raise ValueError(f"unknown preset {arg!r} for video_wam; known: {', '.join(PRESETS + PROTOCOL_PRESETS)}")
  config = common.base_config()
  config.model = model_config()
  mt10 = "_mt10" in arg
  stage, size = arg.split("_")[0], "tiny" if mt10 else arg.split("_")[-1]
  latent = "latent" in arg
  # Both stages see the same datasets (the dataset-id table transfers); stage 2 samples less video.
  config.data.max_text_len = 32
  config.data.mixture = (("metaworld_demos", 1.0), ("metaworld_video", 1.0 if stage == "pretrain" else 0.3))
  if latent:
    config.model.frames = "latents"
    if size == "tiny":  # the architecture of the frame_autoencoder.py:tiny run it restores
      config.model.autoencoder.update(frame_autoencoder.TINY)
  if size == "tiny":
    config.train.update(compute_dtype="bfloat16", log_every=50, val_every=250, ckpt_every=250,
                        summary_every=250)
    if stage == "pretrain":
      config.train.update(steps=1500, init_from="runs/frame_ae_tiny" if latent else "")
    else:
      config.train.update(steps=1000, init_from=f"runs/video_pretrain{'_latent' if latent else ''}_tiny")
  else:
    config.model.update(width=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16, latent_patch_size=4)
    config.model.autoencoder.update(channels=(64, 128, 256), latent_channels=16)
    config.data.image_size = 128
    config.train.update(batch_size=256, steps=20000 if stage == "pretrain" else 5000)
  if stage == "policy":
    config.model.policy.enabled = True
    config.eval.at_end = True
  if mt10:
    from experiments.configs import protocol  # pylint: disable=g-import-not-at-top
    n = None if stage == "pretrain" else protocol.n_demos_of(arg[arg.index("mt10"):])
    protocol.apply(config, n, video_weight=1.0 if stage == "pretrain" else 0.3)
    config.eval.at_end = stage == "policy"
    # Measured idle (scripts/bench_train.py, bf16, the trunk, session 9): pretraining 350 ms/step,
    # 3000 steps ~17.5 min (the protocol's ~20-minute pretraining budget; reused across seeds);
    # the policy 404 ms/step, 2000 steps ~13.5 min (the ~15-minute policy budget).
    config.train.update(steps=3000 if stage == "pretrain" else 2000,
                        init_from="" if stage == "pretrain" else "runs/video_pretrain_mt10")
  return config
