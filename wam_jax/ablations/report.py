"""Finished sweep runs -> results.csv, runs.csv, results.md and plots. Reads files only: never trains.

Every run is read as its record (records.py: the summary that is committed, so seeds finished on
other machines pool with this machine's); with an output directory the report reads and writes
the records under it. Per run (``<workdir>/<cell>/seed_<s>/`` with a ``DONE`` marker, see sweep.py) it reads:
  config.json          train.steps, train.batch_size
  metrics.jsonl        run/flops_per_step (compiled step), train/examples_per_s, and, for models
                       that predict frames, the last val/video_psnr, val/video_ssim and the
                       copy-the-last-frame baseline val/copy_last_psnr, val/copy_last_ssim
                       (held-out episodes: the val split); absent keys show as "-"
  eval/results.json    every evaluation episode (task, seed, success), latency per policy call
  run.json             the sweep's wall time of the run (all attempts)

An eval cell's run (``Cell(kind="eval")``: plan with video, act with an IDM) is a policy row
too; it has only eval/results.json and run.json, so its training columns show "-". A label
cell's run (a dataset) is not a row: the report names it with the stages.

Per cell, success pools every evaluation episode of every seed (the protocol's "mean success
over all 600 episodes") with its 95% Wilson interval (``evaluation.metrics.wilson_interval``),
beside the per-seed means and per-task success (also pooled over seeds).
"""

import csv
import dataclasses
import json
import math
import pathlib
import re
import time
from typing import Optional, Sequence

import numpy as np

from wam_jax.ablations import records
from wam_jax.ablations import sweep as sweep_lib
from wam_jax.evaluation import metrics

FRAME_KEYS = ("video_psnr", "video_ssim", "copy_last_psnr", "copy_last_ssim")


@dataclasses.dataclass
class Run:
  cell: str
  seed: int
  steps: Optional[int]    # None: not a training run (an eval cell's)
  batch_size: Optional[int]
  episodes: list          # [{"task", "seed", "success", "length"}]; task None: rebuilt without it (records.py)
  latency_ms: float       # mean policy call (one chunk at batch 1)
  eval_seconds: float
  wall_seconds: float
  flops_per_step: float
  examples_per_s: float
  frames: dict            # FRAME_KEYS -> value (missing keys absent)
  execute_steps: int
  code: str = ""          # the commit(s) its attempts ran (run.json; "a -> b" when they differ)
  consistency: Optional[dict] = None  # eval/results.json "consistency" (frame-predicting policies)
  source: str = "run"     # "run": read from its directory or its record; else how its record was rebuilt

  @property
  def successes(self) -> int:
    return sum(bool(e["success"]) for e in self.episodes)

  @property
  def success_rate(self) -> float:
    return self.successes / max(len(self.episodes), 1)


def read_record(meta: dict, cell: str, seed: int, rdir: pathlib.Path) -> dict:
  """A finished run directory as its record (records.py): what the report and the claims use."""
  config = sweep_lib.read_json(rdir / "config.json", {}) or {}
  rows = sweep_lib.read_jsonl(rdir / "metrics.jsonl")
  flops = next((r["run/flops_per_step"] for r in rows if "run/flops_per_step" in r), float("nan"))
  rates = [r["train/examples_per_s"] for r in rows if "train/examples_per_s" in r]
  val = {}
  for r in rows:  # the last value of each held-out metric
    val.update({k[4:]: v for k, v in r.items() if k.startswith("val/")})
  run_info = sweep_lib.read_json(rdir / "run.json", {}) or {}
  train = config.get("train")
  evals = {}
  for name in [""] + sorted(meta.get("extra_evals", {})):
    results = sweep_lib.read_json(sweep_lib.eval_results(rdir, name))
    if results is not None:
      evals[name] = {"episodes": records.compact_episodes(results["episodes"]),
                     "latency_ms": float(results["latency"]["mean_ms"]), "eval_seconds": float(results["seconds"]),
                     "execute_steps": int(results["settings"]["execute_steps"]),
                     "consistency": results.get("consistency")}
  kind = next((c.get("kind", "train") for c in meta["cells"] if c["name"] == cell), "train")
  if kind != "label" and "" not in evals and (kind != "train" or _evaluates(config)):
    raise ValueError(f"{rdir}: finished (DONE) but has no eval/results.json: the report needs "
                     "closed-loop results")
  return {"sweep": meta["name"], "version": meta["version"], "cell": cell, "seed": seed, "source": "run",
          "code": " -> ".join(dict.fromkeys(a.get("code", "") for a in run_info.get("attempts", []) if a.get("code"))),
          "steps": int(train.get("steps", 0)) if train else None,
          "batch_size": int(train.get("batch_size", 0)) if train else None,
          "flops_per_step": float(flops), "examples_per_s": float(np.median(rates)) if rates else float("nan"),
          "wall_seconds": float(run_info.get("wall_seconds", float("nan"))), "val": val, "evals": evals}


