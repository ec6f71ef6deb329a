"""VLA baseline: image history + instruction + proprio -> action chunk.

Presets: ``vla_baseline.py:tiny`` (CPU, minutes), ``vla_baseline.py:base``.
Every field is data; models, heads and datasets are looked up by name.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.model = ml_collections.ConfigDict(dict(
      name="vla",
      width=128,
      depth=4,
      num_heads=4,
      mlp_dim=512,
      patch_size=16,
      dropout=0.0,
      head=ml_collections.ConfigDict(dict(name="l1")),
  ))
  if arg == "tiny":
    # The README's main job: ~5-10 min of training on 2 CPU cores, then closed-loop eval.
    # Measured: 90% mean closed-loop success on the 4 embedded tasks (BUILD_NOTES.md, "VLA baseline result").
    config.data.max_text_len = 32
    config.train.update(steps=1000, compute_dtype="bfloat16", log_every=50, val_every=250,
                        ckpt_every=250)
    config.eval.at_end = True
  elif arg == "base":
    config.model.update(width=512, depth=12, num_heads=8, mlp_dim=2048, patch_size=16)
    config.data.image_size = 128
    config.train.batch_size = 256
  else:
    raise ValueError(f"unknown preset {arg!r} for vla_baseline; known: tiny, base")
  return config
