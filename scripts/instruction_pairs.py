r"""Claim 4's design check: which MetaWorld tasks start from scenes that look alike?

  .venv/bin/python scripts/instruction_pairs.py [--dataset=metaworld_video_pool] [--top=12]

For a test where the instruction, not the image, decides what to do, the two
tasks of a pair must be told apart by their instruction alone. This reads the
first frame of every episode of the dataset (its train split, through the
registry), and per task pair prints the mean pixel RMSE between the first frames
of the two tasks (across episodes) beside each task's own spread (the RMSE
between its episodes' first frames, which differ by the random object and goal
positions). A pair whose cross distance is within the tasks' own spread (ratio
<= ~1) looks alike to a policy at t = 0: only the instruction tells them apart.
"""

import itertools
import os
import sys

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wam_jax.data import registry, rlds  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "metaworld_video_pool", "Registry name of a MetaWorld dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", "wam_data", "Root of the project's datasets.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Frames are compared at S x S.")
_TOP = flags.DEFINE_integer("top", 12, "Closest pairs to print.")
_TASKS = flags.DEFINE_list("tasks", [], "Only pairs among these instructions (default: all tasks).")


def rmse(a_NHWC, b_MHWC) -> float:
  """Mean over all (n, m) pairs of the pixel RMSE (0-255) between a[n] and b[m], skipping n == m
  when a is b."""
  a = a_NHWC.reshape(len(a_NHWC), -1).astype(np.float64)
  b = b_MHWC.reshape(len(b_MHWC), -1).astype(np.float64)
  d2 = (a ** 2).mean(1)[:, None] + (b ** 2).mean(1)[None] - 2 * a @ b.T / a.shape[1]
  d = np.sqrt(np.maximum(d2, 0.0))
  if a_NHWC is b_MHWC:
    return float(d[~np.eye(len(a), dtype=bool)].mean())
  return float(d.mean())


def main(argv):
  del argv
  spec = registry.get_spec(_DATASET.value)
  reader = rlds.RldsReader(os.path.join(_DATA_DIR.value, spec.directory), _SPLIT.value, spec)
  camera = next(iter(spec.cameras))
  firsts = {}
  for i in range(len(reader)):
    ep = reader.decode(i, cameras=(camera,), image_size=_IMAGE_SIZE.value)
    firsts.setdefault(ep.instruction, []).append(ep.frames[camera][0])
  tasks = {k: np.stack(v) for k, v in sorted(firsts.items())}
  spread = {k: rmse(v, v) for k, v in tasks.items() if len(v) > 1}
  rows = []
  for a, b in itertools.combinations(tasks, 2):
    cross = rmse(tasks[a], tasks[b])
    if _TASKS.value and not (a in _TASKS.value and b in _TASKS.value):
      continue
    own = (spread.get(a, 0.0) + spread.get(b, 0.0)) / 2
    rows.append((cross / max(own, 1e-6), cross, own, a, b))
  rows.sort()
  print(f"{len(tasks)} tasks, {sum(len(v) for v in tasks.values())} episodes of {_DATASET.value}/{_SPLIT.value}")
  print("| task A | task B | first-frame RMSE A vs B | mean own spread | ratio |")
  print("|---|---|---|---|---|")
  for ratio, cross, own, a, b in rows[:_TOP.value]:
    print(f"| {a} | {b} | {cross:.1f} | {own:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
  app.run(main)
