"""The numerics check of speed changes (issue 17 item 5, scripts/compare_loss_curves.py): its verdict on
synthetic loss curves."""

import numpy as np

from wam_jax.training import loss_curves as clc


def _curve(scale=1.0, shift=0, noise=0.0, seed=0):
  rng = np.random.default_rng(seed)
  steps = np.arange(1, 301)
  loss = 0.6 * np.exp(-(steps + shift) / 120) + 0.1
  loss = loss * scale * (1 + noise * rng.standard_normal(len(steps)))
  loss[0] = 0.7  # the first step: same init, same batch
  return dict(zip(steps.tolist(), loss.tolist()))


def test_windows_average_common_steps_and_give_the_relative_difference():
  a = {1: 1.0, 2: 3.0, 3: 2.0}
  b = {1: 1.5, 2: 2.5, 3: 2.0, 4: 9.0}  # step 4 has no partner: left out
  rows = clc.windows(a, b, window=2)
  assert [r["steps"] for r in rows] == ["1-2", "3-3"]
  assert rows[0]["a"] == 2.0 and rows[0]["b"] == 2.0 and rows[0]["rel_diff"] == 0.0
  assert rows[1]["rel_diff"] == 0.0


def test_a_change_inside_the_seed_spread_passes_and_one_outside_it_fails():
  base = [_curve(noise=0.05, seed=0), _curve(noise=0.05, seed=2, shift=15)]  # two seeds of the old code
  same = [_curve(noise=0.05, seed=1), _curve(noise=0.05, seed=3, shift=15)]  # the new code, same seeds
  ok = clc.compare(base, same, window=50, tolerance=0.0)
  assert ok["within_tolerance"] and ok["seeds"] == 2 and ok["seed_spread"] > 0.01, ok
  worse = [_curve(scale=1.3, noise=0.05, seed=1), _curve(scale=1.3, noise=0.05, seed=3, shift=15)]
  bad = clc.compare(base, worse, window=50, tolerance=0.0)
  assert not bad["within_tolerance"] and bad["mean_abs_rel_diff"] > bad["bound"], bad
  # The absolute tolerance is accepted whatever the seeds' spread.
  assert clc.compare(base, worse, window=50, tolerance=0.5)["within_tolerance"]


def test_a_different_first_step_loss_fails_whatever_the_curve():
  base = [_curve(), _curve(shift=10)]
  head = [dict(c) for c in base]
  head[1][1] = base[1][1] * (1 + 1e-3)  # same init and batch must give the same first loss
  result = clc.compare(base, head, window=50, tolerance=1.0)
  assert not result["within_tolerance"] and abs(result["first_step_rel_diff"] - 1e-3) < 1e-9
