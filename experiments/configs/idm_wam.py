"""Family 2, inverse-dynamics WAMs: an IDM that labels video, and latent actions learned from video.

(a) IDM + pseudo-labels:
  # The IDM, o_t, o_t+k -> a_t..a_t+k-1, on the labelled demos (val: held-out episodes).
  experiments/train.py --config=experiments/configs/idm_wam.py:idm_tiny --workdir=runs/idm_tiny
  # Label the action-free video with it: a new RLDS dataset in the demos' schema.
  scripts/label_video.py --idm=runs/idm_tiny --src=wam_data/metaworld_video/1.0.0 \
      --out=wam_data/metaworld_video_labeled/1.0.0
  # Any preset then trains on it like on demos, e.g. the VLA on labels + pseudo-labels:
  experiments/train.py --config=experiments/configs/vla_baseline.py:tiny --workdir=runs/vla_pseudo \
      --config.data.mixture='(("metaworld_demos", 1.0), ("metaworld_video_labeled", 1.0))'

(b) Plan with video, act with the IDM (``wam_jax/plan_idm.py``): the video world model generates o_t+k,
the IDM returns the chunk that reaches it. Any video_wam/joint_wam run whose predicted offsets include the
IDM's k, at the same image size, cameras and history (video_wam.py:pretrain_tiny and idm_tiny agree):
  experiments/eval.py --policy=plan_idm --video_workdir=runs/video_pretrain_tiny --idm_workdir=runs/idm_tiny
  # Offline on held-out episodes: the IDM's action error given the true o_t+k, the plan, and o_t.
  scripts/eval_plan_idm.py --video_workdir=runs/video_pretrain_tiny --idm_workdir=runs/idm_tiny

(c) Latent actions, three stages chained by ``train.init_from`` (restore by parameter path):
  experiments/train.py --config=experiments/configs/idm_wam.py:latent_tiny --workdir=runs/latent_tiny
  experiments/train.py --config=experiments/configs/idm_wam.py:latent_policy_tiny --workdir=runs/latent_policy_tiny
  experiments/train.py --config=experiments/configs/idm_wam.py:finetune_tiny --workdir=runs/finetune_tiny

``latent_tiny`` trains the latent-action model on action-free video only;
``latent_policy_tiny`` pretrains a policy (the VLA's encoder + transformer) to
predict its latent actions from (o_t, instruction) on all video, the
latent-action model frozen; ``finetune_tiny`` is the VLA family restored from it
by path (encoder + backbone), learning real actions from the labelled demos.
The continuous latent: ``--config.model.latent.kind=continuous`` in stage 1 and
``--config.model.lam.latent.kind=continuous`` in stage 2. Finite scalar quantization (no codebook,
no auxiliary loss), e.g. 125 codes per token: ``--config.model.latent.kind=fsq
--config.model.latent.levels='(5,5,5)' --config.model.latent.code_dim=3
--config.model.latent.num_codes=125`` (stage 2: the same under ``model.lam.latent``).
"""

import ml_collections

from experiments.configs import common
from wam_jax.models import heads

PRESETS = ("idm_tiny", "latent_tiny", "latent_policy_tiny", "finetune_tiny")
# The protocol (shared/PROTOCOL.md) at the tiny size: the two pretraining stages learn from the
# action-free video pool only (``latent_mt10``, ``latent_policy_mt10``: one run serves every N and
# seed, as the protocol reuses pretraining); the IDM and the fine-tune from the N labeled demos
# (``<stage>_mt10_n{N}``; the fine-tune evaluated as the protocol says).
PROTOCOL_PRESETS = ("latent_mt10", "latent_policy_mt10") + tuple(
    f"{stage}_mt10_n{n}" for stage in ("idm", "finetune") for n in (2, 5, 20))


def _sizes(**extra) -> dict:
  # stem: conv channels before the patch embeddings (encoders.ImageTokenizer; the VLA's model.stem), and
  # the tokenizer's other image fields (stem_strides, keypoints, keypoint_level, flat_token: encoders.image_fields).
  return dict(width=128, depth=4, num_heads=4, mlp_dim=512, patch_size=16, stem=(), stem_strides=(), keypoints=0,
              keypoint_level=0, flat_token=False, dropout=0.0, **extra)


