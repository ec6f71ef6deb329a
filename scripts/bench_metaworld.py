r"""Benchmark MetaWorld demo generation and closed-loop evaluation throughput.

  python scripts/bench_metaworld.py --tasks=drawer-close-v3,button-press-topdown-v3,drawer-open-v3,door-open-v3 \
      --episodes_per_task=6 --eval_episodes=6 --workers=1,2

Measures, per worker count: expert demos/minute (rollout + render + PNG/ArrayRecord
writing, wall time including worker start-up) and eval episodes/minute (expert
policy, so every episode runs to success). Prints a Markdown table; --json saves it.
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from wam_jax.evaluation import evaluate as evaluate_lib  # noqa: E402
from wam_jax.evaluation import policy as policy_lib  # noqa: E402
from wam_jax.sim import metaworld_data  # noqa: E402

_TASKS = flags.DEFINE_list(
    "tasks", ["drawer-close-v3", "button-press-topdown-v3", "drawer-open-v3", "door-open-v3"], "Tasks.")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 6, "Demos per task.")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 6, "Eval episodes per task.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Image size.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to compare.")
_JSON = flags.DEFINE_string("json", "", "Write the results here too.")


def main(argv):
  del argv
  rows = []
  for n in map(int, _WORKERS.value):
    with tempfile.TemporaryDirectory() as tmp:
      start = time.time()
      stats = metaworld_data.generate_demos(tmp, _TASKS.value, _EPISODES.value,
                                            resolution=_RESOLUTION.value, num_workers=n,
                                            log=lambda s: None)
      gen_wall = time.time() - start
    res = evaluate_lib.evaluate(policy_lib.ExpertPolicy, _TASKS.value, _EVAL_EPISODES.value,
                                num_workers=n, num_videos=0, resolution=_RESOLUTION.value,
                                execute_steps=1, log=lambda s: None)
    rows.append(dict(
        workers=n, demos=stats.episodes, demo_steps=stats.steps, expert_failures=stats.failures,
        demos_per_min=60 * stats.episodes / gen_wall,
        demo_steps_per_s=stats.steps / gen_wall,
        eval_episodes=res["mean"]["episodes"], eval_success=res["mean"]["success_rate"],
        eval_episodes_per_min=res["episodes_per_minute"],
        eval_steps_per_s=sum(e["length"] for e in res["episodes"]) / res["seconds"]))
    print(rows[-1], flush=True)
  print(f"\n{len(_TASKS.value)} tasks, {_RESOLUTION.value}px, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}\n")
  print("| workers | demos/min | demo steps/s | eval episodes/min | eval steps/s | expert eval success |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workers']} | {r['demos_per_min']:.1f} | {r['demo_steps_per_s']:.0f} | "
          f"{r['eval_episodes_per_min']:.1f} | {r['eval_steps_per_s']:.0f} | {r['eval_success']:.0%} |")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
