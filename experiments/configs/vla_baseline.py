"""VLA baseline: image history + instruction + proprio -> action chunk.

Presets: ``vla_baseline.py:tiny`` (CPU, minutes), ``vla_baseline.py:base``.
Every field is data; models, heads and datasets are looked up by name.
"""

import ml_collections

from experiments.configs import common
from wam_jax.models import heads

# What ``mt10*`` set before session 30 (32 byte tokens of the instruction, lr 3e-4): the overrides by which
# a sweep cell that ran the preset then still describes its runs (e.g. every family sweep's VLA row).
BYTE_TOKENS = {"model.text_pool": False, "train.learning_rate": 3e-4}
# What ``mt10*`` sets since session 30, as overrides: the pooled instruction and its learning rate, for a
# family's cell that asks whether the family gains from it what the VLA gained (e.g. families:joint_wam_pooled).
POOLED_INSTRUCTION = {"model.text_pool": True, "train.learning_rate": 1e-3}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.model = ml_collections.ConfigDict(dict(
      name="vla",
      width=128,
      depth=4,
      num_heads=4,
      mlp_dim=512,
      patch_size=16,
      stem=(),              # conv channels before the patch embedding (encoders.ImageTokenizer)
      stem_strides=(),      # one stride per stem convolution; () = all 2
      keypoints=0,          # K > 0: spatial-softmax keypoints of stem level keypoint_level, one token per frame
      keypoint_level=0,     # index into stem: 0 = the first convolution's map (64 px: 32 x 32)
      flat_token=False,     # one more token per frame: all its patch features through one matrix (cnn_bc's readout)
      text_pool=False,      # the instruction as one token (mean of its byte embeddings), not one per byte
      dropout=0.0,
      # Which action head: config.model.head.name in l1, mse, diffusion, flow, discrete; each
      # generative head's fields under head.<name>.* (defaults: wam_jax/models/heads).
      head=heads.default_head_config("l1"),
  ))
  if arg == "tiny" or arg.startswith("mt10"):
    # The README's main job: ~5-10 min of training on 2 CPU cores, then closed-loop eval.
    # Measured: 90% mean closed-loop success on the 4 embedded tasks (BUILD_NOTES.md, "VLA baseline result").
    config.data.max_text_len = 32
    config.train.update(steps=1000, compute_dtype="bfloat16", log_every=50, val_every=250,
                        ckpt_every=250)
    config.eval.at_end = True
    if arg.startswith("mt10"):  # The protocol (shared/PROTOCOL.md): mt10 = mt10_n20, mt10_n5, mt10_n2.
      from experiments.configs import protocol  # pylint: disable=g-import-not-at-top
      protocol.apply(config, protocol.n_demos_of(arg))  # + the conv trunk model.stem = protocol.STEM
      # One observation frame: the trunk is a third of the step per frame, so history 1 makes the
      # step 1.5x cheaper (190 vs 297 ms) at the same success (66% vs 67%, baseline_quality), and
      # 4000 steps fit the protocol's 15-minute budget (~13 min at ~330 examples/s).
      config.data.history = 1
      config.train.steps = 4000
      # The instruction as one token (the masked mean of its byte embeddings, as the plain CNN reads
      # it) and lr 1e-3. Measured over three seeds (baseline_data_efficiency, vla_pooled_n* against the
      # byte-token vla_l1_n*): N=20 72% vs 65% (+6.8, CI +1.6..+12.0), reach + push + pick-place 52/180
      # vs 3/60 (seed 0); N=5 58% vs 60%, N=2 40% vs 43% (both unresolved, both a little lower). The
      # sequence drops from 58 tokens to 27, the step from 24.1 to 13.4 GFLOPs (7.0 steps/s idle: ~10
      # min of training). Sweeps that ran the preset before session 30 pin the old recipe with
      # ``BYTE_TOKENS`` (their runs stay valid).
      config.update_from_flattened_dict(POOLED_INSTRUCTION)
  elif arg == "base":
    config.model.update(width=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16)
    config.data.image_size = 128
    config.train.batch_size = 256
  else:
    raise ValueError(f"unknown preset {arg!r} for vla_baseline; known: tiny, base, mt10, mt10_n2, mt10_n5, mt10_n20")
  return config
