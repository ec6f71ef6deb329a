"""The attention core's hand-written backward against autodiff, inside each preset's train step (issue 17).

  JAX_PLATFORMS=cpu .venv/bin/python scripts/ab_attention.py \
      --presets=vla_baseline.py:tiny,idm_wam.py:idm_tiny --rounds=6

For each preset the trainer's own step is compiled twice: with ``layers.attend`` (the shared
block's custom VJP) and with ``layers.attend_autodiff`` (einsum-softmax-einsum differentiated by
JAX). Both first-step losses and gradient norms are printed (they must agree), then 5-step runs of
the two alternate for --rounds rounds on a synthetic batch; the median of each and their ratio are
printed (< 1: the hand-written backward is faster). Interleaving keeps the ratio meaningful on a
shared machine.
"""

from absl import app
from absl import flags
import numpy as np

_PRESETS = flags.DEFINE_list("presets", ["vla_baseline.py:tiny"], "config_file.py:preset under experiments/configs.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Interleaved rounds of 5 steps per variant.")


def main(argv):
  del argv
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from wam_jax.models import layers  # pylint: disable=g-import-not-at-top
  from wam_jax.training import profile  # pylint: disable=g-import-not-at-top
  custom = layers.attend
  for spec in _PRESETS.value:
    steps = {}
    for name, fn in (("autodiff", layers.attend_autodiff), ("custom", custom)):
      layers.attend = fn  # read by layers.Attention when the step is traced
      try:
        steps[name] = profile.compile_step(profile.preset_config(spec), _BATCH.value)
      finally:
        layers.attend = custom
    for name, step in steps.items():
      _, metrics = step.compiled(jax.tree.map(lambda x: x.copy(), step.state), step.batch)  # state is donated
      print(f"{spec} {name}: first loss {float(metrics['loss']):.7f}, grad norm {float(metrics['grad_norm']):.7f}")
      step.run(2)
    times = {name: [] for name in steps}
    for r in range(_ROUNDS.value):
      for name, step in steps.items():
        start = time.perf_counter()
        step.run(5)
        times[name].append((time.perf_counter() - start) / 5 * 1e3)
      print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items()), flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{spec}: autodiff {med['autodiff']:.1f} ms, custom {med['custom']:.1f} ms, "
          f"custom / autodiff {med['custom'] / med['autodiff']:.3f}")


if __name__ == "__main__":
  app.run(main)
