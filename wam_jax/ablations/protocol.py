"""The MetaWorld protocol every family reports on (shared/PROTOCOL.md), as data.

Datasets (registry names in ``wam_jax/data/registry.py``; ``<root>`` is
``data.data_dir`` / ``$WAM_DATA_DIR`` / ``./wam_data``):

  metaworld_mt10_n{2,5,20}  MT10 scripted-expert demos. train: per task the first N successful
                            seeds from 0 (one generation of 20, so n2 ⊂ n5 ⊂ n20); val: 2 per
                            task from seeds 10,000.. (the same for every N: with N=2 there is
                            no room to hold demos out, and val losses stay comparable across N).
  metaworld_video_pool      action-free (no steps/action: dropped at generation time). train:
                            50 per MT10 task + 10 per other v3 task from seeds 50,000..; val:
                            2 per MT10 task from seeds 60,000.. (held-out frames for PSNR/SSIM).

Evaluation (``EVAL``): 20 episodes per MT10 task on seeds 100,000.., 200 steps, execute 4 of
each chunk of 8. Camera corner4 at 64 px.

Generation is resumable: episodes are collected per *part* (tasks x count x seed range), and
each (part, task) is saved under ``<root>/.protocol_parts/`` as soon as it has all its episodes;
a rerun skips what is saved. Datasets are then written from the parts through the atomic RLDS
writer (temporary directory renamed at the end): a half-written dataset is never read. One
process generates at a time (a lock file in ``<root>``); another one waits for it.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import pickle
import time
from typing import Callable, Iterable, Optional

VERSION = 1  # bump when a recipe below changes; datasets record it in wam_recipe.json.

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
        "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
        "window-close-v3")
DEMO_COUNTS = (2, 5, 20)          # labeled demos per task: "scarce", "few", "full".
SEEDS = dict(demos=0, demos_val=10_000, video=50_000, video_val=60_000, eval=100_000)
VAL_EPISODES_PER_TASK = 2
VIDEO_EPISODES_MT10 = 50
VIDEO_EPISODES_OTHER = 10
RESOLUTION = 64
CAMERA = "corner4"
TRAIN_SEEDS = (0, 1, 2)           # training seeds per cell.
EVAL = dict(tasks=MT10, episodes_per_task=20, seed_offset=SEEDS["eval"], max_steps=200,
            execute_steps=4, temporal_ensemble=False)
PARTS_DIR = ".protocol_parts"
RECIPE_FILE = "wam_recipe.json"


def demos_name(n: int) -> str:
  """Registry name of the MT10 demos at ``n`` per task."""
  if n not in DEMO_COUNTS:
    raise ValueError(f"n_demos={n} is not a protocol count; known: {DEMO_COUNTS}")
  return f"metaworld_mt10_n{n}"


VIDEO_NAME = "metaworld_video_pool"


def other_tasks() -> tuple[str, ...]:
  """The v3 tasks outside MT10 (video the policy never gets labels for)."""
  from wam_jax.sim import metaworld as mw  # pylint: disable=g-import-not-at-top  (MuJoCo)
  return tuple(t for t in mw.valid_tasks() if t not in MT10)


@dataclasses.dataclass(frozen=True)
class Part:
  """A unit of generation: the first ``episodes`` successful seeds from ``seed_base`` per task."""
  name: str
  tasks: tuple[str, ...]
  episodes: int
  seed_base: int
  max_steps: int
  with_action: bool
  max_failures: Optional[int] = None  # per task; None: episodes + 5.


def parts() -> dict[str, Part]:
  return {p.name: p for p in (
      Part("demos_train", MT10, max(DEMO_COUNTS), SEEDS["demos"], 200, True),
      Part("demos_val", MT10, VAL_EPISODES_PER_TASK, SEEDS["demos_val"], 200, True),
      # The video pool may use MetaWorld's full 500 steps: some experts need ~300 (push-back).
      Part("video_mt10", MT10, VIDEO_EPISODES_MT10, SEEDS["video"], 500, False),
      Part("video_other", other_tasks(), VIDEO_EPISODES_OTHER, SEEDS["video"], 500, False,
           max_failures=2 * VIDEO_EPISODES_OTHER + 10),
      Part("video_val", MT10, VAL_EPISODES_PER_TASK, SEEDS["video_val"], 500, False),
  )}


def datasets() -> dict[str, dict]:
  """Dataset name -> {split: [(part name, episodes per task or None for all)]}."""
  out = {demos_name(n): {"train": [("demos_train", n)], "val": [("demos_val", None)]}
         for n in DEMO_COUNTS}
  out[VIDEO_NAME] = {"train": [("video_mt10", None), ("video_other", None)],
                     "val": [("video_val", None)]}
  return out


DATASET_NAMES = tuple(f"metaworld_mt10_n{n}" for n in DEMO_COUNTS) + (VIDEO_NAME,)


def dataset_dir(root, name: str) -> pathlib.Path:
  return pathlib.Path(root) / name / "1.0.0"


def is_ready(root, name: str) -> bool:
  return (dataset_dir(root, name) / "dataset_info.json").exists()


def _chunk_path(root, part: str, task: str) -> pathlib.Path:
  return pathlib.Path(root) / PARTS_DIR / part / f"{task}.pkl"


def status(root) -> dict:
  """{"datasets": {name: ready}, "parts": {part: (tasks saved, tasks)}} (no MuJoCo needed for datasets)."""
  out = {"datasets": {n: is_ready(root, n) for n in DATASET_NAMES}, "parts": {}}
  if all(out["datasets"].values()):
    return out
  for part in parts().values():
    saved = sum(_chunk_path(root, part.name, t).exists() for t in part.tasks)
    out["parts"][part.name] = (saved, len(part.tasks))
  return out


@contextlib.contextmanager
def _generation_lock(root, log):
  root.mkdir(parents=True, exist_ok=True)
  with open(root / ".protocol.lock", "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log(f"[protocol] another process is generating under {root}; waiting for it")
      fcntl.flock(f, fcntl.LOCK_EX)
    yield


def ensure_data(root, names: Iterable[str] = DATASET_NAMES, *, num_workers: int = 2,
                keep_parts: bool = False, log: Callable[[str], None] = print) -> pathlib.Path:
  """Generates whichever protocol datasets in ``names`` are missing under ``root``; returns root.

  Resumable (finished (part, task) pairs are kept under ``<root>/.protocol_parts``) and atomic
  per dataset. The parts are deleted once every protocol dataset exists (unless ``keep_parts``).
  """
  root = pathlib.Path(root).absolute()
  names = tuple(names)
  for name in names:
    if name not in DATASET_NAMES:
      raise ValueError(f"{name!r} is not a protocol dataset; known: {DATASET_NAMES}")
  missing = [n for n in names if not is_ready(root, n)]
  for n in names:
    if n not in missing:
      _check_recipe(root, n)
  if not missing:
    return root
  with _generation_lock(root, log):
    missing = [n for n in missing if not is_ready(root, n)]  # another process may have made them
    recipes = datasets()
    all_parts = parts()
    needed = sorted({p for n in missing for split in recipes[n].values() for p, _ in split},
                    key=list(all_parts).index)
    start = time.time()
    for i, part in enumerate(needed):
      log(f"[protocol] part {i + 1}/{len(needed)} {part} (for {', '.join(missing)})")
      _ensure_part(root, all_parts[part], num_workers, log)
    for name in missing:
      _write_dataset(root, name, recipes[name], all_parts, log)
    log(f"[protocol] ready under {root} in {time.time() - start:.0f} s: {', '.join(missing)}")
    if not keep_parts and all(is_ready(root, n) for n in recipes):
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(root / PARTS_DIR, ignore_errors=True)
  return root


def _ensure_part(root: pathlib.Path, part: Part, num_workers: int, log) -> None:
  from wam_jax.sim import metaworld_data  # pylint: disable=g-import-not-at-top  (MuJoCo)
  todo = [t for t in part.tasks if not _chunk_path(root, part.name, t).exists()]
  if len(todo) < len(part.tasks):
    log(f"[{part.name}] {len(part.tasks) - len(todo)}/{len(part.tasks)} tasks already saved; "
        f"{len(todo)} to go")

  def save(task, episodes):
    path = _chunk_path(root, part.name, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ep in episodes:
      ep.pop("first_success", None)
      if not part.with_action:  # action-free video: actions dropped here, never stored.
        ep["steps"].pop("action", None)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
      pickle.dump(episodes, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    log(f"[{part.name}] saved {task}: {len(episodes)} episodes (seeds "
        f"{episodes[0]['episode_metadata']['seed']}..{episodes[-1]['episode_metadata']['seed']})")

  # A fresh worker pool per group of 10 tasks: workers keep one env per task alive.
  for g in range(0, len(todo), 10):
    group = todo[g:g + 10]
    _, stats = metaworld_data.collect_episodes(
        group, part.episodes, seed_base=part.seed_base, resolution=RESOLUTION, camera=CAMERA,
        num_workers=num_workers, max_steps=part.max_steps, max_failures_per_task=part.max_failures,
        label=part.name, log=log, on_task_done=save)
    log(f"[{part.name}] {stats.summary()}")


def _load_chunk(root, part: str, task: str) -> list:
  with open(_chunk_path(root, part, task), "rb") as f:
    return pickle.load(f)


def _split_episodes(root, sources, all_parts):
  """Yields the episodes of one split, task by task (one task's chunk in memory at a time)."""
  for part_name, n in sources:
    for task in all_parts[part_name].tasks:
      episodes = _load_chunk(root, part_name, task)
      yield from episodes[:n] if n is not None else episodes


def _write_dataset(root: pathlib.Path, name: str, recipe: dict, all_parts, log) -> None:
  from wam_jax.data import rlds_writer  # pylint: disable=g-import-not-at-top  (tfds)
  from wam_jax.sim import metaworld_data  # pylint: disable=g-import-not-at-top
  with_action = all_parts[recipe["train"][0][0]].with_action
  counter = iter(range(10**9))

  def numbered(episodes):
    for ep in episodes:
      yield {**ep, "episode_metadata": {**ep["episode_metadata"], "episode_id": next(counter)}}

  counts = {}
  def on_episode(split, i):
    counts[split] = i + 1

  out = dataset_dir(root, name)
  t0 = time.time()
  rlds_writer.write_rlds_dataset(
      out, metaworld_data.features(RESOLUTION, with_action=with_action),
      {split: numbered(_split_episodes(root, sources, all_parts)) for split, sources in recipe.items()},
      on_episode=on_episode, overwrite=True,
      description=f"wam_jax MetaWorld protocol v{VERSION}: {name} ({json.dumps(recipe)}), "
                  f"camera {CAMERA}, {RESOLUTION}px.")
  (out / RECIPE_FILE).write_text(json.dumps(_recipe_record(name, recipe, all_parts), indent=1))
  log(f"[protocol] wrote {out}: {counts} episodes in {time.time() - t0:.0f} s")


def _recipe_record(name, recipe, all_parts) -> dict:
  used = {p for split in recipe.values() for p, _ in split}
  return {"protocol_version": VERSION, "dataset": name, "splits": recipe,
          "parts": {p: dataclasses.asdict(all_parts[p]) for p in sorted(used)},
          "resolution": RESOLUTION, "camera": CAMERA}


def _check_recipe(root, name: str) -> None:
  path = dataset_dir(root, name) / RECIPE_FILE
  if path.exists():
    saved = json.loads(path.read_text()).get("protocol_version")
    if saved != VERSION:
      raise ValueError(f"{dataset_dir(root, name)} was generated by protocol v{saved}, this code "
                       f"is v{VERSION}: delete it to regenerate, or use another data_dir")
