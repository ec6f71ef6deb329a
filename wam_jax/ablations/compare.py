"""Method vs reference from finished sweep runs: the difference in success with its 95% interval,
and what it says about a claim (shared/PROTOCOL.md: supported, contradicted or unresolved).

A ``Comparison`` names two cells (a sweep workdir + cell name each) and optionally a subset of
tasks and an extra evaluation (``eval_<name>/``, e.g. the paraphrase evaluation of claim 4).
``compare`` pools every evaluation episode of every finished seed of each cell (as the report
does; a sweep's runs are its workdir's and its committed records', records.py) and returns:

  rate, ci95            each side's pooled success and Wilson interval
  diff, diff_ci95       method - reference, with Newcombe's interval for a difference of two
                        proportions (hybrid score, "method 10", built from the two Wilson intervals)
  seed_diffs            per training seed present on both sides: method - reference success
  verdict               "supported" when the interval lies above 0, "contradicted" below 0,
                        "unresolved" when it holds 0; "not run" while a side has no finished run

The episodes are treated as independent draws. They are not quite: a training seed's episodes
share its weights, so the interval is narrower than one that models seed variance; the per-seed
differences are printed beside it so a reader sees when the seeds disagree. Reads files only.
"""

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

from wam_jax.ablations import records
from wam_jax.ablations import report
from wam_jax.evaluation import metrics


@dataclasses.dataclass(frozen=True)
class Side:
  sweep: str            # the sweep's workdir name under the sweeps root, e.g. "families_v3"
  cell: str


@dataclasses.dataclass(frozen=True)
class Comparison:
  claim: str            # "1".."4" (PROTOCOL.md)
  name: str             # what the row says, e.g. "video WAM vs from scratch, N=2"
  method: Side
  reference: Side
  tasks: tuple = ()     # () = every evaluated task
  eval_name: str = ""   # an extra evaluation of both sides (eval_<name>/), "" = the training one


def newcombe_interval(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float, float]:
  """(p1 - p2, lower, upper): Newcombe's hybrid score interval (1998, method 10) at 95%."""
  p1, p2 = s1 / n1, s2 / n2
  l1, u1 = metrics.wilson_interval(s1, n1)
  l2, u2 = metrics.wilson_interval(s2, n2)
  d = p1 - p2
  return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def records_of(records_root, sweep: str) -> Optional[pathlib.Path]:
  """The records of a sweep workdir named ``<sweep>_v<version>`` under ``records_root`` (records.py),
  None without a root or for a name without a version."""
  parsed = records.parse_workdir_name(sweep)
  return records.records_dir(*parsed, records_root) if records_root and parsed else None


def _runs(root: pathlib.Path, sweep: str, eval_name: str, loaded: dict, records_root=None) -> list:
  """The sweep's finished runs: its workdir under ``root`` and its records under ``records_root``
  ([] if neither exists); ``loaded`` caches each (sweep, evaluation)'s runs across the rows of one
  claims file."""
  workdir, rdir = root / sweep, records_of(records_root, sweep)
  if not (workdir / "sweep.json").exists() and not (rdir and (rdir / "sweep.json").exists()):
    return []
  if (sweep, eval_name) not in loaded:
    loaded[sweep, eval_name] = report.load_runs(workdir, eval_name, rdir)[1]
  return loaded[sweep, eval_name]


def _episodes(root: pathlib.Path, side: Side, tasks: tuple, eval_name: str, loaded: dict,
              records_root=None) -> dict:
  """{training seed: [episode, ...]} of the cell's finished runs (tasks filtered); {} if none. With
  ``tasks``, a run whose record kept no per-task split (task None, records.py) is left out."""
  out = {}
  for run in _runs(root, side.sweep, eval_name, loaded, records_root):
    if run.cell == side.cell:
      eps = [e for e in run.episodes if not tasks or e["task"] in tasks]
      if eps:
        out[run.seed] = eps
  return out


