r"""The vision-language model (issue 13, stage 2): the stage-1 LM + a small ViT and projector.

  .venv/bin/python scripts/prepare_image_text.py    # once: image-question-answer pairs (wam_data/image_text)
  .venv/bin/python experiments/train.py --config=experiments/configs/vlm.py:tiny --workdir=runs/vlm_tiny

``tiny`` restores the language model of ``runs/lm_tiny`` (``lm.py:tiny``) by
parameter path (``embed``, ``backbone``; the ViT starts fresh). The control
without language pretraining: ``--config.train.init_from=''``. The pairs must be
prepared with that run's tokenizer (the default: the stage-1 corpus's).
"""

import ml_collections

from experiments.configs import lm


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "1b"):
    raise ValueError(f"unknown preset {arg!r} for vlm; known: tiny, 1b")
  config = lm.get_config(arg)
  config.data = ml_collections.ConfigDict(dict(
      kind="image_text",    # wam_jax/data/image_text.py
      data_dir="",
      text_dir="",          # '' -> <data root>/image_text
      train_split="train",
      val_split="val",
      image_size=64,        # S: frames are S x S (as prepared)
      text_len=48,          # L: prompt + answer + EOS, padded
      vocab_size=config.data.vocab_size,
      cameras=(),           # no robot frames: no image summaries
  ))
  config.model.name = "vlm"
  config.model.vision = ml_collections.ConfigDict(dict(width=128, depth=2, num_heads=4, mlp_dim=256, patch_size=8))
  if arg == "tiny":
    config.train.update(steps=600, batch_size=32, learning_rate=1e-3, warmup_steps=50, log_every=25,
                        val_every=200, val_batches=100, ckpt_every=200, init_from="runs/lm_tiny")
  else:  # the 1b LM's backbone with a ViT-B/16-sized encoder at 224 px
    config.data.update(image_size=224, text_len=64)
    config.model.vision.update(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16)
    config.train.update(steps=20_000, batch_size=256, init_from="")
  return config
