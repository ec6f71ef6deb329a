"""MetaWorld demonstration and video datasets (RLDS, ArrayRecord) from scripted experts.

Two datasets, one schema (agreed with the data pipeline; names are fixed):

  <root>/metaworld_demos/1.0.0   steps/observation/{image, state, env_state},
                                 steps/action, language_instruction, reward,
                                 discount, is_first, is_last, is_terminal;
                                 episode_metadata/{task, seed, success, episode_id}
  <root>/metaworld_video/1.0.0   the same without steps/action (action-free video)

Episodes: the scripted expert of ``metaworld.policies.ENV_POLICY_MAP`` from the
start state of the episode seed. An episode stops ``STEPS_AFTER_SUCCESS`` (10)
steps after the first success, or after ``max_steps`` (200); only successful
episodes are kept (a failed seed is replaced by the next one, and failures are
counted). Step t holds the observation before action t; the last step has
``is_last``, and ``is_terminal`` with discount 0 (the task was achieved).

Seeds (the start state of an episode; disjoint ranges per use): demos
``seed_base + i``, video ``seed_base + VIDEO_SEED_OFFSET + i``, evaluation
``eval.seed_offset`` (100,000) upward. Splits: per task, the last
``max(1, round(val_fraction * n))`` episodes (by seed) form ``val``.
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from wam_jax.sim import metaworld as mw
from wam_jax.sim import workers

DEMOS_NAME = "metaworld_demos"
VIDEO_NAME = "metaworld_video"
VERSION = "1.0.0"
STEPS_AFTER_SUCCESS = 10
MAX_STEPS = 200
VIDEO_SEED_OFFSET = 50_000
# Added to the demo tasks in the video set: scenes the action-free data shows
# but the demos never do.
EXTRA_VIDEO_TASKS = ("window-open-v3", "button-press-v3")


def features(resolution: int, *, with_action: bool = True):
  """The episode ``tfds.features.FeaturesDict`` (RLDS layout), ``resolution`` px square images."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (workers skip it)
  step = {
      "observation": tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(resolution, resolution, 3), encoding_format="png"),
          "state": tfds.features.Tensor(shape=(mw.STATE_DIM,), dtype=np.float32),
          "env_state": tfds.features.Tensor(shape=(mw.ENV_STATE_DIM,), dtype=np.float32),
      }),
      "language_instruction": tfds.features.Text(),
      "reward": tfds.features.Scalar(dtype=np.float32),
      "discount": tfds.features.Scalar(dtype=np.float32),
      "is_first": tfds.features.Scalar(dtype=np.bool_),
      "is_last": tfds.features.Scalar(dtype=np.bool_),
      "is_terminal": tfds.features.Scalar(dtype=np.bool_),
  }
  if with_action:
    step["action"] = tfds.features.Tensor(shape=(mw.ACTION_DIM,), dtype=np.float32)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({
          "task": tfds.features.Text(),
          "seed": tfds.features.Scalar(dtype=np.int64),
          "success": tfds.features.Scalar(dtype=np.bool_),
          "episode_id": tfds.features.Scalar(dtype=np.int64),
      }),
  })


def expert_policy(task: str):
  from metaworld.policies import ENV_POLICY_MAP  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings("ignore", message="Constant.*may be too high")
  return ENV_POLICY_MAP[mw.check_task(task)]()


def rollout_expert(task: str, seed: int, *, resolution: int = 64, camera: str = mw.DEFAULT_CAMERA,
                   max_steps: int = MAX_STEPS, steps_after_success: int = STEPS_AFTER_SUCCESS) -> dict:
  """Runs the scripted expert from the start state of ``seed``.

  Returns a columnar episode (numpy arrays, leading axis T) with the metadata,
  ready for ``write_rlds_dataset``, plus "first_success" (step index or -1).
  Raises FrozenFramesError if the frames stop changing while the arm moves.
  """
  env = mw.cached_env(task, resolution, camera)
  policy = expert_policy(task)
  raw_obs = mw.reset(env, seed)
  obs_list, actions, rewards = [], [], []
  first_success = -1
  for t in range(max_steps):
    obs_list.append(mw.observe(env, raw_obs))
    action = np.clip(policy.get_action(raw_obs), -1.0, 1.0).astype(np.float32)
    raw_obs, reward, success = mw.step(env, action)
    actions.append(action)
    rewards.append(reward)
    if success and first_success < 0:
      first_success = t
    if first_success >= 0 and t >= first_success + steps_after_success:
      break
  images = np.stack([o["image_primary"] for o in obs_list])
  env_states = np.stack([o["env_state"] for o in obs_list])
  mw.check_frames_live(images, env_states)
  n = len(obs_list)
  success = first_success >= 0
  last = np.arange(n) == n - 1
  return {
      "steps": {
          "observation": {
              "image": images,
              "state": np.stack([o["proprio"] for o in obs_list]),
              "env_state": env_states,
          },
          "action": np.stack(actions),
          "language_instruction": [mw.instruction(task)] * n,
          "reward": np.asarray(rewards, np.float32),
          "discount": np.where(last & success, 0.0, 1.0).astype(np.float32),
          "is_first": np.arange(n) == 0,
          "is_last": last,
          "is_terminal": last & success,
      },
      "episode_metadata": {"task": task, "seed": seed, "success": success, "episode_id": -1},
      "first_success": first_success,
  }


