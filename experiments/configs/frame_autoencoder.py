"""The frame autoencoder: the latent frame space of the latent video WAM (stage 0).

  experiments/train.py --config=experiments/configs/frame_autoencoder.py:tiny --workdir=runs/frame_ae_tiny

Then ``video_wam.py:pretrain_latent_tiny`` restores it by parameter path
(``train.init_from=runs/frame_ae_tiny``). Trained on every frame of the mixture
(demos and action-free video; actions are never read). Validation reports
reconstruction PSNR/SSIM on held-out episodes.
"""

import ml_collections

from experiments.configs import common


def autoencoder_config() -> ml_collections.ConfigDict:
  """The architecture; video_wam's config.model.autoencoder must equal the run it restores."""
  return ml_collections.ConfigDict(dict(
      channels=(32, 64),    # conv widths per stride-2 stage: 64 px -> 16 x 16 latents
      latent_channels=8,    # C: 16 x 16 x 8 = 2,048 numbers per 64 x 64 x 3 frame
      patch=0,              # >= 2: pixel blocks to channels first (space to depth); 0: off
  ))


# The tiny preset's architecture: 2 x 2 pixel blocks to channels, then one stride-2 stage of 64 channels:
# the same 16 x 16 x 8 latents as (32, 64) without a conv at 64 x 64, 2-2.6x faster per step
# (BUILD_NOTES.md, "The frame autoencoder without full-resolution convolutions").
TINY = dict(channels=(64,), latent_channels=8, patch=2)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.model = ml_collections.ConfigDict(dict(name="frame_autoencoder", autoencoder=autoencoder_config()))
  config.data.mixture = (("metaworld_demos", 1.0), ("metaworld_video", 1.0))
  config.data.max_text_len = 32
  if arg == "tiny":
    config.model.autoencoder.update(TINY)
    config.train.update(steps=1500, batch_size=32, learning_rate=1e-3, warmup_steps=50, log_every=50,
                        val_every=250, val_batches=8, ckpt_every=250, summary_every=250)
  elif arg == "base":
    config.model.autoencoder.update(channels=(64, 128, 256), latent_channels=16)
    config.data.image_size = 128
    config.train.update(steps=20000, batch_size=128, learning_rate=5e-4)
  else:
    raise ValueError(f"unknown preset {arg!r} for frame_autoencoder; known: tiny, base")
  return config
