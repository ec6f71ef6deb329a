r"""Generate MetaWorld scripted-expert datasets (RLDS, ArrayRecord; no TensorFlow).

  python scripts/make_metaworld_dataset.py --tasks=drawer-open-v3,door-open-v3 \
      --episodes_per_task=25 --resolution=64 --out=wam_data --num_workers=2

writes <out>/metaworld_demos/1.0.0 and, with --video_episodes_per_task > 0, the
action-free <out>/metaworld_video/1.0.0 (--video_out, default --out; video
tasks default to the demo tasks plus a few others). See
wam_jax/sim/metaworld_data.py for the schema, seeds and episode rules.
"""

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from wam_jax.sim import metaworld as mw  # noqa: E402
from wam_jax.sim import metaworld_data  # noqa: E402

_TASKS = flags.DEFINE_list("tasks", ["drawer-open-v3", "door-open-v3"], "MetaWorld v3 task names.")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 25, "Successful demos per task (>= 2).")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Square image size in pixels.")
_CAMERA = flags.DEFINE_string("camera", "corner4", "MetaWorld camera.")
_OUT = flags.DEFINE_string("out", "wam_data", "Root directory for the demo dataset.")
_VIDEO_OUT = flags.DEFINE_string("video_out", "", "Root for the video dataset ('' -> --out).")
_VIDEO_TASKS = flags.DEFINE_list("video_tasks", [], "Video tasks ([] -> demo tasks + extras).")
_VIDEO_EPISODES = flags.DEFINE_integer("video_episodes_per_task", 0, "Video episodes per task (0: none).")
_SEED = flags.DEFINE_integer("seed", 0, "First episode seed (video seeds start 50,000 later).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", metaworld_data.MAX_STEPS, "Episode step limit.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Rollout worker processes (1: in-process).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing datasets.")


def main(argv):
  del argv
  try:
    mw.parse_tasks(_TASKS.value + _VIDEO_TASKS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  common = dict(resolution=_RESOLUTION.value, camera=_CAMERA.value, seed_base=_SEED.value,
                num_workers=_WORKERS.value, max_steps=_MAX_STEPS.value, overwrite=_OVERWRITE.value)
  metaworld_data.generate_demos(_OUT.value, _TASKS.value, _EPISODES.value, **common)
  if _VIDEO_EPISODES.value > 0:
    tasks = _VIDEO_TASKS.value or metaworld_data.default_video_tasks(_TASKS.value)
    metaworld_data.generate_video(_VIDEO_OUT.value or _OUT.value, tasks, _VIDEO_EPISODES.value,
                                  **common)


if __name__ == "__main__":
  app.run(main)