def run_of(record: dict, eval_name: str = "") -> Run:
  """A record's run as evaluated by ``eval_name`` ("" = its training evaluation)."""
  ev = record["evals"][eval_name]
  return Run(cell=record["cell"], seed=int(record["seed"]), steps=record["steps"], batch_size=record["batch_size"],
             episodes=ev["episodes"], latency_ms=ev["latency_ms"], eval_seconds=ev["eval_seconds"],
             wall_seconds=record["wall_seconds"], flops_per_step=record["flops_per_step"],
             examples_per_s=record["examples_per_s"],
             frames={k: record["val"][k] for k in FRAME_KEYS if k in record.get("val", {})},
             execute_steps=ev["execute_steps"], code=record.get("code", ""),
             consistency=ev.get("consistency"), source=record.get("source", "run"))


def load_records(workdir, records_dir=None) -> tuple[dict, dict, set]:
  """(sweep.json, {(cell, seed): record} in cell then seed order, the keys read from ``workdir``).

  Every finished run of ``workdir``, then, for the runs not there, the records in ``records_dir``
  (records.py; None: none). Either may be missing, not both: a report or claim can be regenerated
  from the committed records alone."""
  workdir = pathlib.Path(workdir)
  meta = sweep_lib.read_json(workdir / "sweep.json")
  rdir = pathlib.Path(records_dir) if records_dir else None
  if meta is None and rdir is not None:
    meta = records.read_meta(rdir)
  if meta is None:
    raise ValueError(f"{workdir} is not a sweep directory (no sweep.json)"
                     + (f" and {rdir} holds no records" if rdir else "")
                     + ": pass the --workdir of experiments/ablations.py")
  found = {(r["cell"], int(r["seed"])): r for r in (records.load_all(rdir, meta) if rdir and rdir.is_dir() else [])}
  local = set()
  if (workdir / "sweep.json").exists():
    for cell in meta["cells"]:  # a label run's record says it finished (a dataset, not a policy)
      for seed, run_d in _finished(workdir, cell["name"]):
        found[cell["name"], seed] = read_record(meta, cell["name"], seed, run_d)
        local.add((cell["name"], seed))
  order = {c["name"]: i for i, c in enumerate(meta["cells"])}
  keys = sorted((k for k in found if k[0] in order), key=lambda k: (order[k[0]], k[1]))
  return meta, {k: found[k] for k in keys}, local


def load_runs(workdir, eval_name: str = "", records_dir=None) -> tuple[dict, list[Run]]:
  """(sweep.json, finished runs with a closed-loop evaluation, in cell order then seed order): the
  runs of ``workdir`` and the records of ``records_dir`` (``load_records``); with ``eval_name``, the
  runs whose extra evaluation eval_<name>/ finished, with its results."""
  meta, found, _ = load_records(workdir, records_dir)
  return meta, runs_of(meta, found, eval_name)


def runs_of(meta: dict, found: dict, eval_name: str = "") -> list[Run]:
  """The records that have the evaluation ``eval_name`` ("" = the training one), as runs; an
  evaluation the sweep does not define is an error naming the ones it does."""
  if eval_name and eval_name not in meta.get("extra_evals", {}):
    raise ValueError(f"--eval={eval_name}: sweep {meta['name']} has no such extra evaluation; it has "
                     f"{sorted(meta.get('extra_evals', {})) or 'none'}")
  return [run_of(r, eval_name) for r in found.values() if eval_name in r["evals"]]


def _finished(workdir, cell_name: str):
  """(seed, run dir) of each finished (DONE) run of a cell, in seed order."""
  for rdir in sorted((pathlib.Path(workdir) / cell_name).glob("seed_*"), key=lambda p: int(p.name[5:])):
    if sweep_lib.is_done(rdir):
      yield int(rdir.name[5:]), rdir