def compare(root, c: Comparison, loaded: Optional[dict] = None, records_root=None) -> dict:
  """One comparison's row (module docstring); ``loaded``: runs already read (``write`` shares it);
  ``records_root``: where the sweeps' committed records are (records.py; None: workdirs only)."""
  root = pathlib.Path(root)
  loaded = {} if loaded is None else loaded
  sides = {k: _episodes(root, getattr(c, k), c.tasks, c.eval_name, loaded, records_root)
           for k in ("method", "reference")}
  row = {"claim": c.claim, "name": c.name, "method": f"{c.method.sweep}/{c.method.cell}",
         "reference": f"{c.reference.sweep}/{c.reference.cell}", "tasks": list(c.tasks),
         "eval": c.eval_name or "train"}
  if not all(sides.values()):
    return dict(row, verdict="not run", missing=[k for k, v in sides.items() if not v])
  for k, by_seed in sides.items():
    eps = [e for seed_eps in by_seed.values() for e in seed_eps]
    s, n = sum(bool(e["success"]) for e in eps), len(eps)
    if n == 0:
      raise ValueError(f"{row[k]}: no evaluation episode of tasks {list(c.tasks)}")
    row[k + "_stats"] = {"successes": s, "episodes": n, "rate": s / n, "ci95": metrics.wilson_interval(s, n),
                         "seeds": sorted(by_seed)}
  m, r = row["method_stats"], row["reference_stats"]
  d, lo, hi = newcombe_interval(m["successes"], m["episodes"], r["successes"], r["episodes"])
  rate = lambda eps: sum(bool(e["success"]) for e in eps) / max(len(eps), 1)
  row.update(diff=d, diff_ci95=(lo, hi),
             seed_diffs={seed: rate(sides["method"][seed]) - rate(sides["reference"][seed])
                         for seed in sorted(set(sides["method"]) & set(sides["reference"]))},
             verdict="supported" if lo > 0 else "contradicted" if hi < 0 else "unresolved")
  return row


def best(root, sides: Sequence[Side], records_root=None) -> Optional[Side]:
  """The side with the highest pooled success over its finished runs' training evaluation (the first
  of a tie), None if none has a finished run: e.g. claim 4's "best world-action family"."""
  loaded, scored = {}, []
  for side in sides:
    eps = [e for seed_eps in _episodes(pathlib.Path(root), side, (), "", loaded, records_root).values()
           for e in seed_eps]
    if eps:
      scored.append((sum(bool(e["success"]) for e in eps) / len(eps), side))
  return max(scored, key=lambda t: t[0])[1] if scored else None


def markdown(rows: Sequence[dict], root) -> str:
  out = [f"Method vs reference from the finished runs under `{root}` (`wam_jax/ablations/compare.py`): "
         "pooled success over every evaluation episode of every finished seed, the difference with "
         "Newcombe's 95% interval, per-seed differences. supported / contradicted: the interval lies "
         "above / below 0; unresolved: it holds 0.", "",
         "| claim | comparison | method | reference | difference (95% CI) | per seed | seeds | verdict |",
         "|---|---|---|---|---|---|---|---|"]
  pct = lambda x: f"{100 * x:.0f}%"
  for row in rows:
    if row["verdict"] == "not run":
      out.append(f"| {row['claim']} | {row['name']} | - | - | - | - | - | not run ({', '.join(row['missing'])}) |")
      continue
    m, r = row["method_stats"], row["reference_stats"]
    lo, hi = row["diff_ci95"]
    seeds = ", ".join(f"{100 * v:+.0f}" for v in row["seed_diffs"].values()) or "-"
    out.append(f"| {row['claim']} | {row['name']} | {pct(m['rate'])} ({m['episodes']}) | {pct(r['rate'])} "
               f"({r['episodes']}) | {100 * row['diff']:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) | {seeds} | "
               f"{len(m['seeds'])}/{len(r['seeds'])} | **{row['verdict']}** |")
  return "\n".join(out) + "\n"


_FRAME_STATS = ("psnr_db", "mse", "copy_psnr_db", "copy_mse")


def _pool_frame_stats(parts: Sequence[dict]) -> dict:
  """Frame-weighted mean of per-run consistency stats ({psnr_db, mse, copy_*, frames})."""
  frames = sum(p["frames"] for p in parts)
  pooled = {k: sum(p[k] * p["frames"] for p in parts) / frames if frames else float("nan") for k in _FRAME_STATS}
  return dict(pooled, frames=frames)


