r"""The language model (issue 13, stage 1): decoder-only, RoPE + RMSNorm + SwiGLU, tied embeddings.

  .venv/bin/python scripts/prepare_text.py          # once: tokenizer + packed rows (wam_data/shakespeare_text)
  .venv/bin/python experiments/train.py --config=experiments/configs/lm.py:tiny --workdir=runs/lm_tiny

Presets: ``tiny`` (CPU, minutes, on the Shakespeare/Milton corpus) and ``1b``
(the Foundry-LLM shape, ~1.2B non-embedding parameters: for compiling and
fitting on TPU slices, not for this machine). data.seq_len and data.vocab_size
must equal the prepared corpus's (scripts/prepare_text.py --seq_len --vocab_size).
"""

import ml_collections

from experiments.configs import common


def text_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind="text",          # wam_jax/data/text.py
      data_dir="",          # data root ('' -> $WAM_DATA_DIR or ./wam_data)
      text_dir="",          # '' -> <data root>/shakespeare_text
      train_split="train",
      val_split="val",
      seq_len=128,          # N: tokens per packed row (rows hold N + 1: inputs and shifted targets)
      vocab_size=2048,      # V: the trained BPE tokenizer's size
      cameras=(),           # no frames: no image summaries
  ))


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="lm",
      width=128, depth=4, num_heads=4, mlp_dim=352, dropout=0.0,
      norm="rms",                 # layer | rms
      activation="swiglu",        # gelu | swiglu
      rope_max_wavelength=10_000.0,  # 0: no position information at all (no learned table either)
      tie_embeddings=True,        # logits through the transposed token embedding
      scan=False,                 # nn.scan over layers (compile time flat in depth; slower on CPU)
      remat="none",               # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  ))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.data = text_data_config()
  config.model = model_config()
  config.train.update(weight_decay=0.1, grad_clip_norm=1.0, b1=0.9, b2=0.95, summary_every=0)
  if arg == "tiny":
    config.train.update(steps=400, batch_size=16, learning_rate=3e-3, warmup_steps=40,
                        end_learning_rate_factor=0.1, log_every=25, val_every=200, val_batches=1000,
                        ckpt_every=200)
  elif arg == "1b":
    # ~1.23B non-embedding parameters: 24 x (4 D^2 attention + 3 D F SwiGLU), D = 2048, F = 5632.
    config.model.update(width=2048, depth=24, num_heads=16, mlp_dim=5632, scan=True, remat="dots_saveable")
    config.data.update(seq_len=2048, vocab_size=50_304)
    config.train.update(steps=100_000, batch_size=512, learning_rate=3e-4, warmup_steps=2000,
                        val_every=2000, val_batches=16, ckpt_every=2000)
    config.mesh.shape = (1, -1, 1)  # FSDP
  else:
    raise ValueError(f"unknown preset {arg!r} for lm; known: tiny, 1b")
  return config