def _evaluates(config: dict) -> bool:
  """Whether a run's config evaluates closed loop at the end (configs without the field did)."""
  return config.get("eval", {}).get("at_end", True)


def _mean(xs) -> float:
  xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
  return float(np.mean(xs)) if xs else float("nan")


def rate_with_ci(successes: int, n: int) -> dict:
  lo, hi = metrics.wilson_interval(successes, n)
  return {"successes": successes, "episodes": n, "rate": successes / n if n else float("nan"),
          "ci95": (lo, hi)}


def aggregate(meta: dict, runs: Sequence[Run]) -> list[dict]:
  """One row per cell with finished runs (cells in sweep order)."""
  rows = []
  for cell in meta["cells"]:
    cruns = [r for r in runs if r.cell == cell["name"]]
    if not cruns:
      continue
    episodes = [e for r in cruns for e in r.episodes]
    tasks = list(dict.fromkeys(e["task"] for e in episodes if e["task"] is not None))
    per_task = {t: rate_with_ci(sum(bool(e["success"]) for e in episodes if e["task"] == t),
                                sum(e["task"] == t for e in episodes)) for t in tasks}
    rows.append({
        "cell": cell["name"], "method": cell.get("method") or cell["name"],
        "n_demos": cell.get("n_demos"), "seeds": [r.seed for r in cruns],
        "seeds_planned": len(meta.get("seeds", [])),
        "pooled": rate_with_ci(sum(r.successes for r in cruns), len(episodes)),
        "seed_means": [r.success_rate for r in cruns],
        "per_task": per_task,
        "steps": sorted({r.steps for r in cruns if r.steps is not None}),  # [] for an eval cell
        "batch_size": sorted({r.batch_size for r in cruns if r.batch_size is not None}),
        "flops_per_step": _mean(r.flops_per_step for r in cruns),
        "wall_seconds": _mean(r.wall_seconds for r in cruns),
        "eval_seconds": _mean(r.eval_seconds for r in cruns),
        "latency_ms": _mean(r.latency_ms for r in cruns),
        "examples_per_s": _mean(r.examples_per_s for r in cruns),
        "execute_steps": sorted({r.execute_steps for r in cruns}),
        "frames": {k: _mean(r.frames.get(k) for r in cruns) for k in FRAME_KEYS},
    })
  return rows


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------
def _one(values):
  """The value if there is one, else the values joined by "/" ("" for none)."""
  return values[0] if len(values) == 1 else "/".join(map(str, values))


def write_csv(rows: Sequence[dict], runs: Sequence[Run], out_dir: pathlib.Path, sweep_name: str):
  tasks = list(dict.fromkeys(t for row in rows for t in row["per_task"]))
  fields = (["sweep", "cell", "method", "n_demos", "seeds", "episodes", "successes", "success_rate",
             "ci95_lo", "ci95_hi", "seed_means", "steps", "batch_size", "flops_per_step",
             "train_flops", "wall_seconds_per_run", "eval_seconds_per_run", "latency_ms",
             "examples_per_s", "execute_steps"] + list(FRAME_KEYS) + [f"task:{t}" for t in tasks])
  with open(out_dir / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for row in rows:
      p = row["pooled"]
      steps = _one(row["steps"])
      w.writerow({
          "sweep": sweep_name, "cell": row["cell"], "method": row["method"],
          "n_demos": row["n_demos"], "seeds": " ".join(map(str, row["seeds"])),
          "episodes": p["episodes"], "successes": p["successes"], "success_rate": p["rate"],
          "ci95_lo": p["ci95"][0], "ci95_hi": p["ci95"][1],
          "seed_means": " ".join(f"{m:.6g}" for m in row["seed_means"]),
          "steps": steps, "batch_size": _one(row["batch_size"]),
          "flops_per_step": row["flops_per_step"],
          "train_flops": row["flops_per_step"] * steps if isinstance(steps, int) else "",
          "wall_seconds_per_run": row["wall_seconds"], "eval_seconds_per_run": row["eval_seconds"],
          "latency_ms": row["latency_ms"], "examples_per_s": row["examples_per_s"],
          "execute_steps": _one(row["execute_steps"]),
          **{k: row["frames"][k] for k in FRAME_KEYS},
          **{f"task:{t}": row["per_task"][t]["rate"] for t in row["per_task"]}})
  with open(out_dir / "runs.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["cell", "seed", "episodes", "successes", "success_rate", "steps", "flops_per_step",
                "examples_per_s", "wall_seconds", "eval_seconds", "latency_ms", "dir", "code", "source"])
    for r in runs:
      w.writerow([r.cell, r.seed, len(r.episodes), r.successes, r.success_rate, r.steps,
                  r.flops_per_step, r.examples_per_s, r.wall_seconds, r.eval_seconds,
                  r.latency_ms, f"{r.cell}/seed_{r.seed}", r.code, r.source])