def rollout_consistency(root, side: Side, loaded: Optional[dict] = None, records_root=None) -> Optional[dict]:
  """Claim 3's measurement for one cell: the predicted t+k frame of every executed chunk against the
  frame the simulator showed at t+k (eval/results.json "consistency", beside copying the frame at
  t), pooled over the cell's finished seeds, frame-weighted: {"seeds", "mean", "along_episode":
  {steps: stats}, "tasks": {task: stats}}. None while no finished run of the cell has it.
  ``loaded``: runs already read (``write`` shares it with the comparisons)."""
  found = {}
  for run in _runs(pathlib.Path(root), side.sweep, "", {} if loaded is None else loaded, records_root):
    if run.cell == side.cell and run.consistency:
      found[run.seed] = run.consistency
  if not found:
    return None
  parts = list(found.values())
  keys = lambda field: sorted({k for c in parts for k in c.get(field, {})}, key=lambda k: (len(k), k))
  return {"seeds": sorted(found), "mean": _pool_frame_stats([c["mean"] for c in parts]),
          **{field: {k: _pool_frame_stats([c[field][k] for c in parts if k in c.get(field, {})])
                     for k in keys(field)} for field in ("along_episode", "tasks")}}


def _consistency_or_status(root, side: Side, loaded: dict, records_root=None) -> Optional[dict]:
  """``rollout_consistency``, or {"status": ...} when the cell has finished runs none of which
  recorded it (a policy that predicts no frames, or a record rebuilt from a table: records.py), None
  when it has none."""
  found = rollout_consistency(root, side, loaded, records_root)
  if found is None and _episodes(pathlib.Path(root), side, (), "", loaded, records_root):
    return {"status": "finished, no consistency recorded"}
  return found


def consistency_markdown(rows: Sequence[tuple[str, Side, Optional[dict]]]) -> str:
  """rows: (what, side, ``rollout_consistency``) -> a table: the prediction's PSNR against the copy
  guess's, overall and along the episode (predicted minus copy, dB; > 0: the prediction is closer)."""
  bins = sorted({b for _, _, c in rows if c for b in c.get("along_episode", {})}, key=lambda k: int(k.split("-")[0]))
  out = ["| cell | seeds | frames | PSNR predicted (copy) | predicted - copy | MSE predicted / copy | "
         + " | ".join(f"steps {b}" for b in bins) + " |", "|---" * (6 + len(bins)) + "|"]
  for what, side, c in rows:
    if c is None or not c.get("seeds"):
      status = c["status"] if c else "not run"
      out.append(f"| {what} (`{side.sweep}/{side.cell}`) | {status} |" + " |" * (4 + len(bins)))
      continue
    m = c["mean"]
    along = [c["along_episode"].get(b) for b in bins]
    out.append(f"| {what} (`{side.sweep}/{side.cell}`) | {len(c['seeds'])} | {m['frames']} | "
               f"{m['psnr_db']:.2f} ({m['copy_psnr_db']:.2f}) | {m['psnr_db'] - m['copy_psnr_db']:+.2f} dB | "
               f"{m['mse'] / m['copy_mse']:.3f} | "
               + " | ".join(f"{a['psnr_db'] - a['copy_psnr_db']:+.2f}" if a else "-" for a in along) + " |")
  return "\n".join(out) + "\n"


def write(root, comparisons: Sequence[Comparison], out_dir: Optional[str] = None,
          consistency: Sequence[tuple[str, Side]] = (), records_root=None) -> list[dict]:
  """The comparisons' rows; with ``out_dir``, claims.md: their table, then the rollout-consistency
  table of the ``consistency`` cells ((what, side) pairs: claim 3's frame measurement)."""
  loaded = {}
  rows = [compare(root, c, loaded, records_root) for c in comparisons]
  if out_dir:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, root)
    if consistency:
      text += ("\n## Claim 3: the predicted t+k frame along closed-loop rollouts\n\n"
               "Each executed chunk's predicted frame at t+k against the frame the simulator then showed, "
               "beside copying the frame at t (a predictor that does not beat the copy has learned no "
               "dynamics to stay consistent with); pooled over finished seeds, weighted by frames. Along the "
               "episode: predicted minus copy PSNR (dB) per 40-step bin.\n\n"
               + consistency_markdown([(what, side, _consistency_or_status(root, side, loaded, records_root))
                                       for what, side in consistency]))
    (out / "claims.md").write_text(text)
  return rows
