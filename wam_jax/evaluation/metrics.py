"""Success-rate statistics for closed-loop evaluation."""

import math
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """95% Wilson score interval for a binomial rate (sane at 0 and n successes)."""
  if n == 0:
    return 0.0, 1.0
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  lo = 0.0 if successes == 0 else max(0.0, centre - half)
  hi = 1.0 if successes == n else min(1.0, centre + half)
  return lo, hi


def latency_stats(latencies_ms: Sequence[float]) -> dict:
  """{"calls", "mean_ms", "p50_ms", "p95_ms"} of policy call latencies."""
  x = np.asarray(latencies_ms, np.float64)
  if x.size == 0:
    return {"calls": 0, "mean_ms": float("nan"), "p50_ms": float("nan"), "p95_ms": float("nan")}
  return {"calls": int(x.size), "mean_ms": float(x.mean()),
          "p50_ms": float(np.percentile(x, 50)), "p95_ms": float(np.percentile(x, 95))}


def task_summary(episodes: Sequence[dict]) -> dict:
  """Aggregates one task's episode records (success, length)."""
  n = len(episodes)
  wins = sum(bool(e["success"]) for e in episodes)
  lo, hi = wilson_interval(wins, n)
  lengths = [e["length"] for e in episodes]
  win_lengths = [e["length"] for e in episodes if e["success"]]
  return {
      "episodes": n, "successes": wins, "success_rate": wins / max(n, 1),
      "ci95": [lo, hi],
      "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
      "mean_success_length": float(np.mean(win_lengths)) if win_lengths else float("nan"),
  }
