"""A resumable sweep: named, versioned cells, each run per seed in a subprocess.

A sweep file (``experiments/sweeps/<name>.py``) is data: it defines ``SWEEP = Sweep(...)``,
a list of ``Cell(name, config="experiments/configs/<file>.py:<preset>", overrides={...},
method=..., n_demos=...)``. Each (cell, seed) of the default kind, ``"train"``, runs

  python experiments/train.py --config=<file>:<preset> --workdir=<workdir>/<cell>/seed_<s> \\
      --config.seed=<s> --config.<field>=<value> ...

in its own subprocess (a crash stays in its cell; a killed cell resumes from its checkpoint,
which the trainer does by itself). Two other kinds run a script on earlier cells' runs of the
same seed instead of training (claim 2's script-based methods), ``overrides`` being its flags:

  kind="label", init_from=<IDM cell>: scripts/label_video.py --idm=<workdir>/<IDM cell>/seed_<s>
      --src=<the protocol's action-free video pool> --out=<workdir>/<cell>/seed_<s>/dataset
      (or no init_from and ``overrides={"expert": True}``: ``--expert``, the scripted-expert oracle)
      (the pool lies under ``overrides["data_dir"]``, '' as the trainer: $WAM_DATA_DIR or
      ./wam_data, and is generated first if missing). A train cell reads that dataset with
      ``data_from={<registry name in its mixture>: <label cell>}``: the harness adds
      ``--config.data.dataset_dirs=((<name>, <real path of that dataset>),)``, so the labels
      (per seed) are part of the trainer's run identity (config.json), as any data field.
  kind="eval", init_from=<IDM cell>, video_from=<video model cell>: experiments/eval.py
      --policy=plan_idm --idm_workdir=... --video_workdir=... --out=<workdir>/<cell>/seed_<s>/eval
      with the protocol's evaluation settings (``protocol.EVAL``). A policy row in the report
      like a trained one (no training columns).

A cell starts only once every run it uses (``init_from``, ``data_from``, ``video_from``: earlier
cells, same seed) is DONE; if one of them failed, it is reported failed without starting.

Stages shared by every seed: a train cell with ``stage_seed=s`` runs once, as ``<cell>/seed_<s>``
(with ``--config.seed=<s>``), whatever seeds the sweep runs, and the cells that use it use that
run at each of their seeds. The protocol reuses its pretraining stages (video model, latent actions)
across seeds and N: a stage trained per seed would cost one ~15-minute run per seed for nothing
the comparison asks for. Layout of ``<workdir>``::

  sweep.json                        the sweep's name, version and cells (the report reads it)
  <cell>/seed_<s>/                  the trainer's workdir: config.json, metrics.jsonl,
                                    checkpoints/, eval/results.json (+ md, videos); a label
                                    run: dataset/; an eval run: eval/ only
  <cell>/seed_<s>/command.sh        the exact command, to rerun one run by hand
  <cell>/seed_<s>/log.txt           its stdout + stderr, appended per attempt
  <cell>/seed_<s>/run.json          attempts (start, seconds, return code), wall time
  <cell>/seed_<s>/DONE              written last: the finished signal; finished runs are skipped
  <cell>/seed_<s>/FAILED            the last failure's return code and log tail (until it succeeds)

Extra evaluations: ``Sweep(extra_evals={"paraphrase": {"instructions": "paraphrase"}})`` evaluates
every finished trained run once more, as its training evaluated it but with these
``experiments/eval.py`` flags (``--as_trained``), into ``<cell>/seed_<s>/eval_<name>/`` (finished
when its results.json exists); ``experiments/report.py DIR --eval=<name>`` tabulates them.

Reuse: with ``reuse=True`` (``ablations.py --reuse``, the default there), a run that another sweep
next to ``<workdir>`` (a sibling directory with a sweep.json) already finished with the same config
and seed is linked (``<cell>/seed_<s>`` -> that run, a relative symlink) instead of retrained:
the VLA baseline's runs, say, are the reference row of every family's sweep. "Same" is the
trainer's resume identity (``trainer.config_changes``: model, data, optimizer, steps, seed...)
plus equal evaluation settings and the same ``train.init_from`` stage (compared as real paths, so
a linked stage counts as the same). A partial run the link replaces is moved aside, not deleted.

Records: a run finished on another machine (its record committed under
``experiments/results/<sweep>/records/v<version>/``, records.py) is 'recorded' in the plan and not
rerun, unless a job to run needs it here (``skip_recorded``: a stage's checkpoint is not in its record).

A run is finished when its subprocess exits 0 *and* it reached its last step *and* (if the
config evaluates at the end) ``eval/results.json`` exists: a SIGTERM'd trainer also exits 0,
but has not finished. A label run is finished when ``dataset/`` is complete (label_video.py
renames it in at the very end), an eval run when ``eval/results.json`` exists. A failed run is
reported and the others go on; the sweep exits 1 if any failed. A rerun of the same command
retries failed and unfinished runs only (label_video.py resumes a partial labelling itself).
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
from typing import Any, Callable, Mapping, Optional, Sequence

from wam_jax.ablations import protocol

REPO = pathlib.Path(__file__).resolve().parents[2]
SWEEPS_DIR = REPO / "experiments" / "sweeps"
TRAIN_PY = REPO / "experiments" / "train.py"
EVAL_PY = REPO / "experiments" / "eval.py"
LABEL_PY = REPO / "scripts" / "label_video.py"
LABELLED = "dataset/1.0.0"  # a label run's output dataset, RLDS layout <name>/<version>: <cell>/seed_<s>/dataset/1.0.0

KINDS = ("train", "label", "eval")
# Flags the harness sets for a label / eval cell (not overrides).
HARNESS_FLAGS = {"label": ("idm", "src", "out"), "eval": ("policy", "workdir", "idm_workdir", "video_workdir", "out")}

# Dry-run estimates when no finished run of a cell gives its own rate: the tiny VLA (bf16,
# batch 64) on 2 idle cores, ~0.27 s/step; closed-loop eval ~1 s per 100-step episode, so ~1.5 s
# on MT10 where about half the episodes run to the 200-step limit. Other engineers' jobs on the
# same 2 cores made both 10-15x slower (BUILD_NOTES.md, "Ablations").
DEFAULT_SECONDS_PER_EXAMPLE = 0.27 / 64
DEFAULT_SECONDS_PER_EVAL_EPISODE = 1.5
# Labelling, per pool episode (decode + IDM on every window of an ~87-step episode): 125 episodes/min
# measured with a training run on the same cores (session 11), so ~0.5 s; 0.6 s leaves a margin.
DEFAULT_SECONDS_PER_LABEL_EPISODE = 0.6
STARTUP_SECONDS = 60  # imports, data check, compile, policy load.
# --pin_cores: a run expected to go beside others for at least this share of its estimate starts on
# its own group of the cores (XLA sizes its thread pool to them), else on every core. Measured on 2
# cores, joint WAM step (BUILD_NOTES, "One core per run"): spawned on one core 1.55 s beside a
# neighbour, vs 1.75 s spawned on both and pinned later (its 2-thread pool sharing one core); alone
# on both cores 0.96 s spawned on both vs 1.49 s spawned on one. Break-even: 0.55 / 0.77 = 0.71.
SPAWN_PINNED_SHARE = 0.7


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of a sweep.

  Attributes:
    name: directory name, unique in the sweep ([A-Za-z0-9_.-]).
    config: "path/to/config.py:preset", relative to the repository root (or absolute); train
      cells only.
    overrides: train: {dotted config field: value}, e.g. {"model.head.name": "flow"}; label and
      eval: {flag of the kind's script: value} (label also ``data_dir``: the module doc).
    method: the line a cell belongs to in plots (e.g. "vla_l1").
    n_demos: labeled demos per task (the x axis of the data-efficiency plot); None if n/a.
    init_from: another cell of the sweep, listed earlier, whose run of the same seed this one
      starts from: a train cell restores it by parameter path (``--config.train.init_from``), a
      label or eval cell uses it as the inverse-dynamics model. This cell starts only once that
      run is DONE. A train cell whose config does not evaluate (``eval.at_end`` False, e.g.
      video pretraining) is a stage only: the report leaves it out.
    kind: "train" (experiments/train.py), "label" or "eval" (the module doc).
    data_from: train cells: {registry dataset of the mixture: an earlier label cell}: that
      dataset is read from the label run of the same seed (``--config.data.dataset_dirs``).
    video_from: eval cells: the earlier cell whose run of the same seed is the video model that plans.
    stage_seed: train cells: a stage trained once, at this seed, and used by the cells that need it
      at every seed (module doc); None (the default): one run per seed.
    dep_seeds: filled in by ``Sweep`` (not a sweep file's field): {cell this one uses: the seed of
      its one run} for the stage cells among them.
  """
  name: str
  config: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  method: str = ""
  n_demos: Optional[int] = None
  init_from: str = ""
  kind: str = "train"
  data_from: Mapping[str, str] = dataclasses.field(default_factory=dict)
  video_from: str = ""
  stage_seed: Optional[int] = None
  dep_seeds: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def seed_of(self, seed: int) -> int:
    """The seed of this cell's run in a sweep run at ``seed`` (its stage seed, if it has one)."""
    return seed if self.stage_seed is None else self.stage_seed

  def dep_seed(self, name: str, seed: int) -> int:
    """The seed of the run of cell ``name`` (one this cell uses) that this cell's run at ``seed`` uses."""
    return self.dep_seeds.get(name, seed)

  @property
  def needs(self) -> tuple[str, ...]:
    """The earlier cells whose runs (same seed) this one uses, so waits for."""
    return tuple(dict.fromkeys(c for c in (self.init_from, self.video_from, *self.data_from.values()) if c))

  def spec(self) -> dict:
    """JSON-normalized (tuples as lists), as stored in sweep.json and run.json."""
    spec = {"name": self.name, "config": self.config, "overrides": dict(self.overrides),
            "method": self.method or self.name, "n_demos": self.n_demos}
    # Only when set: sweep.json files written before these fields stay valid.
    for field, value in (("init_from", self.init_from), ("data_from", dict(self.data_from)),
                         ("video_from", self.video_from), ("stage_seed", self.stage_seed)):
      if value not in (None, "", {}):  # stage_seed 0 is set
        spec[field] = value
    if self.kind != "train":
      spec["kind"] = self.kind
    return json.loads(json.dumps(spec))


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  version: int
  cells: tuple[Cell, ...]
  seeds: tuple[int, ...] = (0, 1, 2)
  description: str = ""
  # {name: {experiments/eval.py flag: value}}: more evaluations of every finished run (module doc).
  extra_evals: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name in self.extra_evals:
      if not name or not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(f"sweep {self.name!r}: extra_evals name {name!r} must be [A-Za-z0-9_]+")
    names = [c.name for c in self.cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f"sweep {self.name!r}: duplicate cell names {dupes}")
    for c in self.cells:
      if not c.name or not all(ch.isalnum() or ch in "_.-" for ch in c.name):
        raise ValueError(f"sweep {self.name!r}: cell name {c.name!r} must be [A-Za-z0-9_.-]+")
    kinds = {c.name: c.kind for c in self.cells}
    stage_seeds = {c.name: c.stage_seed for c in self.cells if c.stage_seed is not None}
    for i, c in enumerate(self.cells):
      where = f"sweep {self.name!r}: cell {c.name!r}"
      if c.kind not in KINDS:
        raise ValueError(f"{where}: kind={c.kind!r}; known: {KINDS}")
      if c.stage_seed is not None and (c.kind != "train" or not isinstance(c.stage_seed, int) or c.stage_seed < 0):
        raise ValueError(f"{where}: stage_seed={c.stage_seed!r}: a train cell's seed (an int >= 0) or None")
      uses = [("init_from", c.init_from), ("video_from", c.video_from)] + [
          (f"data_from[{k!r}]", v) for k, v in c.data_from.items()]
      for field, dep in uses:
        if dep and dep not in names[:i]:
          raise ValueError(f"{where} has {field}={dep!r}, which is not a cell listed before it ({names[:i]})")
      if c.kind == "train":
        if not c.config:
          raise ValueError(f"{where}: a train cell needs a config")
        if c.video_from:
          raise ValueError(f"{where}: video_from is for eval cells")
        for name, label in c.data_from.items():
          if kinds[label] != "label":
            raise ValueError(f"{where}: data_from[{name!r}]={label!r} is a {kinds[label]} cell, not a label cell")
        for field, override in (("init_from", "train.init_from"), ("data_from", "data.dataset_dirs")):
          if getattr(c, field) and override in c.overrides:
            raise ValueError(f"{where} sets both {field} and the {override} override")
        continue
      expert = c.kind == "label" and bool(c.overrides.get("expert"))  # the oracle labeller: no IDM cell
      if expert and c.init_from:
        raise ValueError(f"{where}: a label cell labels with init_from's IDM or with the expert, not both")
      needed = ("init_from", "video_from") if c.kind == "eval" else () if expert else ("init_from",)
      for field in needed:
        if not getattr(c, field):
          hint = " (its IDM cell), or overrides={'expert': True} for the oracle labeller" if c.kind == "label" else ""
          raise ValueError(f"{where}: kind {c.kind!r} needs {field}{hint}")
      for field in ("config", "data_from", "video_from"):
        if getattr(c, field) and field not in needed:
          raise ValueError(f"{where}: kind {c.kind!r} takes no {field}")
      reserved = [k for k in c.overrides if k in HARNESS_FLAGS[c.kind]]
      if reserved:
        raise ValueError(f"{where}: overrides {reserved} are flags the harness sets for kind {c.kind!r}")
    object.__setattr__(self, "cells", tuple(
        dataclasses.replace(c, dep_seeds={d: stage_seeds[d] for d in c.needs if d in stage_seeds})
        for c in self.cells))

  def cell(self, name: str) -> Cell:
    """The cell called ``name``."""
    for c in self.cells:
      if c.name == name:
        return c
    raise KeyError(f"sweep {self.name!r} has no cell {name!r}")


