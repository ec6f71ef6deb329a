"""Family 3, joint prediction: one policy predicts the future frames and the action chunk.

  experiments/train.py --config=experiments/configs/joint_wam.py:tiny --workdir=runs/joint_tiny

One stage from scratch on the demos + action-free video (action-free rows add only the
video loss). ``tiny`` is the joint readout (regression frames, L1 head); ``uwm_tiny`` the
decoupled UWM mode (flow frames, flow head, independent noise levels; inference mode by
``model.mode``); ``base`` and ``uwm_base`` the base sizes. The video_weight = 0 ablation:
``--config.model.video_weight=0``.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import frame_autoencoder
from wam_jax.models import heads

PRESETS = ("tiny", "base", "uwm_tiny", "uwm_base")
# The protocol (shared/PROTOCOL.md) at the tiny size: N demos per MT10 task + the action-free pool.
PROTOCOL_PRESETS = tuple(f"{kind}mt10_n{n}" for kind in ("", "uwm_") for n in (2, 5, 20))


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="joint_wam",
      width=128,
      depth=4,
      num_heads=4,
      mlp_dim=512,
      dropout=0.0,
      frames="pixels",          # "pixels" (frame patches) | "latents" (of the frame autoencoder)
      patch_size=16,            # pixels: patch side in pixels
      stem=(),                  # conv stem of the history frames (VideoPredictor.stem; the VLA's model.stem)
      text_pool=False,          # the instruction as one token (encoders.ObservationEncoder; the VLA's model.text_pool)
      latent_patch_size=4,      # latents: patch side in latent cells
      autoencoder=frame_autoencoder.autoencoder_config(),
      video=ml_collections.ConfigDict(dict(
          objective="regression",   # "regression" | "flow" (decoupled needs flow)
          num_sampling_steps=4,     # flow: Euler steps when generating frames alone
          delta_scale=1.0,          # the predicted change (future - last frame tokens) is scaled by this
          loss_norm="none",         # "none" (MSE) | "copy" (MSE over copy-last MSE: 1.0 = copying; scale-free)
          t_min=0.0,                # flow: training times tau_v ~ U[t_min, 1]
      )),
      video_weight=1.0,         # loss = video_weight * video_loss + action_weight * action_loss
      action_weight=1.0,
      decoupled=False,          # UWM: noisy action tokens in the transformer, independent tau_a, tau_v
      endpoint_prob=0.2,        # decoupled: chance each tau is exactly 0 or 1 (half each) in training
      mode="policy",            # decoupled inference: policy | forward_dynamics | inverse_dynamics | video
      skip_video=True,          # inference: actions without decoding frames (joint_wam.py docstring)
      head=heads.default_head_config("l1"),
  ))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in PRESETS + PROTOCOL_PRESETS:
    raise ValueError(f"unknown preset {arg!r} for joint_wam; known: {', '.join(PRESETS + PROTOCOL_PRESETS)}")
  mt10 = "mt10" in arg
  if mt10:
    from experiments.configs import protocol  # pylint: disable=g-import-not-at-top
    n = protocol.n_demos_of(arg[arg.index("mt10"):])
    arg = arg[:arg.index("mt10")] + "tiny"
  config = common.base_config()
  config.model = model_config()
  config.data.max_text_len = 32
  config.data.mixture = (("metaworld_demos", 1.0), ("metaworld_video", 0.3))
  if arg.startswith("uwm"):
    config.model.update(decoupled=True, head=heads.default_head_config("flow"))
    config.model.video.objective = "flow"
  if arg.endswith("tiny"):
    config.train.update(compute_dtype="bfloat16", steps=1000, log_every=50, val_every=250, ckpt_every=250,
                        summary_every=250)
  else:
    config.model.update(width=512, depth=12, num_heads=8, mlp_dim=2048)
    config.model.autoencoder.update(channels=(64, 128, 256), latent_channels=16)
    config.data.image_size = 128
    config.train.update(batch_size=256, steps=20000)
  config.eval.at_end = True
  if mt10:
    protocol.apply(config, n, video_weight=0.3)
    config.train.steps = 2000  # as the VLA's mt10 presets
  return config
