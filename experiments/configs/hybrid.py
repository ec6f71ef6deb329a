r"""The hybrid VLA-WAM (issue 13, stage 3): VLM backbone + world module + pi0-style action expert.

The pretraining ladder at tiny size (each stage restores the previous one by parameter path):

  .venv/bin/python scripts/prepare_text.py && .venv/bin/python scripts/prepare_image_text.py
  .venv/bin/python experiments/train.py --config=experiments/configs/lm.py:tiny --workdir=runs/lm_tiny
  .venv/bin/python experiments/train.py --config=experiments/configs/vlm.py:tiny --workdir=runs/vlm_tiny
  .venv/bin/python experiments/train.py --config=experiments/configs/hybrid.py:tiny --workdir=runs/hybrid_tiny

``tiny`` trains on the embedded MetaWorld demos + video like the VLA's tiny
preset (same steps, batch, eval) and restores ``runs/vlm_tiny`` under ``vlm/``.
``mt10_n{2,5,20}``: the same on the protocol's data and evaluation, 2000 steps as the VLA's
protocol presets; the stages before it are trained once and shared by every seed and N.
Controls: ``--config.train.init_from=''`` (no stages 1-2), ``--config.model.video_weight=0``
(no world module), ``--config.model.backbone_tuning=frozen|last_n_blocks``.
``1b``: the ``lm.py:1b`` backbone (scanned as that preset, every block rematerialized; the expert is
scanned beside it, reading layer l's keys and values at its layer l), a ViT-B/16 at 224 px, a
1024-wide expert, windowed einsums off: for TPU compilation, sized for v5p-16.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import vlm
from experiments.configs import video_wam
from wam_jax.models import heads


PROTOCOL_PRESETS = tuple(f"mt10_n{n}" for n in (2, 5, 20))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "1b") + PROTOCOL_PRESETS:
    raise ValueError(f"unknown preset {arg!r} for hybrid; known: tiny, 1b, {', '.join(PROTOCOL_PRESETS)}")
  n_demos = None
  if arg.startswith("mt10"):  # the tiny hybrid on the protocol's data and evaluation
    from experiments.configs import protocol  # pylint: disable=g-import-not-at-top
    n_demos, arg = protocol.n_demos_of(arg), "tiny"
  config = common.base_config()
  stage2 = vlm.get_config(arg)
  backbone = stage2.model
  backbone.vocab_size = stage2.data.vocab_size
  world = video_wam.model_config()
  config.model = ml_collections.ConfigDict(dict(
      name="hybrid",
      # The world module (the video world model's predictor and frame representation).
      width=world.width, depth=2, num_heads=world.num_heads, mlp_dim=world.mlp_dim, dropout=0.0,
      frames="pixels", patch_size=world.patch_size, latent_patch_size=world.latent_patch_size,
      autoencoder=world.autoencoder, video=world.video,
      video_weight=0.5,             # the world module's video loss beside the action loss (0: no world module)
      vlm=backbone,                 # the stage-2 VLM (families/vlm.py): its fields as vlm.py makes them
      expert=ml_collections.ConfigDict(dict(width=64, mlp_dim=256)),  # depth/heads/head size: the VLM's
      backbone_tuning="full",       # full | last_n_blocks | frozen
      last_n_blocks=2,
      backbone_lr_multiplier=1.0,
      head=heads.default_head_config("flow"),
  ))
  config.model.head.flow.update(denoiser="mlp", depth=1, width=64, mlp_dim=128, num_sampling_steps=5)
  config.data.update(max_text_len=32, text_tokenizer="shakespeare_text/tokenizer.json")
  if arg == "tiny":
    config.train.update(steps=1000, compute_dtype="bfloat16", log_every=50, val_every=250, ckpt_every=250,
                        summary_every=250, init_from="runs/vlm_tiny", init_from_map="=vlm/")
    config.eval.at_end = True
  else:
    config.model.update(width=1024, depth=12, num_heads=16, mlp_dim=4096)
    config.model.expert.update(width=1024, mlp_dim=4096)
    config.model.head.flow.update(width=1024, mlp_dim=2048, num_sampling_steps=10)
    config.data.update(image_size=224, max_text_len=64)
    config.model.patch_size = 16
    config.train.update(batch_size=512, steps=30_000, compute_dtype="bfloat16", init_from="",
                        init_from_map="")
    config.mesh.shape = (1, -1, 1)  # FSDP
    # The layout that fits v5p-16 (8 chips, 64 sequences each) at a projected 47-54% model-FLOPs
    # MFU (BUILD_NOTES, "A layout at 50%"): every block recomputed in the backward (the saved dot
    # outputs of dots_saveable need 104 GiB there), and FSDP matmuls as all-gather then matmul, not
    # the compiler's windowed-einsum loops (17.8% -> 42% on v5p-32 alone).
    config.model.vlm.remat = "full"
    config.train.compiler_options.tpu.update(xla_tpu_enable_windowed_einsum_for_all_gather=False,
                                             xla_tpu_enable_windowed_einsum_for_reduce_scatter=False)
  if n_demos is not None:
    protocol.apply(config, n_demos)
    config.train.steps = 2000  # as the VLA's mt10 presets; the VLM stage (runs/vlm_tiny) is shared
  return config
