"""Where each preset's train step spends its time on this CPU (issue 17, item 1).

  .venv/bin/python scripts/profile_step.py \
      --presets=vla_baseline.py:tiny,video_wam.py:pretrain_tiny --batch_size=64 --steps=5

For each preset: the trainer's own compiled step (forward + backward + clip + AdamW)
on a synthetic batch, timed, then run --steps more times under ``jax.profiler``;
every executed XLA thunk is attributed to a model part (attention, MLP, norms,
encoder/decoder, head, loss, optimizer), a direction (forward, backward, update)
and a kind (dot, reduce, elementwise, layout) from the compiled HLO
(``wam_jax/training/profile.py``). Prints Markdown tables (thread ms per step:
the two cores run independent thunks concurrently, so the total can exceed the
wall time) and writes them with the top thunks to --out as JSON.
"""

import json
import time

from absl import app
from absl import flags

_PRESETS = flags.DEFINE_list("presets", ["vla_baseline.py:tiny"], "config_file.py:preset under experiments/configs.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Profiled steps per preset (after 2 warm-up and --steps timed ones).")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "Override config.train.compute_dtype ('' keeps the preset's).")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")


def get_config(spec: str):
  from wam_jax.training import profile  # pylint: disable=g-import-not-at-top
  config = profile.preset_config(spec)
  if _DTYPE.value:
    config.train.compute_dtype = _DTYPE.value
  return config


def main(argv):
  del argv
  from wam_jax.training import profile  # pylint: disable=g-import-not-at-top
  results = {}
  for spec in _PRESETS.value:
    config = get_config(spec)
    step = profile.compile_step(config, _BATCH.value)
    hlo = profile.parse_hlo(step.compiled.as_text())
    step.run(2)
    start = time.perf_counter()
    step.run(_STEPS.value)
    wall_ms = 1e3 * (time.perf_counter() - start) / _STEPS.value
    result = profile.attribute(profile.trace_thunks(lambda: step.run(_STEPS.value)), hlo, _STEPS.value)
    result.update(wall_ms=wall_ms, gflops_per_step=step.flops / 1e9, compute_dtype=config.train.compute_dtype)
    print(f"\n## {spec} (batch {_BATCH.value}, {config.train.compute_dtype}, "
          f"{step.flops / 1e9:.1f} GFLOPs/step)\n")
    print(profile.markdown(result, wall_ms))
    print("\ntop thunks: " + ", ".join(f"{t['thunk']} {t['ms']:.1f} ms ({t['part']} {t['dir']} {t['kind']})"
                                      for t in result["top"][:6]))
    result["by_part"] = {f"{p}/{d}": v for (p, d), v in result["by_part"].items()}
    results[spec] = result
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"batch_size": _BATCH.value, "steps": _STEPS.value, "presets": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
