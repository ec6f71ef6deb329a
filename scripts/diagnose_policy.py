r"""Does a policy fit its own demonstrations? Replay, open-loop and closed-loop on training episodes.

  .venv/bin/python scripts/diagnose_policy.py --workdir=runs/sweeps/baseline_quality/no_augment/seed_0 \
      --tasks=push-v3,peg-insert-side-v3 --episodes=3

For each task, the first ``--episodes`` training episodes of the run's first mixture dataset that
carry the task's instruction (``--dataset`` to choose another), each matched to its simulator seed
by its first frame (seeds ``--seed_offset``..+``--max_seed``):
1. replay: the env reset at that seed must show the stored first frame and proprio, and the stored
   actions must reproduce the stored frames and succeed (a data/simulator mismatch shows here);
2. open loop: the policy on the stored observations (one query per ``execute_steps``); mean |error|
   of its first action per action dimension, beside the demo's mean |action| (underfitting shows here);
3. closed loop: the policy in the env from the same seed; success, and the hand's distance to the
   demo's hand along the episode (where it leaves the demonstration).
Prints one block per episode and a JSON line per task.
"""

import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from wam_jax import inference  # noqa: E402
from wam_jax.data import pipeline  # noqa: E402
from wam_jax.evaluation import rollout  # noqa: E402
from wam_jax.sim import metaworld as mw  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_TASKS = flags.DEFINE_list("tasks", ["push-v3"], "MetaWorld v3 tasks.")
_EPISODES = flags.DEFINE_integer("episodes", 3, "Training episodes per task.")
_DATASET = flags.DEFINE_string("dataset", "", "Dataset of the run's mixture ('' -> its first).")
_SEED_OFFSET = flags.DEFINE_integer("seed_offset", 0, "First simulator seed to match episodes to.")
_MAX_SEED = flags.DEFINE_integer("max_seed", 40, "Seeds searched per task.")
_EXECUTE = flags.DEFINE_integer("execute_steps", 4, "Actions executed per chunk.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 200, "Closed-loop step limit.")


def _closed_loop(env, policy, seed, instruction):
  """The evaluator's chunk execution (``rollout.ChunkExecutor``), recording the hand [T, 3]."""
  executor = rollout.ChunkExecutor(_EXECUTE.value)
  raw, hand, success, t = mw.reset(env, seed), [], False, 0
  while t < _MAX_STEPS.value and not success:
    obs = mw.observe(env, raw)
    hand.append(obs["proprio"][:3].copy())
    if executor.needs_query():
      executor.add(policy(obs, instruction))
    elif hasattr(policy, "observe"):
      policy.observe(obs)
    raw, _, success = mw.step(env, executor.next_action())
    t += 1
  return success, t, np.array(hand)


def diagnose(task, reader, policy, resolution, camera):
  env = mw.make_env(task, 0, resolution=resolution, camera=camera)
  decode = lambda i: reader.decode(i, cameras=["primary"], image_size=resolution)  # noqa: E731
  episodes = [i for i in range(len(reader)) if decode(i).instruction == mw.instruction(task)]
  if not episodes:
    raise ValueError(f"no training episode of {task!r} in the dataset (instruction {mw.instruction(task)!r})")
  firsts = {}
  for seed in range(_SEED_OFFSET.value, _SEED_OFFSET.value + _MAX_SEED.value):
    firsts[seed] = mw.observe(env, mw.reset(env, seed))["image_primary"].astype(int)
  rows = []
  for index in episodes[:_EPISODES.value]:
    ep = decode(index)
    frames, a_dim = ep.frames["primary"], mw.ACTION_DIM
    seed = min(firsts, key=lambda s: np.abs(firsts[s] - frames[0]).mean())
    obs = mw.observe(env, mw.reset(env, seed))
    row = {"episode": index, "seed": seed, "length": ep.length,
           "first_frame_diff": float(np.abs(obs["image_primary"].astype(int) - frames[0]).mean()),
           "first_proprio_diff": float(np.abs(obs["proprio"] - ep.proprio[0][:len(obs["proprio"])]).max())}
    frame_diff, success = [], False
    for t in range(ep.length):
      raw, _, s = mw.step(env, ep.actions[t][:a_dim])
      success |= s
      if t + 1 < ep.length:
        frame_diff.append(np.abs(mw.render(env).astype(int) - frames[t + 1]).mean())
    row.update(replay_success=bool(success), replay_max_frame_diff=float(max(frame_diff, default=0.0)))
    policy.reset()
    errors = []
    for t in range(ep.length):
      o = {"image_primary": frames[t], "proprio": ep.proprio[t][:len(obs["proprio"])],
           "env_state": np.zeros_like(obs["env_state"])}
      if t % _EXECUTE.value == 0:
        errors.append(np.abs(policy(o, ep.instruction)[0] - ep.actions[t][:a_dim]))
      elif hasattr(policy, "observe"):
        policy.observe(o)
    row["open_loop_first_action_abs_error"] = [round(float(e), 3) for e in np.mean(errors, 0)]
    row["demo_abs_action"] = [round(float(a), 3) for a in np.abs(ep.actions[:, :a_dim]).mean(0)]
    policy.reset()
    success, steps, hand = _closed_loop(env, policy, seed, ep.instruction)
    n = min(len(hand), ep.length)
    dist = np.linalg.norm(hand[:n] - ep.proprio[:n, :3], axis=1)
    row.update(closed_loop_success=bool(success), closed_loop_steps=steps,
               hand_distance_to_demo={int(t): round(float(dist[t]), 4) for t in (10, 20, 40, 60, 80) if t < n},
               demo_final_hand=[round(float(x), 3) for x in ep.proprio[-1, :3]],
               policy_final_hand=[round(float(x), 3) for x in hand[-1]])
    rows.append(row)
    print(f"{task} episode {index} (seed {seed}, {ep.length} steps): replay "
          f"{'ok' if row['replay_success'] and row['replay_max_frame_diff'] == 0 else 'MISMATCH'} "
          f"(first frame |diff| {row['first_frame_diff']:.3f}, max frame |diff| {row['replay_max_frame_diff']:.3f}); "
          f"open-loop |err| {row['open_loop_first_action_abs_error']} vs demo |a| {row['demo_abs_action']}; "
          f"closed loop {'success' if success else 'failure'} in {steps}, hand-to-demo {row['hand_distance_to_demo']}")
  return rows


def main(argv):
  del argv
  config = ml_collections.ConfigDict(json.loads(open(os.path.join(_WORKDIR.value, "config.json")).read()))
  name = _DATASET.value or config.data.mixture[0][0]
  reader = pipeline.open_reader(config.data, name, config.data.train_split)
  policy = inference.load_policy(_WORKDIR.value)
  mwc = config.data.metaworld
  for task in mw.parse_tasks(_TASKS.value):
    rows = diagnose(task, reader, policy, mwc.resolution, mwc.camera)
    print("JSON " + json.dumps({"task": task, "dataset": name, "episodes": rows}))


if __name__ == "__main__":
  app.run(main)
