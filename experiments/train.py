r"""Train a model: ``python experiments/train.py --config=experiments/configs/vla_baseline.py:tiny --workdir=DIR``.

Override any field: ``--config.train.steps=300 --config.model.depth=2``. A
workdir with checkpoints resumes. With ``config.eval.at_end`` (the tiny
presets) the trained policy is then evaluated closed loop in MetaWorld.
"""

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wam_jax import main_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path:preset).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, eval).", required=True)


def main(argv):
  del argv
  main_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  main_lib.run(main)
