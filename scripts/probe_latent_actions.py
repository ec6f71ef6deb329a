"""How much of the real action do a latent-action model's latents carry? (issue 12 item 4)

  .venv/bin/python scripts/probe_latent_actions.py --lam=runs/sweeps/families_v4/latent_action/seed_0 \
      [--dataset=metaworld_mt10_n20] [--stride=1] [--out=experiments/results/latent_probe/NAME.json]

Held-out R^2 of ridge probes from the latent (and, as controls, the task alone, task + latent, a
shuffled latent) to the true chunk a_t..a_t+k-1 of a labelled dataset's windows, fitted on its
train split and scored on its val split; the decoder's errors on the same windows beside them
(wam_jax/evaluation/latent_probe.py). Bad arguments: one line on stderr, exit status 2.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from absl import app, flags  # noqa: E402

from wam_jax.evaluation import latent_probe  # noqa: E402

_LAM = flags.DEFINE_string("lam", None, "Workdir of a trained latent-action run (config.model.name='latent_action').")
_DATASET = flags.DEFINE_string("dataset", "metaworld_mt10_n20", "Labelled registry dataset to probe on.")
_FIT = flags.DEFINE_string("fit_split", "train", "Split the probes are fitted on.")
_TEST = flags.DEFINE_string("test_split", "val", "Split the probes are scored on.")
_STRIDE = flags.DEFINE_integer("stride", 1, "Windows at every stride-th step.")
_MAX = flags.DEFINE_integer("max_episodes", None, "At most this many episodes per split.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable one).")
_RIDGE = flags.DEFINE_float("ridge", 1.0, "Ridge penalty on standardized features.")
_OUT = flags.DEFINE_string("out", None, "Write the result JSON here.")
flags.mark_flags_as_required(["lam"])


def main(argv):
  del argv
  if _STRIDE.value < 1:
    print(f"probe_latent_actions: --stride={_STRIDE.value} must be >= 1", file=sys.stderr)
    sys.exit(2)
  try:
    r = latent_probe.probe(_LAM.value, _DATASET.value, step=_STEP.value, fit_split=_FIT.value,
                           test_split=_TEST.value, stride=_STRIDE.value, max_episodes=_MAX.value,
                           ridge=_RIDGE.value)
  except ValueError as e:
    print(f"probe_latent_actions: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{r['lam']} on {r['dataset']} ({r['windows']} windows, {r['tasks']} tasks):")
  for name, value in r["r2"].items():
    print(f"  held-out R^2 of the chunk from {name:<10}: {value:+.3f}")
  print(f"  task read from z: {100 * r['task_accuracy']:.1f}% (chance {100 / r['tasks']:.1f}%)")
  for name, value in r["decoder"].items():
    print(f"  decoder {name:<16}: {value:.5f}")
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