@dataclasses.dataclass
class GenerationStats:
  episodes: int = 0
  failures: int = 0
  steps: int = 0
  seconds: float = 0.0
  failed_seeds: dict = dataclasses.field(default_factory=dict)

  @property
  def episodes_per_minute(self) -> float:
    return 60.0 * self.episodes / max(self.seconds, 1e-9)

  def summary(self) -> str:
    return (f"{self.episodes} episodes ({self.steps} steps) in {self.seconds:.1f} s = "
            f"{self.episodes_per_minute:.1f}/min; {self.failures} expert failures "
            f"{self.failed_seeds or ''}")


def collect_episodes(tasks: Sequence[str], episodes_per_task: int, *, seed_base: int = 0,
                     resolution: int = 64, camera: str = mw.DEFAULT_CAMERA, num_workers: int = 1,
                     max_steps: int = MAX_STEPS, max_failures_per_task: Optional[int] = None,
                     label: str = "demos", log: Callable[[str], None] = print,
                     on_task_done: Optional[Callable[[str, list], None]] = None):
  """Rolls out the expert until each task has ``episodes_per_task`` successes.

  Episodes run in parallel ('spawn' worker processes); a failed seed is replaced
  by the next unused one, so a task's episodes are always its first
  ``episodes_per_task`` successful seeds from ``seed_base``, whatever the
  completion order. Returns ({task: [episode sorted by seed]}, stats).
  Raises RuntimeError if a task fails more than ``max_failures_per_task`` times
  (default: episodes_per_task + 5).

  ``on_task_done(task, episodes)``, if given, is called as soon as a task has
  all its episodes (sorted by seed); they are then dropped from memory and the
  returned dict holds an empty list for that task (resumable generation saves
  each finished task this way).
  """
  tasks = mw.parse_tasks(tasks)
  max_failures = episodes_per_task + 5 if max_failures_per_task is None else max_failures_per_task
  stats = GenerationStats()
  done = {t: [] for t in tasks}
  failed = {t: 0 for t in tasks}
  next_seed = {t: seed_base + episodes_per_task for t in tasks}
  n_released = {t: 0 for t in tasks}  # episodes handed to on_task_done and dropped
  start = last_log = time.time()
  total = episodes_per_task * len(tasks)
  run = functools.partial(rollout_expert, resolution=resolution, camera=camera, max_steps=max_steps)
  log(f"[{label}] {len(tasks)} tasks x {episodes_per_task} episodes, {resolution}px, "
      f"{num_workers} worker(s)")
  # Jobs go in task order, at most ``in_flight`` at a time: tasks finish (and are saved through
  # ``on_task_done``) one after another, memory holds a task's episodes rather than all of them, and
  # the inline executor (which runs a job at ``submit``) reports progress as it goes.
  jobs = iter([(t, seed_base + i) for t in tasks for i in range(episodes_per_task)])
  in_flight = 2 * max(1, num_workers)
  with workers.executor(num_workers) as pool, workers.cancel_on_error(pool):
    pending = {}

    def refill():
      for task, seed in itertools.islice(jobs, max(0, in_flight - len(pending))):
        pending[pool.submit(run, task, seed)] = task

    refill()
    while pending:
      finished, _ = _wait_first(pending)
      for future in finished:
        task = pending.pop(future)
        episode = future.result()
        meta = episode["episode_metadata"]
        if meta["success"]:
          done[task].append(episode)
          stats.steps += len(episode["steps"]["is_first"])
          if on_task_done is not None and len(done[task]) == episodes_per_task:
            on_task_done(task, sorted(done[task], key=lambda e: e["episode_metadata"]["seed"]))
            n_released[task] = episodes_per_task
            done[task] = []
        else:
          failed[task] += 1
          stats.failed_seeds.setdefault(task, []).append(int(meta["seed"]))
          if failed[task] > max_failures:
            raise RuntimeError(
                f"the {task} expert failed {failed[task]} times within {max_steps} steps "
                f"(seeds {stats.failed_seeds[task]}); some experts need more steps "
                f"(push-back-v3 ~300): raise max_steps (MetaWorld allows {mw.MAX_ENV_STEPS})")
          pending[pool.submit(run, task, next_seed[task])] = task
          next_seed[task] += 1
      refill()
      now = time.time()
      n_done = sum(map(len, done.values())) + sum(n_released.values())
      if now - last_log > 5 or not pending:
        rate = 60 * n_done / max(now - start, 1e-9)
        log(f"[{label}] {n_done}/{total} episodes, {sum(failed.values())} failed, "
            f"{now - start:.0f} s, {rate:.1f} episodes/min")
        last_log = now
  stats.episodes = sum(map(len, done.values())) + sum(n_released.values())
  stats.failures = sum(failed.values())
  stats.seconds = time.time() - start
  return {t: sorted(eps, key=lambda e: e["episode_metadata"]["seed"]) for t, eps in done.items()}, stats


