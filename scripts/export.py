r"""Exports a training run as a self-contained policy artifact (see wam_jax/export/writer.py).

  python scripts/export.py --workdir=runs/tiny --out=exports/tiny
  python scripts/export.py --workdir=runs/x --step=500 --params=raw --sampling_steps=10 --out=exports/x

Loads in any process with ``wam_jax.export.load(out)`` (no model code), or with jax alone:
``jax.export.deserialize(open(out + '/policy.stablehlo', 'rb').read()).call(inputs, rng)``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).", required=True)
_OUT = flags.DEFINE_string("out", None, "Artifact directory to write (must not exist).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable one).")
_PARAMS = flags.DEFINE_enum("params", "auto", ["auto", "ema", "raw"],
                            "Which params: auto = EMA if the run kept it, else raw.")
_SAMPLING = flags.DEFINE_integer("sampling_steps", None, "Override the generative head's sampling steps.")
_DATASET = flags.DEFINE_string("dataset", None, "Mixture dataset the policy acts in (default: first with actions).")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "jax.export lowering platforms.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out (atomically).")


def main(argv):
  del argv
  from wam_jax.export import writer  # pylint: disable=g-import-not-at-top
  try:
    writer.export_policy(_WORKDIR.value, _OUT.value, step=_STEP.value, params=_PARAMS.value,
                         sampling_steps=_SAMPLING.value, dataset_name=_DATASET.value,
                         platforms=tuple(_PLATFORMS.value), overwrite=_OVERWRITE.value)
  except (ValueError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(main)
