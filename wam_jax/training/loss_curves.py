"""Two revisions' loss curves compared against the seed spread (``scripts/compare_loss_curves.py``).

Two float programs with different reduction orders drift apart step by step, and a curve falling fast
turns a small shift in time into a large difference, so a speed change is judged against the same
code at other seeds: per window of steps, the seed-mean loss of each side; the noise S is the mean
absolute relative window difference between two seeds of one side (over all such pairs). A change
passes when the seed-means differ by at most 2 S / sqrt(seeds) (about two standard errors of a
difference of two means) or a fixed tolerance, whichever is larger, and each seed's first-step loss
agrees to 1e-4 (same init, same batch: only the program differs).
"""

import json
import pathlib

import numpy as np


def losses(run: pathlib.Path) -> dict[int, float]:
  """step -> train/loss from a run's metrics.jsonl ({} if it has none)."""
  path = run / "metrics.jsonl"
  if not path.exists():
    return {}
  rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def windows(a: dict[int, float], b: dict[int, float], window: int) -> list[dict]:
  """Mean loss of both curves per window of common steps, and b's relative difference from a."""
  steps = sorted(set(a) & set(b))
  rows = []
  for start in range(0, len(steps), window):
    chunk = steps[start:start + window]
    ma, mb = np.mean([a[s] for s in chunk]), np.mean([b[s] for s in chunk])
    rows.append({"steps": f"{chunk[0]}-{chunk[-1]}", "a": float(ma), "b": float(mb), "rel_diff": float((mb - ma) / abs(ma))})
  return rows


def compare(base: list[dict[int, float]], head: list[dict[int, float]], window: int, tolerance: float) -> dict:
  """Seed-mean windows of base vs head, the seed spread and the verdict (module docstring): lists of
  curves, one per seed, the same seeds in the same order on both sides."""
  mean = lambda curves: {s: float(np.mean([c[s] for c in curves])) for s in set.intersection(*map(set, curves))}
  rows = windows(mean(base), mean(head), window)
  pairs = [(a, b) for side in (base, head) for i, a in enumerate(side) for b in side[i + 1:]]
  spread = float(np.mean([np.mean([abs(r["rel_diff"]) for r in windows(a, b, window)]) for a, b in pairs]))
  first = [(h[min(h)] - b[min(b)]) / abs(b[min(b)]) for b, h in zip(base, head)]
  mad = float(np.mean([abs(r["rel_diff"]) for r in rows]))
  bound = max(2 * spread / np.sqrt(len(base)), tolerance)
  return {"windows": rows, "first_step_rel_diff": float(max(first, key=abs)), "mean_abs_rel_diff": mad,
          "seed_spread": spread, "bound": float(bound), "seeds": len(base),
          "within_tolerance": bool(max(map(abs, first)) <= 1e-4 and mad <= bound)}