def load_sweep(name_or_path: str) -> Sweep:
  """``SWEEP`` of ``experiments/sweeps/<name>.py``, or of a ``.py`` path."""
  path = pathlib.Path(name_or_path)
  if path.suffix != ".py":
    path = SWEEPS_DIR / f"{name_or_path}.py"
  if not path.exists():
    known = sorted(p.stem for p in SWEEPS_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise ValueError(f"--sweep={name_or_path}: no sweep file {path}; known sweeps: {known}")
  module = _import_file(path, f"_wam_sweep_{path.stem}")
  sweep = getattr(module, "SWEEP", None)
  if not isinstance(sweep, Sweep):
    raise ValueError(f"{path} must define SWEEP = wam_jax.ablations.sweep.Sweep(...)")
  return sweep


def _import_file(path: pathlib.Path, module_name: str):
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------
# Configs: loaded in-process to check cells before any run, and for estimates.
# ----------------------------------------------------------------------------
def config_path_and_preset(cell: Cell) -> tuple[pathlib.Path, str]:
  path, _, preset = cell.config.partition(":")
  path = pathlib.Path(path)
  return (path if path.is_absolute() else REPO / path), preset


def load_config(cell: Cell, seed: int = 0, workdir=None):
  """A train cell's resolved ConfigDict (preset + overrides + seed; with the sweep's ``workdir``,
  also what its dependencies set: ``dependency_overrides``), as its trainer will run it;
  ValueError naming a bad field."""
  path, preset = config_path_and_preset(cell)
  if not path.exists():
    raise ValueError(f"cell {cell.name!r}: config file {path} does not exist")
  module = _import_file(path, f"_wam_config_{path.stem}")
  config = module.get_config(preset) if preset else module.get_config()
  deps = dependency_overrides(cell, seed, workdir) if workdir is not None else {}
  for key, value in {**cell.overrides, **deps, "seed": seed}.items():
    node, parts = config, key.split(".")
    for part in parts[:-1]:
      if part not in node:
        raise ValueError(f"cell {cell.name!r}: override {key!r}: the config has no field {part!r}")
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"cell {cell.name!r}: override {key!r}: the config has no field {parts[-1]!r}")
    try:
      setattr(node, parts[-1], _as_config_value(value))
    except (TypeError, ValueError) as e:
      raise ValueError(f"cell {cell.name!r}: override {key}={value!r}: {e}") from None
  config.lock()
  return config


def _as_config_value(value):
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(value, tuple):
    return tuple(_as_config_value(v) for v in value)
  return value


def flag_value(value) -> str:
  """A Python override value as ml_collections' config flag parser reads it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(_as_config_value(value))
  return str(value)


def script_flag(value) -> str:
  """A value as an absl flag of a script reads it (lists comma-separated)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  return str(value)


