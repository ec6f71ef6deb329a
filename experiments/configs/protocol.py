"""The MetaWorld protocol (shared/PROTOCOL.md) applied to any family's config.

A family file adds protocol presets by calling ``apply``; e.g. ``vla_baseline.py:mt10_n2``:

  elif arg.startswith("mt10"):
    config = protocol.apply(config, protocol.n_demos_of(arg))

Data (``metaworld_mt10_n{N}``, optionally the action-free ``metaworld_video_pool``; frames not augmented),
evaluation (20 episodes per MT10 task on seeds 100,000.., 200 steps, execute 4 of 8) and
the camera are the protocol's; the training budget stays the family's to set.
"""

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


def apply(config: ml_collections.ConfigDict, n_demos: int, *,
          video_weight: float = 0.0) -> ml_collections.ConfigDict:
  """Sets the protocol's data (N labeled demos per MT10 task; video pool if weight > 0) and eval."""
  mixture = [(protocol.demos_name(n_demos), 1.0)]
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
  config.eval.update(protocol.EVAL)
  config.eval.update(at_end=True, num_videos=1)
  return config
