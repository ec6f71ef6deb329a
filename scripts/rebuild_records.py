r"""Rebuild run records (wam_jax/ablations/records.py) from a committed report whose run directories are gone.

  .venv/bin/python scripts/rebuild_records.py experiments/results/families [more report dirs...]

Reports written before records existed kept only their tables: ``runs.csv`` (per run: episodes,
successes, steps, FLOPs, examples/s, wall and eval time, latency, commit), ``results.csv`` (per
cell: batch, execute steps, frame metrics and per-task success pooled over seeds) and
``results.md`` (per-task episode counts; the held-out ``val/*`` metrics of the stages). This
writes ``<dir>/records/v<version>/`` from them, for every run a record does not already hold:

- a cell with one finished seed in the table: its per-task counts are exact (rate x episodes);
- a cell pooling several seeds: a run whose same run (cell, seed, commit, successes) is the only
  seed of its cell in another report given here takes that report's per-task counts; the others
  keep their total with ``task`` None (records.py: left out of per-task numbers, and said so);
- a stage (no closed-loop evaluation) of one seed: its held-out metrics, from results.md;
- label cells (datasets) are not rebuilt: a sweep that needs one runs it again.

Episode seeds and lengths were not kept and are left out. Every rebuilt record says so in its
``source``. Reads and writes files only.
"""

import csv
import os
import pathlib
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from wam_jax.ablations import records  # noqa: E402
from wam_jax.ablations import report  # noqa: E402
from wam_jax.ablations import sweep as sweep_lib  # noqa: E402


def _float(x: str) -> float:
  return float(x) if x not in ("", "None") else float("nan")


def _md_tables(text: str) -> list[list[list[str]]]:
  """The Markdown tables of ``text``: rows of cells (header first, the |---| line dropped)."""
  tables, cur = [], []
  for line in text.splitlines() + [""]:
    if line.startswith("|"):
      if not set(line) <= set("|-"):
        cur.append([c.strip() for c in line.strip("|").split("|")])
    elif cur:
      tables.append(cur)
      cur = []
  return tables


def read_report(d: pathlib.Path) -> dict:
  """A report directory's tables: {"name", "version", "cells", "runs", "task_episodes", "stages", "dir"}."""
  md = (d / "results.md").read_text()
  m = re.match(r"# (\S+) v(\d+)", md)
  if m is None:
    raise ValueError(f"{d}/results.md: no '# <sweep> v<version>' title")
  with open(d / "results.csv") as f:
    cells = {r["cell"]: r for r in csv.DictReader(f)}
  with open(d / "runs.csv") as f:
    runs = list(csv.DictReader(f))
  task_episodes, stages = {}, {}
  for table in _md_tables(md):
    head = table[0]
    if head[0] == "cell" and all(c not in head for c in ("method", "seed", "metric")) and len(head) > 1:
      for row in table[1:]:  # per-task success: "75% (20)"
        task_episodes[row[0]] = [int(n.group(1)) if (n := re.search(r"\((\d+)\)", c)) else 0 for c in row[1:]]
    if head[:4] == ["cell", "seeds", "steps", "metric"]:
      for cell, seeds, steps, metric, _, per_seed in table[1:]:
        if seeds == "1":  # one seed: its value
          stages.setdefault(cell, {"steps": int(steps.split(",")[0]), "val": {}})["val"][metric] = float(per_seed)
  return {"name": m.group(1), "version": int(m.group(2)), "cells": cells, "runs": runs,
          "task_episodes": task_episodes, "stages": stages, "dir": d}


def _per_task(rep: dict, cell: str) -> dict:
  """{task: (successes, episodes)} of a cell's pooled per-task columns (rates x the md's counts)."""
  row = rep["cells"][cell]
  tasks = [k[5:] for k in row if k.startswith("task:")]
  out = {}
  for task, n in zip(tasks, rep["task_episodes"].get(cell, [])):
    rate = row[f"task:{task}"]
    if n and rate not in ("", "nan"):
      k = float(rate) * n
      if abs(k - round(k)) > 1e-6:
        raise ValueError(f"{rep['dir']}: {cell} {task}: rate {rate} x {n} episodes is not a count")
      out[task] = (round(k), n)
  return out


def _key(run: dict) -> tuple:
  return run["cell"], int(run["seed"]), run["code"], int(run["successes"]), int(run["episodes"])