def _wait_first(pending):
  return concurrent.futures.wait(list(pending), return_when=concurrent.futures.FIRST_COMPLETED)


def split_episodes(episodes_by_task: dict, val_fraction: float = 0.1) -> dict:
  """{"train": [...], "val": [...]}: per task the last max(1, round(f*n)) go to val.

  Episode ids are assigned in the written order (train then val, task order, seed order).
  """
  splits = {"train": [], "val": []}
  for task, eps in episodes_by_task.items():
    if len(eps) < 2:
      raise ValueError(f"{task}: need at least 2 episodes per task for a train/val split")
    n_val = max(1, int(round(val_fraction * len(eps))))
    splits["train"] += eps[:-n_val]
    splits["val"] += eps[-n_val:]
  episode_id = 0
  for split in ("train", "val"):
    for ep in splits[split]:
      ep["episode_metadata"]["episode_id"] = episode_id
      episode_id += 1
  return splits


def _for_writing(episodes, with_action: bool):
  for ep in episodes:
    ep = dict(ep)
    ep.pop("first_success", None)
    if not with_action:
      ep["steps"] = {k: v for k, v in ep["steps"].items() if k != "action"}
    yield ep


def generate_dataset(out_dir, tasks, episodes_per_task: int, *, with_action: bool = True,
                     seed_base: int = 0, resolution: int = 64, camera: str = mw.DEFAULT_CAMERA,
                     num_workers: int = 1, val_fraction: float = 0.1, max_steps: int = MAX_STEPS,
                     overwrite: bool = False, log: Callable[[str], None] = print) -> GenerationStats:
  """Rolls out experts and writes one RLDS dataset to ``out_dir`` (…/<name>/1.0.0)."""
  label = pathlib.Path(out_dir).parent.name
  episodes, stats = collect_episodes(
      tasks, episodes_per_task, seed_base=seed_base, resolution=resolution, camera=camera,
      num_workers=num_workers, max_steps=max_steps, label=label, log=log)
  splits = split_episodes(episodes, val_fraction)
  from wam_jax.data import rlds_writer  # pylint: disable=g-import-not-at-top  (imports tfds)
  rlds_writer.write_rlds_dataset(
      out_dir, features(resolution, with_action=with_action),
      {k: _for_writing(v, with_action) for k, v in splits.items()}, overwrite=overwrite,
      description=f"MetaWorld v3 scripted-expert {'demos' if with_action else 'video'}, "
                  f"camera {camera}, {resolution}px, tasks {', '.join(episodes)}.")
  log(f"[{label}] wrote {out_dir}: train {len(splits['train'])}, val {len(splits['val'])}; "
      f"{stats.summary()}")
  return stats


