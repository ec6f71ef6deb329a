r"""Run a sweep of the protocol's ablations (resumable): each cell x seed trained and evaluated
(or, for label / eval cells, labelled or evaluated from earlier cells' runs).

  python experiments/ablations.py --sweep=baseline_data_efficiency --workdir=runs/sweeps/baseline --dry_run
  python experiments/ablations.py --sweep=baseline_data_efficiency --workdir=runs/sweeps/baseline
  python experiments/report.py runs/sweeps/baseline --out=experiments/results/baseline_data_efficiency

--sweep is a name in experiments/sweeps/ or a path to a sweep .py file. Rerunning the same
command skips finished runs, resumes interrupted ones from their checkpoints and retries
failed ones. The protocol datasets a cell needs are generated first if missing.
See wam_jax/ablations/sweep.py for the layout of --workdir.
"""

import os
import re
import sys
import time
from typing import Optional

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from wam_jax.ablations import records  # noqa: E402
from wam_jax.ablations import sweep as sweep_lib  # noqa: E402

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep name (experiments/sweeps/<name>.py) or .py path.",
                             required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (one subdirectory per cell/seed).",
                               required=True)
_SEEDS = flags.DEFINE_list("seeds", None, "Training seeds (default: the sweep's, e.g. 0,1,2).")
_MAX_PARALLEL = flags.DEFINE_integer(
    "max_parallel", 2, "Runs at once. On 2 cores, 2: two trainers side by side train 1.15-1.18x more steps "
    "per second in all than one alone (BUILD_NOTES, 'Two runs at a time'), and one's evaluation overlaps "
    "the other's training.")
_CELLS = flags.DEFINE_list("cells", None, "Only these cells of the sweep (default: all).")
_REUSE = flags.DEFINE_bool(
    "reuse", True, "Link runs that a sibling sweep (another directory with a sweep.json beside "
    "--workdir) already finished with the same config and seed, instead of retraining them.")
_RECORDS = flags.DEFINE_bool(
    "records", True, "Skip runs finished on another machine, whose record is committed in "
    "experiments/results/<sweep>/records/v<version>/ (wam_jax/ablations/records.py), unless a run to do "
    "needs their checkpoint; a run (not --dry_run) first records here the runs another sweep recorded "
    "with the same config and seed and the same stages (sweep.link_identical_records).")
_PIN_CORES = flags.DEFINE_bool(
    "pin_cores", True, "While --max_parallel runs go side by side, each on its own share of the cores "
    "(every thread: from its start when the estimates give it a neighbour for most of its run, else "
    "once it has started up); a run going alone on all of them. On 2 cores two runs pinned one core "
    "each trained 8-12% more steps/s than unpinned, 9-13% more again when started pinned (BUILD_NOTES, "
    "'One core per run').")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan with estimated times; run nothing.")
_DEADLINE = flags.DEFINE_string(
    "deadline", "", "Start no run that would end after this time, by its estimate (the plan's, from "
    "finished runs and committed records): 'HH:MM' (the next time the local clock shows it: today, or "
    "tomorrow once it has passed), 'YYYY-MM-DDTHH:MM' (local time) or '+90m' / '+2h' from now. For a "
    "machine that goes away at a known time: its runs either finish or are not started.")


def parse_deadline(text: str, now: Optional[float] = None) -> Optional[float]:
  """--deadline as epoch seconds: '' -> None, '+90m' / '+2h' -> from now, 'HH:MM' -> the next time
  the local clock shows it (today, or tomorrow when it has passed: a session may cross midnight),
  'YYYY-MM-DDTHH:MM' -> that local time (what a queue of several sweeps passes each one: an 'HH:MM'
  resolved per step would roll over to tomorrow for the steps that start after it)."""
  now = time.time() if now is None else now
  if not text:
    return None
  m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})T(\d{1,2}):(\d{2})", text)
  if m:
    return time.mktime(tuple(int(g) for g in m.groups()) + (0, 0, 0, -1))
  m = re.fullmatch(r"\+(\d+(?:\.\d+)?)([mh])", text)
  if m:
    return now + float(m.group(1)) * (60 if m.group(2) == "m" else 3600)
  m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
  if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
    t = time.localtime(now)
    for day in (t.tm_mday, t.tm_mday + 1):  # mktime normalises day 32 into the next month
      at = time.mktime((t.tm_year, t.tm_mon, day, int(m.group(1)), int(m.group(2)), 0, 0, 0, -1))
      if at > now:
        return at
  raise ValueError(f"--deadline={text!r}: expected 'HH:MM', 'YYYY-MM-DDTHH:MM' "
                   "or '+<minutes>m' / '+<hours>h'")


