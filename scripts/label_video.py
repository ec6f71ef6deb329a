"""Pseudo-labels action-free video with a trained inverse-dynamics model (issue 12, use (a)).

  .venv/bin/python scripts/label_video.py --idm=runs/idm_tiny \
      --src=wam_data/metaworld_video/1.0.0 --out=wam_data/metaworld_video_labeled/1.0.0 \
      [--batch_size=64] [--max_episodes=N] [--step=S] [--overwrite]
  .venv/bin/python scripts/label_video.py --expert --src=... --out=...   # the oracle: MetaWorld's
      # scripted expert on each step's stored full state (the upper bound of pseudo-labelling)

Writes an RLDS dataset in the demos' schema, actions from the IDM (which step
gets which predicted action, the output layout and the metadata:
wam_jax/data/pseudo_label.py). Streams one episode at a time and logs
progress. Resumable: rerun the same command after an interruption (or after
--max_episodes, which labels at most that many more episodes and stops) and
finished episodes are skipped; --out appears only once complete. The registry
entry ``metaworld_video_labeled`` reads the default --out like any demos.
Bad arguments: one line on stderr, exit status 2.
"""

import sys

from absl import app
from absl import flags

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # run from a checkout too

from wam_jax.data import pseudo_label

_IDM = flags.DEFINE_string("idm", None, "Workdir of a trained IDM run (config.model.name='idm').")
_EXPERT = flags.DEFINE_bool("expert", False, "Label with MetaWorld's scripted expert instead of an IDM (the oracle; "
                            "needs the source's env_state and task).")
_SRC = flags.DEFINE_string("src", None, "Action-free RLDS dataset version dir (ArrayRecord).")
_OUT = flags.DEFINE_string("out", None, "Output dataset version dir, e.g. wam_data/metaworld_video_labeled/1.0.0.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Windows per IDM call.")
_MAX = flags.DEFINE_integer("max_episodes", None, "Label at most this many episodes in this run, then stop "
                            "(rerun to continue).")
_STEP = flags.DEFINE_integer("step", None, "IDM checkpoint step (default: the newest readable one).")
_SHARD = flags.DEFINE_integer("episodes_per_shard", 100, "Episodes per output shard (the unit of resumption).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an existing --out and any partial labelling.")
flags.mark_flags_as_required(["src", "out"])


def main(argv):
  del argv
  if bool(_IDM.value) == _EXPERT.value:
    print("label_video: pass exactly one labeller: --idm=<IDM workdir> or --expert", file=sys.stderr)
    sys.exit(2)
  labeler = pseudo_label.EXPERT if _EXPERT.value else _IDM.value
  try:
    r = pseudo_label.label_dataset(labeler, _SRC.value, _OUT.value, batch_size=_BATCH.value,
                                   max_episodes=_MAX.value, episodes_per_shard=_SHARD.value, step=_STEP.value,
                                   overwrite=_OVERWRITE.value)
  except ValueError as e:
    print(f"label_video: {e}", file=sys.stderr)
    sys.exit(2)
  rate = 60 * r["episodes"] / max(r["seconds"], 1e-9)
  print(f"{r['status']}: {r['episodes']} episodes labelled in {r['seconds']:.1f} s ({rate:.1f} episodes/min), "
        f"{r['skipped']} done before, labeller {r['idm_checkpoint']} -> {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