def dependency_overrides(cell: Cell, seed: int, workdir) -> dict:
  """The config fields a train cell's dependencies set: ``train.init_from`` (its init_from
  cell's run of the same seed) and ``data.dataset_dirs`` (each data_from dataset read from that
  label run's output, as a real path: which labels a run trained on is part of its identity)."""
  workdir = pathlib.Path(workdir)
  out = {}
  if cell.init_from:
    out["train.init_from"] = str(dep_dir(workdir, cell, cell.init_from, seed))
  if cell.data_from:
    out["data.dataset_dirs"] = tuple((name, os.path.realpath(dep_dir(workdir, cell, label, seed) / LABELLED))
                                     for name, label in cell.data_from.items())
  return out


def data_root(cell: Cell) -> pathlib.Path:
  """A label cell's protocol data root: ``overrides["data_dir"]``, '' as the trainer's default
  ($WAM_DATA_DIR or ./wam_data), absolute."""
  from wam_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (grain: only when labelling)
  return pipeline.resolve_data_dir(types.SimpleNamespace(data_dir=cell.overrides.get("data_dir", ""))).absolute()


def protocol_eval_flags() -> dict:
  """experiments/eval.py flags of the protocol's evaluation (``protocol.EVAL``; one video per
  task, as ``experiments/configs/protocol.apply``)."""
  e = protocol.EVAL
  return {"tasks": e["tasks"], "episodes": e["episodes_per_task"], "seed_offset": e["seed_offset"],
          "max_steps": e["max_steps"], "execute_steps": e["execute_steps"],
          "temporal_ensemble": e["temporal_ensemble"], "num_videos": 1}


def command(cell: Cell, seed: int, run_dir: pathlib.Path) -> list[str]:
  """The subprocess of one run (by the cell's kind: module doc); dependencies are the runs of
  the same seed beside ``run_dir`` (``<workdir>/<cell>/seed_<s>``)."""
  workdir = pathlib.Path(run_dir).parent.parent
  uses = lambda name: str(dep_dir(workdir, cell, name, seed))
  if cell.kind == "label":
    src = protocol.dataset_dir(data_root(cell), protocol.VIDEO_NAME)
    labeller = [f"--idm={uses(cell.init_from)}"] if cell.init_from else []  # else overrides say --expert
    return ([sys.executable, str(LABEL_PY), *labeller, f"--src={src}", f"--out={pathlib.Path(run_dir) / LABELLED}"]
            + [f"--{k}={script_flag(v)}" for k, v in cell.overrides.items() if k != "data_dir"])
  if cell.kind == "eval":
    return ([sys.executable, str(EVAL_PY), "--policy=plan_idm", f"--idm_workdir={uses(cell.init_from)}",
             f"--video_workdir={uses(cell.video_from)}", f"--out={pathlib.Path(run_dir) / 'eval'}"]
            + [f"--{k}={script_flag(v)}" for k, v in {**protocol_eval_flags(), **cell.overrides}.items()])
  path, preset = config_path_and_preset(cell)
  config = f"{path}:{preset}" if preset else str(path)
  overrides = {**cell.overrides, **dependency_overrides(cell, seed, workdir)}
  return ([sys.executable, str(TRAIN_PY), f"--config={config}", f"--workdir={run_dir}",
           f"--config.seed={seed}"]
          + [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()])


def eval_command(run_dir: pathlib.Path, name: str, flags: Mapping[str, Any]) -> list[str]:
  """``experiments/eval.py`` re-evaluating a finished run as trained, with ``flags``, into eval_<name>."""
  return ([sys.executable, str(EVAL_PY), "--policy=checkpoint", f"--workdir={run_dir}", "--as_trained",
           f"--out={pathlib.Path(run_dir) / f'eval_{name}'}"]
          + [f"--{k}={flag_value(v)}" for k, v in flags.items()])


def eval_results(rdir: pathlib.Path, eval_name: str = "") -> pathlib.Path:
  """The results.json of a run's evaluation at the end of training ('') or of an extra one."""
  return pathlib.Path(rdir) / (f"eval_{eval_name}" if eval_name else "eval") / "results.json"


# ----------------------------------------------------------------------------
# Run state on disk.
# ----------------------------------------------------------------------------
def run_dir(workdir, cell: Cell, seed: int) -> pathlib.Path:
  """``<workdir>/<cell>/seed_<s>``: the cell's run in the sweep's seed ``seed`` (a stage's: its stage seed)."""
  return pathlib.Path(workdir) / cell.name / f"seed_{cell.seed_of(seed)}"


def dep_dir(workdir, cell: Cell, name: str, seed: int) -> pathlib.Path:
  """The run of cell ``name`` that ``cell``'s run at ``seed`` uses (same seed, or that stage's seed)."""
  return pathlib.Path(workdir) / name / f"seed_{cell.dep_seed(name, seed)}"


def _write_json(path: pathlib.Path, data) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(data, indent=1))
  os.replace(tmp, path)


def read_json(path: pathlib.Path, default=None):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return default


def is_done(rdir: pathlib.Path) -> bool:
  return (rdir / "DONE").exists()


def checkpoint_steps(rdir: pathlib.Path) -> list[int]:
  ckpt = rdir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _finished(rdir: pathlib.Path, config, kind: str = "train") -> tuple[bool, str]:
  """(finished, why not) after a subprocess exited 0 (``config``: a train run's)."""
  if kind == "label":  # label_video.py renames the dataset in once every split is labelled
    if not (rdir / LABELLED / "dataset_info.json").exists():
      return False, f"no complete {rdir / LABELLED} after labelling (stopped early?)"
    return True, ""
  if kind == "eval":
    if not eval_results(rdir).exists():
      return False, "no eval/results.json (the evaluation did not finish)"
    return True, ""
  steps = checkpoint_steps(rdir)
  if not steps or steps[-1] < config.train.steps:
    return False, f"stopped at step {steps[-1] if steps else 0}/{config.train.steps} (interrupted?)"
  if config.eval.get("at_end", False) and not (rdir / "eval" / "results.json").exists():
    return False, "no eval/results.json after training (evaluation did not run or failed)"
  return True, ""


def _running_pid(rdir: pathlib.Path, info_path: pathlib.Path) -> Optional[int]:
  """The pid of a live trainer (or evaluation) already working in ``rdir`` (left by a killed
  sweep), if any, from the attempts file ``info_path``."""
  info = read_json(info_path, {})
  pid = info.get("pid")
  if not pid:
    return None
  try:
    args = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
  except OSError:
    return None
  # Its own process: the trainer (or an extra evaluation) names the run as --workdir, a label or
  # eval run as the parent of its --out.
  return pid if any(a == f"--workdir={rdir}" or a.startswith(f"--out={rdir}/") for a in args) else None


# ----------------------------------------------------------------------------
# The plan and the dry run.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
  cell: Cell
  seed: int
  dir: pathlib.Path
  config: Any = None
  error: str = ""           # a config error: the job cannot run
  state: str = "pending"    # pending | done | partial | failed | running | invalid | reusable | recorded
  detail: str = ""
  estimate_s: float = 0.0
  reuse_from: Optional[pathlib.Path] = None  # a finished identical run of a sibling sweep
  eval_name: str = ""       # an extra evaluation of the finished run (Sweep.extra_evals), not training

  @property
  def label(self) -> str:
    return f"{self.cell.name}/seed_{self.seed}" + (f"/eval_{self.eval_name}" if self.eval_name else "")

  @property
  def runs_used(self) -> list[tuple[str, int]]:
    """(cell, seed) of the runs this job needs finished first: its own run (an extra evaluation),
    else the runs of the cells it restores or reads (``Cell.needs``)."""
    names = (self.cell.name,) if self.eval_name else self.cell.needs
    return [(d, self.cell.dep_seed(d, self.seed)) for d in names]

  @property
  def info_path(self) -> pathlib.Path:  # attempts and wall time (training: run.json)
    return self.dir / (f"eval_{self.eval_name}.run.json" if self.eval_name else "run.json")