def generate_demos(out_root, tasks, episodes_per_task: int, **kwargs) -> GenerationStats:
  """Writes ``<out_root>/metaworld_demos/1.0.0``; kwargs as for ``generate_dataset``."""
  return generate_dataset(pathlib.Path(out_root) / DEMOS_NAME / VERSION, tasks, episodes_per_task,
                          with_action=True, **kwargs)


def generate_video(out_root, tasks, episodes_per_task: int, *, seed_base: int = 0,
                   **kwargs) -> GenerationStats:
  """Writes the action-free ``<out_root>/metaworld_video/1.0.0`` from seeds disjoint from demos."""
  return generate_dataset(pathlib.Path(out_root) / VIDEO_NAME / VERSION, tasks, episodes_per_task,
                          with_action=False, seed_base=seed_base + VIDEO_SEED_OFFSET, **kwargs)


def default_video_tasks(demo_tasks) -> tuple[str, ...]:
  return mw.parse_tasks(tuple(demo_tasks) + EXTRA_VIDEO_TASKS)


def ensure_embedded_dataset(data_cfg, *, num_workers: Optional[int] = None,
                            log: Callable[[str], None] = print) -> pathlib.Path:
  """Generates the embedded MetaWorld sample on first use; returns the data root.

  Creates ``<root>/metaworld_demos/1.0.0`` and ``<root>/metaworld_video/1.0.0``
  from ``data_cfg.metaworld`` (tasks, episodes_per_task, video_episodes_per_task,
  resolution; optional extra_video_tasks, camera) when they are absent. Protocol
  datasets named in ``data.mixture`` (``wam_jax/ablations/protocol.py``) are
  generated from the protocol's own recipe instead. A mixture that names neither
  sample dataset (protocol datasets, a labelled pool, Bridge) does not generate
  the sample.
  """
  from wam_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (one data-root rule)
  from wam_jax.ablations import protocol  # pylint: disable=g-import-not-at-top
  root = pipeline.resolve_data_dir(data_cfg)
  num_workers = num_workers or min(2, os.cpu_count() or 1)
  from wam_jax.data import registry  # pylint: disable=g-import-not-at-top
  mixture = data_cfg.get("mixture", ((DEMOS_NAME, 1.0),))  # bare names and named mixtures too
  mixture_names = {item.name for item in registry.expand_mixture(mixture)}
  protocol_names = mixture_names & set(protocol.DATASET_NAMES)
  if protocol_names:  # The protocol's datasets (MT10 demos at N, the video pool).
    protocol.ensure_data(root, sorted(protocol_names), num_workers=num_workers, log=log)
  if not mixture_names & {DEMOS_NAME, VIDEO_NAME}:
    return root
  cfg = data_cfg.metaworld
  tasks = mw.parse_tasks(cfg.tasks)
  camera = cfg.get("camera", mw.DEFAULT_CAMERA)
  video_tasks = mw.parse_tasks(tuple(tasks) + tuple(cfg.get("extra_video_tasks", EXTRA_VIDEO_TASKS)))
  jobs = [(DEMOS_NAME, generate_demos, tasks, cfg.episodes_per_task),
          (VIDEO_NAME, generate_video, video_tasks, cfg.video_episodes_per_task)]
  for name, generate, job_tasks, n in jobs:
    out = root / name / VERSION
    recipe = {"tasks": list(job_tasks), "episodes_per_task": int(n), "resolution": int(cfg.resolution),
              "camera": camera}
    if (out / "dataset_info.json").exists():
      _check_recipe(out, recipe)
      continue
    log(f"[{name}] not found under {root.absolute()}: generating it (one-off)")
    try:
      generate(root, job_tasks, n, resolution=cfg.resolution, camera=camera,
               num_workers=num_workers, log=log)
    except OSError:
      if not (out / "dataset_info.json").exists():  # Not a concurrent generator winning the race.
        raise
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1))
  return root


RECIPE_FILE = "wam_recipe.json"


def _check_recipe(out: pathlib.Path, recipe: dict) -> None:
  """An embedded sample generated from other settings is an error, not silently reused."""
  path = out / RECIPE_FILE
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  diff = {k: (saved.get(k), v) for k, v in recipe.items() if saved.get(k) != v}
  if diff:
    fields = ", ".join(f"data.metaworld.{k}: dataset has {a!r}, config asks {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"{out} was generated with other settings ({fields}). Delete it to regenerate, "
                     f"or point data.data_dir at another directory.")
