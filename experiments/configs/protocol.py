"""The MetaWorld protocol (shared/PROTOCOL.md) applied to any family's config.

A family file adds protocol presets by calling ``apply``; e.g. ``vla_baseline.py:mt10_n2``:

  elif arg.startswith("mt10"):
    config = protocol.apply(config, protocol.n_demos_of(arg))

Data (``metaworld_mt10_n{N}``, optionally the action-free ``metaworld_video_pool``; frames not augmented),
evaluation (20 episodes per MT10 task on seeds 100,000.., 200 steps, execute 4 of 8) and
the camera are the protocol's; the training budget stays the family's to set.
"""

from typing import Optional

import ml_collections

from wam_jax.ablations import protocol


def n_demos_of(preset: str) -> int:
  """``"mt10"`` -> 20 (full), ``"mt10_n5"`` -> 5; anything else raises naming the preset."""
  if preset == "mt10":
    return max(protocol.DEMO_COUNTS)
  prefix = "mt10_n"
  if not preset.startswith(prefix) or not preset[len(prefix):].isdigit():
    raise ValueError(f"unknown protocol preset {preset!r}; known: mt10, "
                     + ", ".join(f"mt10_n{n}" for n in protocol.DEMO_COUNTS))
  n = int(preset[len(prefix):])
  protocol.demos_name(n)  # raises for an N outside the protocol
  return n


# How every protocol preset reads its frames (``model.stem``, ``encoders.conv_stem``): four 3x3 stride-2
# convolutions + GELU, 64 px -> 4 x 4 x 128, one token per 16 px cell: the trunk of the protocol's
# plain CNN (``cnn_bc.py``). Measured (baseline_quality, VLA at N=20, seed 0, 200 episodes): 56%
# with 16 pixel-patch tokens, 64-67% with this trunk; the plain CNN itself 68%.
STEM = (32, 64, 128, 128)


EPISODE_CACHE_MB = 2048  # data.episode_cache_mb of every protocol preset (apply).


def apply(config: ml_collections.ConfigDict, n_demos: Optional[int], *,
          video_weight: float = 0.0) -> ml_collections.ConfigDict:
  """Sets the protocol's data (N labeled demos per MT10 task, none for a pretraining stage with
  ``n_demos=None``; the video pool if weight > 0), eval, and the conv trunk ``STEM`` of every
  family whose model reads frames through ``model.stem``."""
  if n_demos is None and video_weight <= 0:
    raise ValueError("protocol.apply: a stage without labeled demos (n_demos=None) needs video_weight > 0")
  mixture = [] if n_demos is None else [(protocol.demos_name(n_demos), 1.0)]
  if video_weight > 0:
    mixture.append((protocol.VIDEO_NAME, float(video_weight)))
  config.data.mixture = tuple(mixture)
  config.data.image_size = protocol.RESOLUTION
  # What the protocol datasets were rendered with (evaluation renders the same way).
  config.data.metaworld.update(resolution=protocol.RESOLUTION, camera=protocol.CAMERA)
  # No random crops or colour jitter on protocol frames: a crop moves the goal, the handles and the
  # hand in the image but not the hand's proprio coordinates. Measured (baseline_quality sweep,
  # VLA at N=20, 200 episodes): 49.5% with augmentation, 56% without (door-open 45 -> 80%,
  # drawer-open 55 -> 80%). Every family's protocol preset trains on the same frames.
  config.data.augment.enabled = False
  # Every decoded episode stays in memory: the demos (N=20: 17k frames) and the video pool (78k
  # frames) are ~1.2 GB decoded at 12.3 KB a frame. At the default 1 GB the pool's share was
  # re-decoded over and over (PNG through TFDS, ~50 ms an episode): 242 ms of loader work per batch
  # of a pool-mixing preset against 31 ms with it all cached (session 12). Batches are identical.
  config.data.episode_cache_mb = EPISODE_CACHE_MB
  if "model" in config and "stem" in config.model:
    config.model.stem = STEM
  config.eval.update(protocol.EVAL)
  config.eval.update(at_end=True, num_videos=1)
  return config