def plan(sweep: Sweep, workdir, seeds: Optional[Sequence[int]] = None,
         check: Optional[Callable] = None, cells: Optional[Sequence[str]] = None,
         reuse: bool = False, recorded: Optional[Mapping] = None,
         record_walls: Optional[Mapping[str, Sequence[float]]] = None) -> list[Job]:
  """Jobs in run order (all cells at the first seed, then the next seed...), with their state.

  ``check(config)`` raises ValueError for a config that would fail at start-up (the trainer's
  semantic check); such jobs are 'invalid' and never started. ``cells``: only these cell names.
  ``reuse``: unfinished jobs that a sibling sweep already ran are 'reusable' (``find_reusable``).
  ``recorded``: {(cell, seed): evaluation names} of the runs finished elsewhere (records.py); an
  unfinished job among them is 'recorded' (not run) unless a job to run needs its run (``skip_recorded``).
  ``record_walls``: {cell: wall seconds of its recorded runs}, for the estimates (``estimate_seconds``).
  """
  seeds = tuple(sweep.seeds if seeds is None else seeds)
  known = [c.name for c in sweep.cells]
  unknown = [c for c in cells or () if c not in known]
  if unknown:
    raise ValueError(f"--cells: {unknown} not in sweep {sweep.name}; its cells: {known}")
  jobs, planned = [], set()
  reused = {}  # real path of a reusable job's run -> the finished run it will link to
  step_walls = record_walls_by_step(sweep, record_walls)
  for sweep_seed in seeds:
    for cell in sweep.cells:
      seed = cell.seed_of(sweep_seed)  # a stage shared by every seed: its one run, planned once
      if (cells and cell.name not in cells) or (cell.name, seed) in planned:
        continue
      planned.add((cell.name, seed))
      job = Job(cell, seed, run_dir(workdir, cell, seed).absolute())
      if cell.kind == "train":  # label and eval runs have no config: their script's flags
        try:
          job.config = load_config(cell, seed, job.dir.parent.parent)
          if check is not None:
            check(job.config)
        except ValueError as e:
          job.state, job.error = "invalid", str(e)
          jobs.append(job)
          continue
      job.state, job.detail = _state_of(job.dir)
      if job.state == "pending" and cell.needs:
        job.detail = f"after {', '.join(cell.needs)}"
      if reuse and cell.kind == "train" and job.state in ("pending", "partial", "failed"):
        job.reuse_from = find_reusable(job, workdir, reused)
        if job.reuse_from is not None:
          job.state, job.detail = "reusable", f"same run finished in {job.reuse_from}"
          reused[os.path.realpath(job.dir)] = str(job.reuse_from)
      job.estimate_s = estimate_seconds(job, workdir, record_walls, step_walls)
      jobs.append(job)
      if job.config is not None and job.config.eval.get("at_end", False):
        for name in sweep.extra_evals:
          ev = Job(cell, seed, job.dir, job.config, eval_name=name)
          ev.state = "done" if eval_results(ev.dir, name).exists() else (
              "running" if _running_pid(ev.dir, ev.info_path) else "pending")
          ev.estimate_s = 0.0 if ev.state == "done" else estimate_seconds(ev, workdir, record_walls, step_walls)
          jobs.append(ev)
  if recorded:
    skip_recorded(jobs, recorded)
  return jobs


def skip_recorded(jobs: Sequence[Job], recorded: Mapping) -> None:
  """Marks 'recorded' the unfinished jobs whose run (or extra evaluation) a committed record holds
  (records.py: finished on another machine), except those a job still to run needs: a pretraining
  stage's checkpoint is not in its record, so a later cell at a new seed retrains it here."""
  todo = lambda j: j.state in ("pending", "partial", "failed")
  was = {}
  for j in jobs:
    key = (j.cell.name, j.seed)  # a run's record; an extra evaluation: recorded in it
    if todo(j) and key in recorded and (not j.eval_name or j.eval_name in recorded[key]):
      was[id(j)] = j.state
      j.state, j.detail = "recorded", "finished elsewhere: its committed record"
  changed = True
  while changed:  # un-record what a job to run needs, until nothing changes
    changed = False
    needed = {}
    for j in jobs:
      if todo(j):
        for run in j.runs_used:
          needed.setdefault(run, j.label)
    for j in jobs:
      if j.state == "recorded" and not j.eval_name and (j.cell.name, j.seed) in needed:
        j.state = was[id(j)]
        j.detail = f"recorded, but {needed[j.cell.name, j.seed]} needs its run here"
        changed = True


def same_run(saved: dict, current: dict) -> bool:
  """Whether a run saved with config ``saved`` (its config.json) is the run ``current`` (both JSON
  dicts, ``train.init_from`` filled in) would train and evaluate."""
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top  (jax: only when reusing)
  if trainer.config_changes(saved, current) or saved.get("eval") != current.get("eval"):
    return False
  def stage(cfg):  # the run it was restored from, as a real path (a linked stage is the same)
    train = cfg.get("train", {})
    return (os.path.realpath(train["init_from"]) if train.get("init_from") else "",
            train.get("init_from_map") or "")
  return stage(saved) == stage(current)


def find_reusable(job: Job, workdir, reused: Optional[Mapping[str, str]] = None) -> Optional[pathlib.Path]:
  """A finished run (DONE, not itself a link) of the same config and seed as ``job`` (a train
  job: its config has its dependencies' fields, ``plan``) in another sweep's workdir beside
  ``workdir``, or None. ``reused``: runs of this plan that will be links (real path -> the run
  they link to); a job restored from one of them is compared as restored from its target, so a
  reused stage's later stages are reused too."""
  workdir = pathlib.Path(workdir).absolute()
  current = json.loads(job.config.to_json_best_effort())
  init_from = current.get("train", {}).get("init_from")
  if init_from and os.path.realpath(init_from) in (reused or {}):
    current["train"]["init_from"] = reused[os.path.realpath(init_from)]
  if not workdir.parent.is_dir():
    return None
  for root in sorted(workdir.parent.iterdir()):
    if root == workdir or not (root / "sweep.json").exists():
      continue
    for rdir in sorted(root.glob(f"*/seed_{job.seed}")):
      if rdir.is_symlink() or not is_done(rdir):
        continue
      saved = read_json(rdir / "config.json")
      if saved and same_run(saved, current):
        return rdir
  return None


def shipped_sweeps() -> list[Sweep]:
  """Every sweep in ``experiments/sweeps/`` (its current version)."""
  return [load_sweep(str(p)) for p in sorted(SWEEPS_DIR.glob("*.py")) if not p.stem.startswith("_")]


def link_identical_records(sweep: Sweep, seeds: Optional[Sequence[int]] = None, *, root=None,
                           others: Optional[Sequence[Sweep]] = None, log=print) -> list[str]:
  """Records, for ``sweep``, the runs that another sweep recorded with the same config and seed.

  Records are kept per sweep, and sweeps repeat runs (claim 3's ``joint_wam_n20`` is the families'
  ``joint_wam``; claim 1's ``video_wam_n20``, restored from the same video pretraining, is the
  families' ``video_wam``): for every train cell of ``sweep`` and each seed with no record of its
  own, a record of another sweep's current version (``others``, default the shipped sweeps) of the
  same run (``_same_chain``: the same config and seed, ``same_run``, and the same chain of
  ``init_from`` stages, each the same config at the same seed) is copied into ``sweep``'s records,
  naming the original (``linked_from``). Cells that read labelled data (``data_from``) are not
  linked. Linked records are not linked again. Returns the labels "<cell>/seed_<s>" it wrote.
  """
  from wam_jax.ablations import records  # pylint: disable=g-import-not-at-top
  seeds = tuple(sweep.seeds if seeds is None else seeds)
  rdir = records.records_dir(sweep.name, sweep.version, root)
  own = records.recorded(rdir)
  wanted = {(c.name, c.seed_of(s)): (c, c.seed_of(s)) for c in sweep.cells if _linkable(sweep, c)
            for s in seeds if (c.name, c.seed_of(s)) not in own}  # a stage cell: one run for every seed
  if not wanted:
    return []
  configs = {}

  def config_of(sw: Sweep, cell: Cell, seed: int) -> dict:
    key = (sw.name, cell.name, seed)
    if key not in configs:
      configs[key] = json.loads(load_config(cell, seed).to_json_best_effort())
    return configs[key]

  candidates = []  # (other sweep, its cell, seed, record)
  for other in (shipped_sweeps() if others is None else others):
    odir = records.records_dir(other.name, other.version, root)
    if other.name == sweep.name or not odir.is_dir():
      continue
    for cell in other.cells:
      if not _linkable(other, cell):
        continue
      for p in sorted((odir / cell.name).glob("seed_*.json")):
        rec = json.loads(p.read_text())
        if not rec.get("linked_from"):
          candidates.append((other, cell, int(p.stem[5:]), rec))
  linked = []
  for cell, seed in wanted.values():
    for other, ocell, oseed, rec in candidates:
      if oseed != seed or not _same_chain((sweep, cell, seed), (other, ocell, oseed), config_of):
        continue
      origin = f"{other.name} v{other.version} {ocell.name}/seed_{oseed}"
      if records.read_meta(rdir) is None:
        records.write_meta(rdir, sweep_meta(sweep))
      records.write(rdir, {**rec, "sweep": sweep.name, "version": sweep.version, "cell": cell.name,
                           "linked_from": origin,
                           "source": f"the same run as {origin} (identical config and seed"
                                     + (", restored from identical stages" if cell.init_from else "")
                                     + "); " + rec.get("source", "recorded there")})
      linked.append(f"{cell.name}/seed_{seed}")
      log(f"[sweep] recorded {cell.name}/seed_{seed}: the same run as {origin}")
      break
  return linked


