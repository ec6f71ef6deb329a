"""Offline: the IDM's action error given the true o_t+k, the video model's frame, or o_t (issue 12, use (b)).

  .venv/bin/python scripts/eval_plan_idm.py --video_workdir=runs/video_pretrain_tiny \
      --idm_workdir=runs/idm_tiny [--split=val] [--max_episodes=N] [--batch_size=32] [--out=plan_idm.json]

On the held-out episodes of the IDM's dataset, every window whose o_t+k is inside
its episode is scored three ways (``wam_jax.plan_idm.offline_action_errors``):
the true-future upper bound (the IDM's validation number), the plan the
closed-loop policy would act on, and the copy-last lower bound, each with the
fed frame's PSNR. Closed-loop success of the same pair:
``experiments/eval.py --policy=plan_idm``. Bad arguments: one line on stderr, exit status 2.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from wam_jax import plan_idm  # noqa: E402

_VIDEO = flags.DEFINE_string("video_workdir", None, "Video world-model run (video_wam or joint_wam).")
_IDM = flags.DEFINE_string("idm_workdir", None, "Inverse-dynamics run (config.model.name='idm').")
_SPLIT = flags.DEFINE_string("split", "val", "Split of the IDM's dataset (held-out episodes).")
_MAX = flags.DEFINE_integer("max_episodes", None, "Score the first N episodes only.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Windows per model call.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (flow video objectives / generative heads).")
_OUT = flags.DEFINE_string("out", "", "Also write the results as JSON here.")
flags.mark_flags_as_required(["video_workdir", "idm_workdir"])


def main(argv):
  del argv
  try:
    result = plan_idm.offline_action_errors(_VIDEO.value, _IDM.value, split=_SPLIT.value,
                                            max_episodes=_MAX.value, batch_size=_BATCH.value, seed=_SEED.value)
  except ValueError as e:
    print(f"eval_plan_idm: {e}", file=sys.stderr)
    sys.exit(2)
  print("| o_t+k fed to the IDM | action L1 (normalized) | action L1 (env) | frame PSNR dB |")
  print("|---|---|---|---|")
  for source in ("true_future", "video", "copy_last"):
    r = result[source]
    print(f"| {source} | {r['action_l1']:.4f} | {r['action_l1_env']:.4f} | {r['frame_psnr']:.1f} |")
  print(f"{result['windows']} windows of {result['episodes']} {result['dataset']}/{result['split']} episodes")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(dict(result, video_workdir=_VIDEO.value, idm_workdir=_IDM.value), f, indent=2)


if __name__ == "__main__":
  app.run(main)
