r"""Generate the MetaWorld protocol's datasets once (shared/PROTOCOL.md; wam_jax/ablations/protocol.py).

  python scripts/make_protocol_data.py                       # everything, into $WAM_DATA_DIR or ./wam_data
  python scripts/make_protocol_data.py --datasets=demos      # MT10 demos at N in {2, 5, 20} only
  python scripts/make_protocol_data.py --datasets=video      # the action-free video pool only
  python scripts/make_protocol_data.py --status              # what exists, what is half done

Resumable: kill it and run it again, finished (part, task) pairs are kept. A dataset
directory appears only when it is complete. Configs read the datasets by registry name
(``metaworld_mt10_n2`` ... ``metaworld_video_pool``); training also generates them on
first use when ``data.data_dir`` is empty, so this script is only a way to do it ahead.
"""

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from wam_jax.ablations import protocol  # noqa: E402

_GROUPS = {"demos": tuple(protocol.demos_name(n) for n in protocol.DEMO_COUNTS),
           "video": (protocol.VIDEO_NAME,)}
_GROUPS["all"] = _GROUPS["demos"] + _GROUPS["video"]

_OUT = flags.DEFINE_string("out", "", "Data root ('' -> $WAM_DATA_DIR or ./wam_data).")
_DATASETS = flags.DEFINE_list("datasets", ["all"], f"Groups {sorted(_GROUPS)} or dataset names "
                              f"{list(protocol.DATASET_NAMES)}.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Rollout worker processes (1: in-process).")
_STATUS = flags.DEFINE_bool("status", False, "Print what exists and what is half done, then exit.")
_KEEP_PARTS = flags.DEFINE_bool("keep_parts", False, "Keep the per-task parts after writing.")


def main(argv):
  del argv
  root = _OUT.value or os.environ.get("WAM_DATA_DIR") or "wam_data"
  names = []
  for item in _DATASETS.value:
    if item in _GROUPS:
      names += _GROUPS[item]
    elif item in protocol.DATASET_NAMES:
      names.append(item)
    else:
      raise app.UsageError(f"--datasets: {item!r} is neither a group {sorted(_GROUPS)} nor a "
                           f"protocol dataset {list(protocol.DATASET_NAMES)}")
  if _STATUS.value:
    st = protocol.status(root)
    for name, ready in st["datasets"].items():
      print(f"{name:24s} {'ready' if ready else 'missing'}")
    for part, (saved, total) in st["parts"].items():
      print(f"part {part:14s} {saved}/{total} tasks saved")
    return
  protocol.ensure_data(root, dict.fromkeys(names), num_workers=_WORKERS.value,
                       keep_parts=_KEEP_PARTS.value)


if __name__ == "__main__":
  app.run(main)