def idm_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_sizes(
      name="idm",
      use_proprio=True,        # proprio at t-h+1..t
      use_future_proprio=False,  # also the proprio at t+k (robot logs that record state; not plan-with-video)
      use_language=False,      # the instruction; off: labels depend on what the frames show only
      frame_difference=True,   # tokens of o_t+k - o_t beside both frames
      head=heads.default_head_config("l1"),
  ))


def latent_action_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_sizes(
      name="latent_action",
      decoder_depth=4,
      decoder_history=0,       # > 0: the decoder sees only the last h history frames (0: all)
      recon_norm="none",       # "copy": the decoder's MSE over copy-last's (1.0 = copying), beside the bottleneck loss
      use_proprio=False,       # z must come from the pixels: no proprio or instruction in encoder or decoder
      use_language=False,
      frame_difference=True,
      latent=ml_collections.ConfigDict(dict(
          kind="vq",           # "vq" (codebook) | "fsq" (finite scalar quantization) | "continuous" (Gaussian, KL-weighted)
          num_tokens=2,        # Q latent tokens per transition
          num_codes=8,         # VQ codebook size: capacity Q log2(num_codes) bits per transition
          code_dim=16,         # Z
          commitment=0.25,     # VQ: commitment loss weight
          entropy_weight=0.1,  # VQ: batch code-entropy bonus (against codebook collapse)
          kl_weight=1e-3,      # continuous: KL weight (the capacity knob)
          levels=(),           # fsq: values per code dim, e.g. (5, 5, 5): code_dim = len, num_codes = product
      )),
  ))


def latent_policy_config() -> ml_collections.ConfigDict:
  lam = latent_action_config()  # must match the restored latent_action run (fields are checked by shape)
  return ml_collections.ConfigDict(_sizes(name="latent_policy", lam=lam, text_pool=False))


def vla_config() -> ml_collections.ConfigDict:
  """The finetune stage: the VLA family, sized as the latent policy so encoder/backbone restore by path."""
  # text_pool: the instruction as one token (the VLA's model.text_pool); the latent policy's parameters
  # restore either way (pooling adds none).
  return ml_collections.ConfigDict(_sizes(name="vla", head=heads.default_head_config("l1"), text_pool=False))


def get_config(arg: str = "idm_tiny") -> ml_collections.ConfigDict:
  if arg in PROTOCOL_PRESETS:
    return _protocol_config(arg)
  if arg not in PRESETS:
    raise ValueError(f"unknown preset {arg!r} for idm_wam; known: {', '.join(PRESETS + PROTOCOL_PRESETS)}")
  config = common.base_config()
  config.data.max_text_len = 32
  config.train.update(compute_dtype="bfloat16", log_every=50, val_every=250, ckpt_every=250, summary_every=0)
  if arg == "idm_tiny":
    config.model = idm_config()
    config.data.update(action_horizon=4, future_offset=4)  # K = k: the chunk between the two frames
    config.data.mixture = (("metaworld_demos", 1.0),)
    config.train.steps = 1000
  elif arg == "latent_tiny":
    config.model = latent_action_config()
    config.data.mixture = (("metaworld_video", 1.0),)  # action-free video only
    config.train.update(steps=1000, summary_every=0)
  elif arg == "latent_policy_tiny":
    config.model = latent_policy_config()
    config.data.mixture = (("metaworld_demos", 1.0), ("metaworld_video", 1.0))  # all video (actions unused)
    config.train.update(steps=1000, init_from="runs/latent_tiny")
  else:  # finetune_tiny
    config.model = vla_config()
    config.data.mixture = (("metaworld_demos", 1.0),)  # the labelled demos only
    config.train.update(steps=1000, init_from="runs/latent_policy_tiny")
    config.eval.at_end = True
  return config


def _protocol_config(arg: str) -> ml_collections.ConfigDict:
  from experiments.configs import protocol as protocol_cfg  # pylint: disable=g-import-not-at-top
  stage = arg[:arg.index("_mt10")]
  pretraining = stage in ("latent", "latent_policy")  # action-free video only
  n = None if pretraining else protocol_cfg.n_demos_of(arg[arg.index("mt10"):])
  config = get_config(f"{stage}_tiny")
  protocol_cfg.apply(config, n, video_weight=1.0 if pretraining else 0.0)
  config.eval.at_end = stage == "finetune"  # the others are not policies
  config.train.init_from = {"latent_policy": "runs/latent_mt10", "finetune": "runs/latent_policy_mt10"}.get(stage, "")
  if stage == "finetune":
    config.train.steps = 2000  # as the VLA's mt10 presets
  return config
