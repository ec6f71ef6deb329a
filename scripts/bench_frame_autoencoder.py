"""The frame autoencoder's train step (loss + gradients) per architecture, interleaved A/B.

  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_frame_autoencoder.py --frames=64 --rounds=3

Cases: ``(32, 64)`` without pixel blocks (the architecture before session 7: 3x3 convs at 64 x 64)
and ``frame_autoencoder.TINY`` (2 x 2 pixel blocks to channels, one 64-channel stage); both give
16 x 16 x 8 latents of a 64 x 64 frame. ``--frames`` frames per step (the tiny preset's batch 32
x 2 frames per window = 64). FLOPs from XLA's ``cost_analysis``; the best round's median per case
(the machine may be shared: read the ratio). Prints a Markdown table and one JSON line.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_FRAMES = flags.DEFINE_integer("frames", 64, "Frames per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the best median is kept.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per case and round.")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments.configs import frame_autoencoder as ae_config  # pylint: disable=g-import-not-at-top
  from wam_jax.models import frame_metrics  # pylint: disable=g-import-not-at-top
  from wam_jax.models.frame_autoencoder import FrameAutoencoder  # pylint: disable=g-import-not-at-top

  frames = jax.random.randint(jax.random.key(0), (_FRAMES.value, 64, 64, 3), 0, 256).astype(jnp.uint8)
  cases = {"(32, 64), no pixel blocks": FrameAutoencoder((32, 64), 8, 0),
           f"{ae_config.TINY['channels']}, patch {ae_config.TINY['patch']} (tiny preset)": FrameAutoencoder(
               tuple(ae_config.TINY["channels"]), ae_config.TINY["latent_channels"], ae_config.TINY["patch"])}
  steps, flops = {}, {}
  for name, model in cases.items():
    params = model.init(jax.random.key(1), frames)

    def loss(p, model=model):
      return jnp.mean(jnp.abs(model.apply(p, frames) - frame_metrics.uint8_to_signed(frames)))
    step = jax.jit(jax.value_and_grad(loss))
    flops[name] = step.lower(params).compile().cost_analysis().get("flops", float("nan"))
    jax.block_until_ready(step(params))
    steps[name] = (step, params)
  best = {name: float("inf") for name in cases}
  for _ in range(_ROUNDS.value):
    for name, (step, params) in steps.items():
      times = []
      for _ in range(_STEPS.value):
        start = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - start)
      best[name] = min(best[name], statistics.median(times))
  base = next(iter(best.values()))
  print(f"| architecture ({_FRAMES.value} frames, 64 px) | GFLOP/step | ms/step | speed-up |\n|---|---|---|---|")
  for name in cases:
    print(f"| {name} | {flops[name] / 1e9:.1f} | {1000 * best[name]:.0f} | {base / best[name]:.2f}x |")
  print(json.dumps({"frames": _FRAMES.value, "ms": {k: 1000 * v for k, v in best.items()},
                    "gflop": {k: v / 1e9 for k, v in flops.items()}}))


if __name__ == "__main__":
  app.run(main)