def _linkable(sweep: Sweep, cell: Cell) -> bool:
  """A train cell whose run is defined by configs alone: its only dependency, if any, is an
  ``init_from`` train cell that is itself linkable (labelled data is not compared)."""
  if cell.kind != "train" or cell.needs not in ((), (cell.init_from,)):
    return False
  return not cell.init_from or _linkable(sweep, sweep.cell(cell.init_from))


def _same_chain(a: tuple, b: tuple, config_of) -> bool:
  """Whether (sweep, cell, seed) ``a`` and ``b`` train the same run: the same config (``same_run``,
  with the stage each restores compared by identity instead of by path) and the same stage chain."""
  (sa, ca, seed_a), (sb, cb, seed_b) = a, b
  if seed_a != seed_b or bool(ca.init_from) != bool(cb.init_from):
    return False
  if not same_run(config_of(sa, ca, seed_a), config_of(sb, cb, seed_b)):
    return False
  if not ca.init_from:
    return True
  return _same_chain((sa, sa.cell(ca.init_from), ca.dep_seed(ca.init_from, seed_a)),
                     (sb, sb.cell(cb.init_from), cb.dep_seed(cb.init_from, seed_b)), config_of)


def link_reused(job: Job, log) -> None:
  """Points ``job.dir`` at ``job.reuse_from`` (relative symlink); a partial run there is moved to
  ``.seed_<s>.replaced-<time>`` beside it (hidden from the report's ``seed_*``)."""
  if job.dir.is_symlink() or job.dir.exists():
    aside = job.dir.with_name(f".{job.dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    job.dir.rename(aside)
    log(f"[sweep] moved the unfinished {job.cell.name}/seed_{job.seed} aside to {aside}")
  job.dir.parent.mkdir(parents=True, exist_ok=True)
  job.dir.symlink_to(os.path.relpath(job.reuse_from, job.dir.parent), target_is_directory=True)
  job.state = "done"
  log(f"[sweep] reuse {job.cell.name} seed {job.seed}: the same run finished in {job.reuse_from}")


def _state_of(rdir: pathlib.Path) -> tuple[str, str]:
  if is_done(rdir):
    return "done", ""
  pid = _running_pid(rdir, rdir / "run.json")
  if pid:
    return "running", f"pid {pid}"
  if (rdir / "FAILED").exists():
    return "failed", (read_json(rdir / "FAILED", {}) or {}).get("summary", "")
  steps = checkpoint_steps(rdir)
  if steps:
    return "partial", f"resumes at step {steps[-1]}"
  return "pending", ""


def record_walls_by_step(sweep: Sweep, record_walls: Optional[Mapping[str, Sequence[float]]]) -> dict:
  """{``cost_key``: [(wall seconds, train steps) of each recorded run]} over the sweep's train cells
  that have records: what a run of that step took on the machines that finished it."""
  out = {}
  for cell in sweep.cells:
    walls = (record_walls or {}).get(cell.name)
    if cell.kind != "train" or not walls:
      continue
    try:
      cfg = load_config(cell, cell.seed_of(0))
    except ValueError:
      continue
    key = cost_key(json.loads(cfg.to_json_best_effort()))
    out.setdefault(key, []).extend((w, cfg.train.steps) for w in walls)
  return out


def estimate_seconds(job: Job, workdir, record_walls: Optional[Mapping[str, Sequence[float]]] = None,
                     step_walls: Optional[Mapping[str, Sequence[tuple]]] = None) -> float:
  """Remaining wall time of a job: the rates of the cell's finished seeds, else the wall time of its
  committed records (``record_walls``: {cell: wall seconds of its recorded runs}, finished on other
  machines), else the rates of a finished run of the same step in a sweep beside it (``cost_key``),
  else the records of a cell of this sweep with the same step, per step (``step_walls``:
  ``record_walls_by_step``), else defaults. Measured rates carry the load their runs had (a sweep
  two at a time: about half a core's worth of the machine each). Session 18: without the
  same-step records a joint WAM N=5 run was priced by the defaults (~15 min, where its recorded N=20
  twin took 63) and started 52 minutes before a deadline it could not meet."""
  if job.state in ("done", "reusable", "recorded"):
    return 0.0
  recorded = (record_walls or {}).get(job.cell.name, [])  # records.walls: finite, positive
  if job.cell.kind != "train":  # a finished seed's wall time, else its records', else defaults
    walls = [(read_json(d / "run.json", {}) or {}).get("wall_seconds")
             for d in (pathlib.Path(workdir) / job.cell.name).glob("seed_*") if is_done(d)]
    walls = [w for w in walls if w] or recorded
    if walls:
      return sum(walls) / len(walls)
    if job.cell.kind == "label":
      return STARTUP_SECONDS + DEFAULT_SECONDS_PER_LABEL_EPISODE * _pool_episodes(data_root(job.cell))
    flags = {**protocol_eval_flags(), **job.cell.overrides}
    tasks = flags["tasks"].split(",") if isinstance(flags["tasks"], str) else flags["tasks"]
    return STARTUP_SECONDS + DEFAULT_SECONDS_PER_EVAL_EPISODE * len(tasks) * int(flags["episodes"])
  cfg = job.config
  per_step, per_episode = _measured_rates(pathlib.Path(workdir) / job.cell.name)
  if not (per_step or per_episode) and recorded and not job.eval_name:
    # A record's wall time is the whole run (training + its evaluation): scale it by the steps left.
    done = (checkpoint_steps(job.dir)[-1:] or [0])[0]
    return STARTUP_SECONDS + sum(recorded) / len(recorded) * max(cfg.train.steps - done, 0) / cfg.train.steps
  if not (per_step and per_episode):  # no finished seed of this cell: a run with the same step elsewhere
    same_step, same_episode = _rates_of_the_same_step(cfg, workdir)
    per_step, per_episode = per_step or same_step, per_episode or same_episode
  if not (per_step or per_episode) and step_walls and not job.eval_name:  # whole runs, evaluation included
    same = step_walls.get(cost_key(json.loads(cfg.to_json_best_effort())), [])
    if same:
      done = (checkpoint_steps(job.dir)[-1:] or [0])[0]
      return STARTUP_SECONDS + sum(w / n for w, n in same) / len(same) * max(cfg.train.steps - done, 0)
  per_step = per_step or DEFAULT_SECONDS_PER_EXAMPLE * cfg.train.batch_size
  per_episode = per_episode or DEFAULT_SECONDS_PER_EVAL_EPISODE
  steps_done = checkpoint_steps(job.dir)[-1:] or [0]
  seconds = STARTUP_SECONDS + (0 if job.eval_name else per_step * max(cfg.train.steps - steps_done[0], 0))
  if cfg.eval.get("at_end", False):
    n_tasks = len(cfg.eval.tasks) or len(cfg.data.metaworld.tasks)
    seconds += per_episode * n_tasks * cfg.eval.episodes_per_task
  return seconds


def _pool_episodes(root: pathlib.Path) -> int:
  """Episodes of the protocol's video pool under ``root`` (its recipe's count if not generated yet)."""
  info = read_json(protocol.dataset_dir(root, protocol.VIDEO_NAME) / "dataset_info.json")
  if info:
    return sum(int(n) for s in info.get("splits", []) for n in s.get("shardLengths", []))
  other_tasks = 40  # MetaWorld v3's 50 tasks minus MT10 (protocol.other_tasks() needs MuJoCo)
  return ((protocol.VIDEO_EPISODES_MT10 + protocol.VAL_EPISODES_PER_TASK) * len(protocol.MT10)
          + protocol.VIDEO_EPISODES_OTHER * other_tasks)


def _measured_rates(cell_dir: pathlib.Path) -> tuple[float, float]:
  """(seconds/step, seconds/eval episode) from this cell's finished seeds, 0 if none."""
  step_s, episode_s = [], []
  for rdir in sorted(cell_dir.glob("seed_*")):
    if not is_done(rdir):
      continue
    rates = [r["train/steps_per_s"] for r in read_jsonl(rdir / "metrics.jsonl") if "train/steps_per_s" in r]
    if rates:
      step_s.append(1.0 / max(sorted(rates)[len(rates) // 2], 1e-9))
    results = read_json(rdir / "eval" / "results.json")
    if results and results.get("episodes"):
      episode_s.append(results["seconds"] / len(results["episodes"]))
  mean = lambda x: sum(x) / len(x) if x else 0.0
  return mean(step_s), mean(episode_s)


# The config fields that decide what one train step and one evaluation episode cost: two runs that
# agree on them compile the same step and query the same policy (seed, demos, stage and schedule
# differ freely).
COST_FIELDS = ("model", "train.batch_size", "train.compute_dtype", "train.grad_accum_steps", "data.history",
               "data.num_future", "data.image_size", "data.cameras", "data.action_horizon",
               "data.max_text_len", "eval")


# Loss weights cost nothing per step but whether they are 0 (a zero weight can drop a whole
# segment, e.g. the joint WAM's future frames); the video loss's normalization costs nothing.
WEIGHT_FIELDS = ("model.video_weight", "model.action_weight", "model.video.loss_weight")
FREE_FIELDS = ("model.video.loss_norm",)


def cost_key(config: Mapping) -> str:
  """``COST_FIELDS`` of a config (a JSON dict or ConfigDict) as one comparable string; loss
  weights only as zero / nonzero (``WEIGHT_FIELDS``), ``FREE_FIELDS`` not at all."""
  def get(path):
    node = config
    for part in path.split("."):
      node = node.get(part) if hasattr(node, "get") else None
    return node.to_dict() if hasattr(node, "to_dict") else node
  key = json.loads(json.dumps({f: get(f) for f in COST_FIELDS}, default=str))  # a copy: never the caller's
  for path in WEIGHT_FIELDS + FREE_FIELDS:
    head, *rest = path.split(".")
    node = key.get(head)
    for part in rest[:-1]:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and rest[-1] in node:
      node[rest[-1]] = (node[rest[-1]] > 0) if path in WEIGHT_FIELDS else None
  return json.dumps(key, sort_keys=True, default=str)


def _rates_of_the_same_step(cfg, workdir) -> tuple[float, float]:
  """(seconds/step, seconds/eval episode) measured by finished runs of any cell of any sweep beside
  ``workdir`` (this one included) whose ``cost_key`` equals ``cfg``'s: e.g. the N=2 cell of a family
  priced by its finished N=20 run in the families sweep. (0, 0) if there is none."""
  root = pathlib.Path(workdir).absolute().parent
  if not root.is_dir():
    return 0.0, 0.0
  key = cost_key(json.loads(cfg.to_json_best_effort()))
  cells = {rdir.parent.resolve() for rdir in root.glob("*/*/seed_*")
           if (rdir.parent.parent / "sweep.json").exists() and is_done(rdir)}
  matches = []
  for cell_dir in sorted(cells):
    saved = next((read_json(r / "config.json") for r in sorted(cell_dir.glob("seed_*")) if is_done(r)), None)
    if saved and cost_key(saved) == key:
      matches.append(_measured_rates(cell_dir))
  step_s = [s for s, _ in matches if s]
  episode_s = [e for _, e in matches if e]
  mean = lambda x: sum(x) / len(x) if x else 0.0
  return mean(step_s), mean(episode_s)


def read_jsonl(path: pathlib.Path) -> list[dict]:
  rows = []
  if pathlib.Path(path).exists():
    for line in pathlib.Path(path).read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut by a kill
        pass
  return rows


def format_plan(sweep: Sweep, jobs: Sequence[Job], max_parallel: int) -> str:
  evals = sum(bool(j.eval_name) for j in jobs)
  lines = [f"sweep {sweep.name} v{sweep.version}: {len(sweep.cells)} cells x seeds "
           f"{sorted({j.seed for j in jobs})} = {len(jobs) - evals} runs"
           + (f" + {evals} extra evaluations ({', '.join(sweep.extra_evals)})" if evals else "")]
  for j in jobs:
    what = j.error or j.detail
    est = f"~{_fmt(j.estimate_s)}" if j.state not in ("done", "invalid", "running", "reusable", "recorded") else ""
    name = j.cell.name + (f" +eval_{j.eval_name}" if j.eval_name else
                          f" [{j.cell.kind}]" if j.cell.kind != "train" else "")
    lines.append(f"  {name:28s} seed {j.seed}  {j.state:8s} {est:>10s}  {what}")
  todo = [j for j in jobs if j.state in ("pending", "partial", "failed")]
  total = sum(j.estimate_s for j in todo)
  lines.append(f"{len(todo)} runs to do: ~{_fmt(total)} one after another, at the rates finished runs of the "
               "cell measured (here, else in its committed records), else of the same step, else defaults"
               + (f" (--max_parallel={max_parallel} shares the same cores: on 2 cores two trainers "
                  "side by side measured 1.15-1.18x the steps/s of one)" if max_parallel > 1 else ""))
  return "\n".join(lines)


def _fmt(seconds: float) -> str:
  m = int(round(seconds / 60))
  return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m"


# ----------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------
class _Running:
  def __init__(self, job: Job, proc: subprocess.Popen, log_file, info: dict, cpus: Optional[frozenset] = None):
    self.job, self.proc, self.log_file, self.info = job, proc, log_file, info
    self.start = time.time()
    self.cpus = cpus  # its group of the cores (from spawn, or once _balance pins it); None: all


def core_groups(max_parallel: int, cores: Optional[Sequence[int]] = None) -> list[frozenset]:
  """The cores this process may use (``os.sched_getaffinity``) split into ``max_parallel`` disjoint
  groups of consecutive cores, one per concurrent run ([] when there are fewer cores than runs)."""
  if cores is None and not hasattr(os, "sched_getaffinity"):  # not Linux: no pinning
    return []
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if max_parallel < 2 or len(cores) < max_parallel:
    return []
  size, extra = divmod(len(cores), max_parallel)
  groups, i = [], 0
  for g in range(max_parallel):
    n = size + (g < extra)
    groups.append(frozenset(cores[i:i + n]))
    i += n
  return groups


def _set_affinity(pid: int, cpus: Sequence[int]) -> None:
  """Moves every thread of process ``pid`` and of its descendants onto ``cpus`` (Linux: a thread's
  mask is its own, and threads and processes started later inherit their creator's). A process that
  exits meanwhile is skipped."""
  try:
    tids = os.listdir(f"/proc/{pid}/task")
  except OSError:
    return
  for tid in tids:
    try:
      os.sched_setaffinity(int(tid), cpus)
      children = pathlib.Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
    except OSError:
      continue
    for child in children:
      _set_affinity(int(child), cpus)


def _free_groups(groups: list, running: Sequence["_Running"]) -> list:
  """The groups of the cores no running run is pinned to."""
  return [g for g in groups if not any(r.cpus == g for r in running)]


def _spawn_group(job: Job, queue: Sequence[Job], running: Sequence["_Running"], groups: list,
                 max_parallel: int) -> Optional[frozenset]:
  """``--pin_cores``: the group of the cores ``job`` starts on, or None (every core). XLA sizes a
  process's thread pool to the cores it may use at start-up, once: a run spawned on one group is
  fastest beside a neighbour and cannot use the cores a finished neighbour frees; a run spawned on
  every core is fastest alone, and slower once pinned beside a neighbour. So a run starts on a free
  group when, by the estimates, the other slots have work (the running runs' remaining time and the
  queued jobs') for at least ``SPAWN_PINNED_SHARE`` of its own run. Needs ``taskset`` (util-linux):
  the sweep process never forks a child itself (``_start``)."""
  free = _free_groups(groups, running)
  if not free or shutil.which("taskset") is None:
    return None
  now = time.time()
  beside = (sum(max(r.job.estimate_s - (now - r.start), 0.0) for r in running)
            + sum(j.estimate_s for j in queue)) / max(max_parallel - 1, 1)
  return free[0] if beside >= SPAWN_PINNED_SHARE * job.estimate_s else None


def _balance(running: list, groups: list, settle_seconds: float, log) -> None:
  """``--pin_cores``: with two or more runs going, each settled run (started ``settle_seconds`` ago)
  on its own group of the cores; a run going alone on every core. A run spawned on every core
  (``_spawn_group``) has a thread pool for all of them; pinning it once settled is safe (its pool's
  threads move with it) and faster than leaving it to share the cores (BUILD_NOTES, "One core per
  run"). A run spawned on its group keeps a one-group pool: alone, it gets the other cores for its
  other threads (input pipeline, simulator)."""
  if not groups:
    return
  free = _free_groups(groups, running)
  for r in running:
    if len(running) < 2:
      want = None
    elif r.cpus is None and free and time.time() - r.start >= settle_seconds:
      want = free.pop(0)
    else:
      continue
    if want != r.cpus:
      r.cpus = want
      cores = sorted(want or frozenset().union(*groups))
      _set_affinity(r.proc.pid, cores)
      log(f"[sweep] {r.job.label} on cores {','.join(map(str, cores))}")


def code_version() -> str:
  """The repository's commit, "+dirty" if tracked files differ from it ("" outside a git checkout).
  Recorded per attempt: a long run reads modules lazily, so a change made while it runs can land
  in the same process as the old code (session 7: an evaluation failed that way)."""
  try:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                         timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""
  return sha + ("+dirty" if sha and dirty else "")


def _start(job: Job, env: Mapping[str, str], log, sweep: Sweep, cpus: Optional[frozenset] = None) -> _Running:
  """Starts ``job``'s subprocess on ``cpus`` (through ``taskset``: no fork of this multithreaded
  process), or on every core (None: ``_balance`` pins it once it has settled)."""
  job.dir.mkdir(parents=True, exist_ok=True)
  if job.eval_name:
    cmd = eval_command(job.dir, job.eval_name, sweep.extra_evals[job.eval_name])
  else:
    (job.dir / "FAILED").unlink(missing_ok=True)
    cmd = command(job.cell, job.seed, job.dir)
    (job.dir / "command.sh").write_text(" ".join(shlex.quote(c) for c in cmd) + "\n")
  log_file = open(job.dir / "log.txt", "a", buffering=1)
  log_file.write(f"\n===== attempt at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
  cores = ",".join(map(str, sorted(cpus or ())))
  spawn = ["taskset", "-c", cores, *cmd] if cpus else cmd  # taskset execs cmd: the pid is the run's
  proc = subprocess.Popen(spawn, stdout=log_file, stderr=subprocess.STDOUT, env=dict(env), cwd=os.getcwd())
  info = read_json(job.info_path, {}) or {}
  info.update(cell=job.cell.spec(), seed=job.seed, command=cmd, pid=proc.pid)
  info.setdefault("attempts", []).append({"start": time.time(), "seconds": 0.0, "returncode": None,
                                          "code": code_version(), "spawned_on": cores or "all"})
  _write_json(job.info_path, info)
  log(f"[sweep] start {job.label} " + (f"on cores {cores} " if cpus else "")
      + f"(pid {proc.pid}; log {job.dir / 'log.txt'})")
  return _Running(job, proc, log_file, info, cpus)


def _tick(r: _Running) -> None:
  """Records the wall time so far (a SIGKILL'd sweep still leaves the attempt's time)."""
  r.info["attempts"][-1]["seconds"] = time.time() - r.start
  r.info["wall_seconds"] = sum(a["seconds"] for a in r.info["attempts"])
  _write_json(r.job.info_path, r.info)


def _finish(r: _Running, log, *, stopped: bool = False) -> bool:
  """Records the attempt; writes DONE if the run finished, else FAILED (not when ``stopped``)."""
  rc = r.proc.returncode
  r.log_file.close()
  r.info["attempts"][-1]["returncode"] = rc
  r.info["pid"] = None
  _tick(r)
  job = r.job
  if job.eval_name:
    results = eval_results(job.dir, job.eval_name)
    if rc == 0 and results.exists():
      log(f"[sweep] done  {job.label}: success "
          f"{100 * read_json(results)['mean']['success_rate']:.0f}%")
      return True
    if stopped:
      log(f"[sweep] stopped {job.label} (exit code {rc}); it reruns on rerun")
      return False
    log(f"[sweep] FAILED {job.label}: exit code {rc}, no {results}: {_last_line(_tail(job.dir / 'log.txt'))} "
        f"(full log: {job.dir / 'log.txt'})")
    return False
  if stopped and not (rc == 0 and _finished(job.dir, job.config, job.cell.kind)[0]):
    log(f"[sweep] stopped {job.cell.name} seed {job.seed} (exit code {rc}); it resumes on rerun")
    return False
  ok, why = (rc == 0, f"exit code {rc}")
  if ok:
    ok, why = _finished(job.dir, job.config, job.cell.kind)
  if ok:
    results = read_json(job.dir / "eval" / "results.json")
    success = f"; success {100 * results['mean']['success_rate']:.0f}%" if results else ""
    (job.dir / "DONE").write_text(json.dumps({"finished": time.time(), "wall_seconds": r.info["wall_seconds"]}))
    log(f"[sweep] done  {job.cell.name} seed {job.seed} in {_fmt(r.info['wall_seconds'])}{success}")
    return True
  tail = _tail(job.dir / "log.txt")
  _write_json(job.dir / "FAILED", {"returncode": rc, "summary": why, "log_tail": tail})
  log(f"[sweep] FAILED {job.cell.name} seed {job.seed}: {why}: {_last_line(tail)} "
      f"(full log: {job.dir / 'log.txt'})")
  return False


def _uses_run_of(user: Job, job: Job) -> bool:
  """Whether ``user`` needs ``job``'s run: a later stage restoring it, or an extra evaluation of it."""
  return not job.eval_name and (job.cell.name, job.seed) in user.runs_used


def refreshed_estimate(job: Job, workdir) -> float:
  """``job``'s estimate with the rates of its cell's seeds that finished here since the plan priced it.
  Session 22: a hybrid cell with no finished seed was planned at the defaults (~15 min); its seed 0
  then took 69 min, and seed 1 started 20 minutes before the deadline on the stale estimate."""
  per_step, per_episode = _measured_rates(pathlib.Path(workdir) / job.cell.name)
  if job.cell.kind != "train" or not (per_step or per_episode) or job.config is None:
    return job.estimate_s
  return estimate_seconds(job, workdir)


def seconds_needed(job: Job, queue: Sequence[Job]) -> float:
  """``job``'s estimate plus the longest queued job that uses its run: a stage is worth starting
  only if one run that restores it can finish too."""
  return job.estimate_s + max((j.estimate_s for j in queue if _uses_run_of(j, job)), default=0.0)


def _next_ready(queue: list, running: list, workdir: pathlib.Path, summary: dict, log,
                deadline: Optional[float] = None) -> Optional[Job]:
  """Pops the first queued job whose runs it uses (``Cell.needs``) are DONE (or that has none).
  A job one of whose runs failed, or is not queued, running or done, is dropped as failed with
  the reason. ``deadline`` (epoch seconds): a ready job that would not finish by then
  (``seconds_needed``) is dropped as not run, and so are the jobs that use its run."""
  for job in list(queue):
    waiting = [(d, s) for d, s in job.runs_used if not is_done(dep_dir(workdir, job.cell, d, job.seed))]
    if not waiting:
      queue.remove(job)
      left = None if deadline is None else deadline - time.time()
      if left is not None:  # priced again: a seed of the cell may have finished since the plan
        for j in [job] + [u for u in queue if _uses_run_of(u, job)]:
          j.estimate_s = refreshed_estimate(j, workdir)
      needed = None if left is None else seconds_needed(job, queue)
      if needed is not None and needed > left:
        log(f"[sweep] not started {job.label}: needs ~{_fmt(needed)} (with a run that "
            f"uses it), {_fmt(max(left, 0))} left before the deadline")
        summary["skipped"].append(job.label)
        continue
      return job
    is_run = lambda j, run: not j.eval_name and (j.cell.name, j.seed) == run
    lost = [run for run in waiting
            if not (any(is_run(j, run) for j in queue) or any(is_run(r.job, run) for r in running))]
    if lost:
      queue.remove(job)
      what = "its run" if job.eval_name else "its stage"
      lost_label = f"{lost[0][0]}/seed_{lost[0][1]}"
      if lost_label in summary["skipped"]:
        log(f"[sweep] not started {job.label}: {what} {lost_label} was not run before the deadline")
        summary["skipped"].append(job.label)
      else:
        log(f"[sweep] FAILED {job.label}: {what} {lost_label} did not finish")
        summary["failed"].append(job.label)
  return None


def _last_line(lines: Sequence[str]) -> str:
  """The last non-blank line (its last 200 characters): what a failed run printed last."""
  return next((l for l in reversed(lines) if l.strip()), "")[-200:]


def _tail(path: pathlib.Path, n: int = 30) -> list[str]:
  try:
    return path.read_text(errors="replace").splitlines()[-n:]
  except OSError:
    return []


def write_sweep_json(sweep: Sweep, workdir: pathlib.Path) -> None:
  """Records the sweep in ``workdir``; a workdir of another sweep or version is an error."""
  path = workdir / "sweep.json"
  saved = read_json(path)
  if saved is not None:
    if (saved["name"], saved["version"]) != (sweep.name, sweep.version):
      raise ValueError(f"{workdir} holds sweep {saved['name']} v{saved['version']}, not "
                       f"{sweep.name} v{sweep.version}: use another --workdir")
    old = {c["name"]: c for c in saved["cells"]}
    for cell in sweep.cells:
      if cell.name in old and old[cell.name] != cell.spec():
        mismatch = _runs_it_no_longer_describes(cell, workdir)
        if mismatch:
          raise ValueError(f"cell {cell.name!r} of sweep {sweep.name} v{sweep.version} changed since "
                           f"{workdir} was started ({old[cell.name]} -> {cell.spec()}) and no longer "
                           f"describes its run(s) {mismatch}: bump the sweep's version and use another "
                           f"--workdir")
    # A cell whose spec changed but still builds exactly the runs it holds (e.g. its overrides now pin
    # what its config's preset used to be) is recorded as it is now.
    now = {c.name: c.spec() for c in sweep.cells}
    cells = [now.get(c["name"], c) for c in saved["cells"]] + [
        c.spec() for c in sweep.cells if c.name not in old]
  else:
    cells = [c.spec() for c in sweep.cells]
  workdir.mkdir(parents=True, exist_ok=True)
  record = sweep_meta(sweep)
  record["cells"] = cells
  if (saved or {}).get("extra_evals"):  # added evaluations accumulate, as cells
    record["extra_evals"] = {**saved["extra_evals"], **record.get("extra_evals", {})}
  _write_json(path, record)


def _runs_it_no_longer_describes(cell: Cell, workdir: pathlib.Path) -> list[str]:
  """The run directories (``seed_*``) of ``cell`` in ``workdir`` that ``cell`` as it is now would not
  train (``same_run`` on their config.json). A run without a config.json cannot be shown to match, nor
  can the runs of label and eval cells (they have none): all of those are listed."""
  runs = sorted((workdir / cell.name).glob("seed_*"))
  if cell.kind != "train":
    return [p.name for p in runs]
  stale = []
  for rdir in runs:
    if not (rdir / "config.json").exists():
      stale.append(f"{rdir.name} (no config.json)")
      continue
    seed = int(rdir.name[len("seed_"):])
    try:
      current = json.loads(load_config(cell, seed, workdir).to_json_best_effort())
    except ValueError as e:
      stale.append(f"{rdir.name} ({e})")
      continue
    if not same_run(read_json(rdir / "config.json"), current):
      stale.append(rdir.name)
  return stale


def sweep_meta(sweep: Sweep) -> dict:
  """The sweep as ``<workdir>/sweep.json`` records it: name, version, description, seeds, cells
  (and extra evaluations when it has any)."""
  meta = {"name": sweep.name, "version": sweep.version, "description": sweep.description,
          "seeds": list(sweep.seeds), "cells": [c.spec() for c in sweep.cells]}
  if sweep.extra_evals:
    meta["extra_evals"] = json.loads(json.dumps(sweep.extra_evals))
  return meta


def run(sweep: Sweep, workdir, *, seeds: Optional[Sequence[int]] = None, max_parallel: int = 1,
        cells: Optional[Sequence[str]] = None, reuse: bool = False, recorded: Optional[Mapping] = None,
        check: Optional[Callable] = None, prepare: Optional[Callable] = None,
        env: Optional[Mapping[str, str]] = None, poll_seconds: float = 1.0,
        log: Callable[[str], None] = print, record_walls: Optional[Mapping] = None,
        deadline: Optional[float] = None, pin_cores: bool = False, settle_seconds: float = 60.0) -> dict:
  """Runs every unfinished job; returns {"done": [...], "failed": [...], "skipped": [...]} of names.

  ``prepare(jobs)`` runs once before the first job, with the jobs to run (e.g. generating the
  protocol data they read).
  ``deadline`` (epoch seconds): no job starts that its estimate says would end after it (with the
  longest run that uses it: ``seconds_needed``); a machine that goes away at a known time (a
  session's end) then spends its last hour on runs that finish, not on checkpoints it will lose.
  SIGTERM/SIGINT: running trainers get SIGTERM (they save a checkpoint and stop), then the
  sweep exits; rerunning it resumes them.
  ``pin_cores``: while runs go side by side, each on its own group of the cores (``core_groups``):
  from its start when it is expected to have a neighbour for most of its run (``_spawn_group``),
  else once it has run ``settle_seconds``; a run going alone on all of them (``_balance``).
  """
  workdir = pathlib.Path(workdir).absolute()
  write_sweep_json(sweep, workdir)
  jobs = plan(sweep, workdir, seeds, check, cells, reuse=reuse, recorded=recorded, record_walls=record_walls)
  label = lambda j: j.label
  for j in jobs:
    if j.state == "reusable":
      link_reused(j, log)
  summary = {"done": [label(j) for j in jobs if j.state == "done"], "failed": [], "skipped": [],
             "recorded": [label(j) for j in jobs if j.state == "recorded"]}
  for j in jobs:
    if j.state == "invalid":
      log(f"[sweep] INVALID {label(j)}: {j.error}")
      summary["failed"].append(label(j))
    elif j.state == "running":
      log(f"[sweep] skip {label(j)}: a trainer is still working in it ({j.detail}); "
          "wait for it or kill it, then rerun")
      summary["skipped"].append(label(j))
  queue = [j for j in jobs if j.state in ("pending", "partial", "failed")]
  log(f"[sweep] {sweep.name} v{sweep.version} in {workdir}: {len(summary['done'])} finished, "
      + (f"{len(summary['recorded'])} finished elsewhere (committed records), " if summary["recorded"] else "")
      + f"{len(queue)} to run, max_parallel {max_parallel}")
  if queue and prepare is not None:
    prepare(queue)
  env = dict(os.environ if env is None else env)
  running: list[_Running] = []
  groups = core_groups(max_parallel) if pin_cores else []
  stop = {"signal": None}

  def on_signal(signum, frame):
    del frame
    stop["signal"] = signum
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  last_tick = time.time()
  try:
    while (queue or running) and stop["signal"] is None:
      while len(running) < max_parallel:
        job = _next_ready(queue, running, workdir, summary, log, deadline)
        if job is None:
          break
        cpus = _spawn_group(job, queue, running, groups, max_parallel) if groups else None
        running.append(_start(job, env, log, sweep, cpus))
      if not queue and not running:
        break
      time.sleep(poll_seconds)
      for r in [r for r in running if r.proc.poll() is not None]:
        running.remove(r)
        summary["done" if _finish(r, log) else "failed"].append(label(r.job))
      _balance(running, groups, settle_seconds, log)
      if time.time() - last_tick > 30:
        last_tick = time.time()
        for r in running:
          _tick(r)
    if stop["signal"] is not None:
      log(f"[sweep] signal {stop['signal']}: stopping {len(running)} run(s) (they save a "
          "checkpoint); rerun the same command to resume")
      for r in running:
        r.proc.send_signal(signal.SIGTERM)
      for r in running:
        try:
          r.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
          r.proc.kill()
          r.proc.wait()
        _finish(r, log, stopped=True)
      summary["skipped"] += [label(j) for j in queue] + [label(r.job) for r in running]
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)
  log(f"[sweep] {len(summary['done'])} finished, {len(summary['failed'])} failed"
      + (f" ({', '.join(summary['failed'])})" if summary["failed"] else "")
      + (f", {len(summary['skipped'])} not run" if summary["skipped"] else "")
      + f". Report: python experiments/report.py {workdir}")
  return summary