def _pct(x) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _num(x, fmt="{:.1f}") -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _short_task(task: str) -> str:
  return task.removesuffix("-v3")


def markdown(meta: dict, rows: Sequence[dict], runs: Sequence[Run], found: dict, where: str) -> str:
  """``found``: ``load_records``'s records; ``where``: what they were read from, for the header."""
  lines = [f"# {meta['name']} v{meta['version']}", ""]
  if meta.get("description"):
    lines += [" ".join(meta["description"].split()), ""]
  lines += [f"{len(runs)} finished run(s) from {where}; generated {time.strftime('%Y-%m-%d %H:%M')} "
            "by `experiments/report.py` (reads files, never trains). Success pools every "
            "evaluation episode of every seed, with its 95% Wilson interval; per-seed means in "
            "seed order. FLOPs: the compiled train step (XLA cost analysis); wall: one run, "
            "training + evaluation, all attempts; latency: one policy call (a chunk, batch 1). "
            "PSNR/SSIM: predicted frames at t+k on held-out episodes (copy-the-last-frame "
            "baseline in brackets), for models that predict frames.", "",
            "| cell | method | N | success | 95% CI | per-seed | seeds | episodes | steps | "
            "GFLOPs/step | wall/run | latency | PSNR (copy) | SSIM (copy) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    p, fr = row["pooled"], row["frames"]
    seeds = f"{len(row['seeds'])}/{row['seeds_planned']}" if row["seeds_planned"] else str(len(row["seeds"]))
    lines.append(
        f"| {row['cell']} | {row['method']} | {row['n_demos'] if row['n_demos'] is not None else '-'} | "
        f"**{_pct(p['rate'])}** | {_pct(p['ci95'][0])}-{_pct(p['ci95'][1])} | "
        f"{' '.join(_pct(m) for m in row['seed_means'])} | {seeds} | {p['episodes']} | "
        f"{_one(row['steps']) if row['steps'] else '-'} | {_num(row['flops_per_step'] / 1e9, '{:.3g}')} | "
        f"{_num(row['wall_seconds'] / 60, '{:.1f} min')} | {_num(row['latency_ms'], '{:.1f} ms')} | "
        f"{_num(fr['video_psnr'])} ({_num(fr['copy_last_psnr'])}) | "
        f"{_num(fr['video_ssim'], '{:.3f}')} ({_num(fr['copy_last_ssim'], '{:.3f}')}) |")
  tasks = list(dict.fromkeys(t for row in rows for t in row["per_task"]))
  if tasks:
    lines += ["", "Per-task success (pooled over seeds; episodes per cell and task in brackets):", "",
              "| cell | " + " | ".join(_short_task(t) for t in tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    for row in rows:
      cells = [f"{_pct(row['per_task'][t]['rate'])} ({row['per_task'][t]['episodes']})"
               if t in row["per_task"] else "-" for t in tasks]
      lines.append(f"| {row['cell']} | " + " | ".join(cells) + " |")
  untasked = [r for r in runs if any(e["task"] is None for e in r.episodes)]
  if untasked:
    lines += ["", "Per-task columns leave out run(s) whose record kept the total but not the per-task split: "
              + "; ".join(f"{r.cell} seed {r.seed} ({r.source})" for r in untasked) + "."]
  lines += ["", "Runs:", "", "| cell | seed | success | episodes | steps | examples/s | wall | eval | latency | code |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r.cell} | {r.seed} | {_pct(r.success_rate)} | {len(r.episodes)} | "
                 f"{r.steps if r.steps is not None else '-'} | "
                 f"{_num(r.examples_per_s, '{:.0f}')} | {_num(r.wall_seconds / 60, '{:.1f} min')} | "
                 f"{_num(r.eval_seconds / 60, '{:.1f} min')} | {_num(r.latency_ms, '{:.1f} ms')} | "
                 f"{r.code or '-'} |")
  missing = [c["name"] for c in meta["cells"] if c["name"] not in {row["cell"] for row in rows}
             and not any(name == c["name"] for name, _ in found)]
  stages = [c["name"] for c in meta["cells"] if c["name"] not in {row["cell"] for row in rows}
            and c["name"] not in missing]
  if stages:
    lines += ["", f"Finished runs without closed-loop evaluation (stages used by later cells, or "
              f"models that are not policies): {', '.join(stages)}."]
    held_out = stage_metrics(meta, found)
    if held_out:
      lines += ["", "Their held-out metrics (`val/*` at the last validation; mean over seeds, then per seed):", "",
                "| cell | seeds | steps | metric | mean | per-seed |", "|---|---|---|---|---|---|"]
      for row in held_out:
        lines.append(f"| {row['cell']} | {len(row['seeds'])} | {', '.join(map(str, row['steps']))} | {row['metric']} | "
                     f"{row['mean']:.4g} | {' '.join(f'{v:.4g}' for v in row['per_seed'])} |")
  if missing:
    lines += ["", f"Cells with no finished run yet: {', '.join(missing)}."]
  return "\n".join(lines) + "\n"


def stage_metrics(meta: dict, found: dict) -> list[dict]:
  """For each cell whose finished runs have no closed-loop evaluation (``eval.at_end`` False: a
  pretraining stage, an inverse-dynamics model...): one row per held-out metric, the last
  validation's ``val/<metric>`` of each seed and their mean. Per-step breakdowns (``*_step<i>``)
  and ``loss_weight`` are left out. ``found``: ``load_records``'s records."""
  rows = []
  for cell in meta["cells"]:
    if cell.get("kind", "train") != "train":  # label and eval runs log no validation
      continue
    per_run = [(seed, int(r["steps"] or 0), r.get("val", {})) for (name, seed), r in found.items()
               if name == cell["name"] and "" not in r["evals"]]
    keys = sorted({k for _, _, last in per_run for k in last
                   if k != "loss_weight" and not re.search(r"_step\d+$", k)})
    for key in keys:
      values = [(seed, float(last[key])) for seed, _, last in per_run if key in last]
      rows.append({"cell": cell["name"], "metric": key, "seeds": [sd for sd, _ in values],
                   "steps": sorted({st for _, st, _ in per_run}), "per_seed": [v for _, v in values],
                   "mean": _mean(v for _, v in values)})
  return rows


# ----------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------
def plot_success_vs_demos(rows: Sequence[dict], path: pathlib.Path) -> bool:
  """One panel for the mean and one per task: success vs N, a line and Wilson band per method."""
  rows = [r for r in rows if r["n_demos"] is not None]
  if not rows:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(t for r in rows for t in r["per_task"]))
  panels = [("all tasks", None)] + [(_short_task(t), t) for t in tasks]
  cols = min(4, len(panels))
  n_rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.6 * n_rows), squeeze=False,
                           sharex=True, sharey=True)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for ax, (title, task) in zip(axes.flat, panels):
    for i, method in enumerate(methods):
      pts = sorted((r["n_demos"], r["pooled"] if task is None else r["per_task"].get(task))
                   for r in rows if r["method"] == method)
      pts = [(n, s) for n, s in pts if s is not None]
      if not pts:
        continue
      x = [n for n, _ in pts]
      color = f"C{i}"
      y = [s["rate"] for _, s in pts]
      ax.errorbar(x, y, yerr=[[r - s["ci95"][0] for r, (_, s) in zip(y, pts)],
                              [s["ci95"][1] - r for r, (_, s) in zip(y, pts)]],
                  fmt="o-", color=color, capsize=3, label=method)
      ax.fill_between(x, [s["ci95"][0] for _, s in pts], [s["ci95"][1] for _, s in pts],
                      color=color, alpha=0.2)
    ax.set_title(title, fontsize=9)
    ax.set_xscale("log")
    xs = sorted({r["n_demos"] for r in rows})
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  for ax in axes[-1]:
    ax.set_xlabel("labeled demos per task")
  for ax in axes[:, 0]:
    ax.set_ylabel("success")
  axes.flat[0].legend(fontsize=7)
  fig.suptitle("Closed-loop success vs labeled demos (95% Wilson bands, seeds pooled)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_success_vs_latency(rows: Sequence[dict], path: pathlib.Path) -> bool:
  rows = [r for r in rows if not math.isnan(r["latency_ms"])]
  if not rows:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for r in rows:
    p = r["pooled"]
    color = f"C{methods.index(r['method'])}"
    ax.errorbar(r["latency_ms"], p["rate"], yerr=[[p["rate"] - p["ci95"][0]], [p["ci95"][1] - p["rate"]]],
                fmt="o", color=color, capsize=3)
    ax.annotate(r["cell"], (r["latency_ms"], p["rate"]), fontsize=7, xytext=(4, 4),
                textcoords="offset points")
  for i, m in enumerate(methods):
    ax.plot([], [], "o", color=f"C{i}", label=m)
  ax.set_xlabel("policy latency per chunk, batch 1 (ms)")
  ax.set_ylabel("success (95% Wilson)")
  ax.set_ylim(-0.03, 1.03)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _records_dir(workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """``<out>/records/v<version>``: the version of ``workdir``'s sweep.json, else of its name
  ``<sweep>_v<version>`` (a workdir not on this machine: the report of the records alone)."""
  meta = sweep_lib.read_json(workdir / "sweep.json")
  if meta is not None:
    return out / "records" / f"v{meta['version']}"
  parsed = records.parse_workdir_name(workdir.name)
  if parsed is None:
    raise ValueError(f"{workdir} is not a sweep directory (no sweep.json), and its name does not say the "
                     "version of the records to report (<sweep>_v<version>)")
  return out / "records" / f"v{parsed[1]}"


def write_report(workdir, out_dir: Optional[str] = None, *, plots: bool = True, eval_name: str = "") -> dict:
  """Writes the report of ``workdir``'s finished runs to ``out_dir`` (default <workdir>/report, or
  report_<eval_name> for an extra evaluation of the sweep; with ``out_dir``, an extra evaluation's
  tables go to ``<out_dir>/<eval_name>`` beside the sweep's one set of records).

  With ``out_dir`` (the committed results, experiments/results/<sweep>), the runs are pooled with
  the records in ``<out_dir>/records/v<version>`` (records.py: runs finished on other machines),
  and the records of ``workdir``'s finished runs are written there (a local run replaces its record).

  Returns {"rows": [...], "runs": [...], "files": [paths written], "records": [records written]}.
  """
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out_dir) if out_dir else workdir / (f"report_{eval_name}" if eval_name else "report")
  rdir = _records_dir(workdir, out) if out_dir else None
  if out_dir and eval_name:  # a record holds every evaluation of a run: one set per sweep, tables apart
    out = out / eval_name
  meta, found, local = load_records(workdir, rdir)
  runs = runs_of(meta, found, eval_name)
  rows = aggregate(meta, runs)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  if rdir is not None and local:
    records.write_meta(rdir, meta)
    written = [records.write(rdir, found[k]) for k in sorted(local)]
  write_csv(rows, runs, out, meta["name"])
  where = (f"`{workdir}`" if not rdir else f"`{workdir}` ({len(local)}) and the records in `{rdir}` "
           f"({len(found) - len(local)})")
  text = markdown(meta, rows, runs, found, where)
  if eval_name:  # say which evaluation this is, under the title
    title, rest = text.split("\n", 1)
    text = (f"{title}: extra evaluation `{eval_name}`\n\nEvery run re-evaluated as trained, with "
            f"`experiments/eval.py` flags {json.dumps(meta['extra_evals'][eval_name])}.\n{rest}")
  (out / "results.md").write_text(text)
  files = [out / "results.csv", out / "runs.csv", out / "results.md"]
  if plots:
    if plot_success_vs_demos(rows, out / "success_vs_demos.png"):
      files.append(out / "success_vs_demos.png")
    if plot_success_vs_latency(rows, out / "success_vs_latency.png"):
      files.append(out / "success_vs_latency.png")
  return {"rows": rows, "runs": runs, "files": files, "records": written}