def rebuild(reports: list[dict], load_sweep=sweep_lib.load_sweep) -> list[pathlib.Path]:
  """Writes the missing records of every report; returns the paths written. ``load_sweep``: the
  shipped sweep of a name (its cells and version, for the records' sweep.json)."""
  single = {}  # the same run, the only seed of its cell somewhere: its exact per-task counts
  for rep in reports:
    for cell in rep["cells"]:
      seeds = [r for r in rep["runs"] if r["cell"] == cell]
      if len(seeds) == 1:
        single[_key(seeds[0])] = (_per_task(rep, cell), rep["dir"])
  written = []
  for rep in reports:
    sweep = load_sweep(rep["name"])
    if sweep.version != rep["version"]:
      raise ValueError(f"{rep['dir']}: a report of {rep['name']} v{rep['version']}; the shipped sweep is "
                       f"v{sweep.version}: its cells may differ, rebuild by hand")
    rdir = rep["dir"] / "records" / f"v{rep['version']}"
    meta = sweep_lib.sweep_meta(sweep)
    have = records.recorded(rdir)
    base = f"rebuilt from {rep['dir'].as_posix()}/runs.csv + results.csv + results.md (the run directory was lost with its machine"
    new = []
    for run in rep["runs"]:
      cell, seed = run["cell"], int(run["seed"])
      if (cell, seed) in have:
        continue
      row = rep["cells"][cell]
      n_seeds = sum(r["cell"] == cell for r in rep["runs"])
      if n_seeds == 1:
        per_task, note = _per_task(rep, cell), "per-task counts exact"
      elif _key(run) in single:
        per_task, where = single[_key(run)]
        note = f"per-task counts exact, from the same run in {where.as_posix()}"
      else:
        per_task, note = {}, f"per-task split not kept: the table pools {n_seeds} seeds"
      episodes = [{"task": t, "success": i < k} for t, (k, n) in per_task.items() for i in range(n)]
      if sum(n for _, n in per_task.values()) != int(run["episodes"]) or sum(
          k for k, _ in per_task.values()) != int(run["successes"]):
        if per_task:
          raise ValueError(f"{rep['dir']}: {cell} seed {seed}: per-task counts {per_task} do not add up to "
                           f"{run['successes']}/{run['episodes']}")
        s, n = int(run["successes"]), int(run["episodes"])
        episodes = [{"task": None, "success": i < s} for i in range(n)]
      frames = {k: _float(row[k]) for k in report.FRAME_KEYS if n_seeds == 1 and row.get(k) not in ("", "nan", None)}
      new.append({"sweep": rep["name"], "version": rep["version"], "cell": cell, "seed": seed,
                  "source": f"{base}; {note}; episode seeds and lengths not kept)", "code": run["code"],
                  "steps": int(run["steps"]) if run["steps"] else None,
                  "batch_size": int(row["batch_size"]) if row["batch_size"].isdigit() else None,
                  "flops_per_step": _float(run["flops_per_step"]), "examples_per_s": _float(run["examples_per_s"]),
                  "wall_seconds": _float(run["wall_seconds"]), "val": frames,
                  "evals": {"": {"episodes": episodes, "latency_ms": _float(run["latency_ms"]),
                                 "eval_seconds": _float(run["eval_seconds"]),
                                 "execute_steps": int(row["execute_steps"]) if row["execute_steps"].isdigit() else 0,
                                 "consistency": None}}})
    for cell, stage in rep["stages"].items():
      if (cell, 0) not in have and cell in {c.name for c in sweep.cells}:
        new.append({"sweep": rep["name"], "version": rep["version"], "cell": cell, "seed": 0,
                    "source": f"{base}; held-out metrics of its one seed, taken as seed 0, from results.md)",
                    "code": "", "steps": stage["steps"], "batch_size": None, "flops_per_step": float("nan"),
                    "examples_per_s": float("nan"), "wall_seconds": float("nan"), "val": stage["val"], "evals": {}})
    if new:
      records.write_meta(rdir, meta)
      written += [records.write(rdir, r) for r in new]
  return written


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("usage: scripts/rebuild_records.py REPORT_DIR [REPORT_DIR...]")
  try:
    written = rebuild([read_report(pathlib.Path(d)) for d in argv[1:]])
  except (ValueError, OSError) as e:
    raise app.UsageError(str(e)) from None
  for p in written:
    print(f"wrote {p}")
  print(f"{len(written)} record(s) written")


if __name__ == "__main__":
  app.run(main)