def check(config):
  """The trainer's start-up checks (names, shapes, mesh), so a bad cell fails before any run."""
  import jax  # pylint: disable=g-import-not-at-top
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  trainer.check_config(config, jax.device_count())
  if config.eval.get("at_end", False):
    from wam_jax.sim import metaworld as mw  # pylint: disable=g-import-not-at-top
    mw.parse_tasks(tuple(config.eval.tasks) or tuple(config.data.metaworld.tasks))


def protocol_needs(job) -> set:
  """(data root, protocol dataset) pairs a job reads: a training run's mixture members, a label
  run's action-free video pool; an evaluation reads none."""
  from wam_jax.ablations import protocol  # pylint: disable=g-import-not-at-top
  from wam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if job.cell.kind == "label":
    return {(sweep_lib.data_root(job.cell), protocol.VIDEO_NAME)}
  if job.config is None:
    return set()
  root = pipeline.resolve_data_dir(job.config.data).absolute()
  return {(root, str(n)) for n, _ in job.config.data.mixture if str(n) in protocol.DATASET_NAMES}


def prepare(jobs):
  """Generates (once, resumably) the protocol datasets the runs read, then the embedded MetaWorld
  sample of runs with no ``data.data_dir``: here, on every core, rather than by each of two runs
  started side by side (both would generate it, each on its own pinned core)."""
  from wam_jax.ablations import protocol  # pylint: disable=g-import-not-at-top
  from wam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  by_root = {}
  for job in jobs:
    for root, name in protocol_needs(job):
      by_root.setdefault(root, set()).add(name)
  for root, names in by_root.items():
    protocol.ensure_data(root, sorted(names))
  for job in jobs:  # a no-op once the sample exists (its recipe is checked)
    data = job.config.data if job.cell.kind == "train" and job.config is not None else None
    if data is not None and not data.data_dir and pipeline.prepared_data_module(data) is None:
      from wam_jax.sim import metaworld_data  # pylint: disable=g-import-not-at-top  (MuJoCo: only then)
      metaworld_data.ensure_embedded_dataset(data)


def data_status(jobs) -> str:
  from wam_jax.ablations import protocol  # pylint: disable=g-import-not-at-top
  missing = {(str(root), name) for j in jobs if j.state != "invalid" for root, name in protocol_needs(j)
             if not protocol.is_ready(root, name)}
  if not missing:
    return "protocol data: ready"
  return ("protocol data to generate first (measured on 2 busy cores: demos 16 min, video pool 66 min; "
          "scripts/make_protocol_data.py): " + ", ".join(f"{r}/{n}" for r, n in sorted(missing)))


def main(argv):
  del argv
  try:
    sweep = sweep_lib.load_sweep(_SWEEP.value)
    seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else None
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _MAX_PARALLEL.value < 1:
    raise app.UsageError(f"--max_parallel={_MAX_PARALLEL.value} must be >= 1")
  try:
    deadline = parse_deadline(_DEADLINE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if deadline is not None:
    print(f"[sweep] deadline {time.strftime('%a %H:%M', time.localtime(deadline))}")
  rdir = records.records_dir(sweep.name, sweep.version)
  if _RECORDS.value and not _DRY_RUN.value:  # other sweeps' records of the same runs count here too
    sweep_lib.link_identical_records(sweep, seeds)
  recorded = records.recorded(rdir) if _RECORDS.value else {}
  record_walls = records.walls(rdir)
  if _DRY_RUN.value:
    try:
      jobs = sweep_lib.plan(sweep, _WORKDIR.value, seeds, check, _CELLS.value, reuse=_REUSE.value,
                            recorded=recorded, record_walls=record_walls)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    print(sweep_lib.format_plan(sweep, jobs, _MAX_PARALLEL.value))
    print(data_status(jobs))
    for j in jobs:
      if j.state not in ("done", "invalid", "recorded", "reusable"):
        print(f"first command: {' '.join(sweep_lib.command(j.cell, j.seed, j.dir))}")
        break
    return
  try:
    summary = sweep_lib.run(sweep, _WORKDIR.value, seeds=seeds, max_parallel=_MAX_PARALLEL.value,
                            cells=_CELLS.value, check=check, prepare=prepare,
                            reuse=_REUSE.value, recorded=recorded, record_walls=record_walls,
                            deadline=deadline, pin_cores=_PIN_CORES.value)
  except ValueError as e:  # unknown --cells, a workdir of another sweep/version, a changed cell
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(1 if summary["failed"] else 0)


if __name__ == "__main__":
  app.run(main)
