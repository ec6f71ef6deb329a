"""The report from handmade run directories (no training): pooled success, Wilson intervals,
per-seed and per-task numbers, FLOPs, latency and frame metrics; plots drawn; unfinished
runs left out."""

import csv
import json
import pathlib

import pytest

from wam_jax.ablations import report
from wam_jax.ablations import sweep as sweep_lib
from wam_jax.evaluation import metrics

TASKS = ("reach-v3", "push-v3")


def _score_test_bounds(k, n, z=1.959964):
  """Independent reference: the p where the score test |k/n - p| = z sqrt(p(1-p)/n) (bisection)."""
  f = lambda p: abs(k / n - p) - z * (p * (1 - p) / n) ** 0.5
  def root(lo, hi):  # f(lo) and f(hi) of opposite signs
    for _ in range(100):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if (f(mid) > 0) == (f(lo) > 0) else (lo, mid)
    return (lo + hi) / 2
  p_hat = k / n
  return (0.0 if k == 0 else root(0.0, p_hat)), (1.0 if k == n else root(p_hat, 1.0))


def test_wilson_interval_matches_reference_values():
  # Published 95% Wilson intervals: 5/10 -> [0.2366, 0.7634], 0/10 -> [0, 0.2775].
  assert metrics.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
  assert metrics.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
  for k, n in ((4, 8), (81, 263), (599, 600), (1, 600)):
    assert metrics.wilson_interval(k, n) == pytest.approx(_score_test_bounds(k, n), abs=1e-9)


def _fake_run(rdir: pathlib.Path, successes: dict, *, steps=100, flops=2e9, latency=3.0,
              wall=600.0, done=True, frames=None):
  """A finished run's files as the trainer, the evaluator and the sweep write them."""
  rdir.mkdir(parents=True)
  (rdir / "config.json").write_text(json.dumps({"train": {"steps": steps, "batch_size": 64}}))
  rows = [{"step": 0, "run/flops_per_step": flops, "run/params": 1e6},
          {"step": 50, "train/loss": 0.5, "train/examples_per_s": 200.0},
          {"step": 100, "train/loss": 0.4, "train/examples_per_s": 220.0}]
  if frames:
    rows.append({"step": 100, **{f"val/{k}": v for k, v in frames.items()}})
  (rdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut by a k')
  episodes = [{"task": t, "seed": 100_000 + i, "success": i < k, "length": 50, "frozen_fraction": 0.0}
              for t, (k, n) in successes.items() for i in range(n)]
  results = {"episodes": episodes, "latency": {"mean_ms": latency, "p50_ms": latency, "p95_ms": latency, "calls": 9},
             "seconds": 60.0, "settings": {"execute_steps": 4}, "mean": {}}
  (rdir / "eval").mkdir()
  (rdir / "eval" / "results.json").write_text(json.dumps(results))
  (rdir / "run.json").write_text(json.dumps({"wall_seconds": wall, "attempts": []}))
  if done:
    (rdir / "DONE").write_text("{}")


@pytest.fixture
def sweep_dir(tmp_path):
  meta = {"name": "fake", "version": 2, "description": "A fake sweep.", "seeds": [0, 1],
          "cells": [{"name": "a_n2", "method": "a", "n_demos": 2, "config": "", "overrides": {}},
                    {"name": "a_n20", "method": "a", "n_demos": 20, "config": "", "overrides": {}},
                    {"name": "b_n2", "method": "b", "n_demos": 2, "config": "", "overrides": {}},
                    {"name": "never", "method": "b", "n_demos": 20, "config": "", "overrides": {}}]}
  (tmp_path / "sweep.json").write_text(json.dumps(meta))
  _fake_run(tmp_path / "a_n2" / "seed_0", {"reach-v3": (3, 4), "push-v3": (0, 4)}, latency=2.0, wall=500)
  _fake_run(tmp_path / "a_n2" / "seed_1", {"reach-v3": (1, 4), "push-v3": (0, 4)}, latency=4.0, wall=700)
  _fake_run(tmp_path / "a_n20" / "seed_0", {"reach-v3": (4, 4), "push-v3": (2, 4)})
  _fake_run(tmp_path / "a_n20" / "seed_1", {"reach-v3": (4, 4), "push-v3": (3, 4)})
  _fake_run(tmp_path / "b_n2" / "seed_0", {"reach-v3": (2, 4), "push-v3": (1, 4)},
            frames={"video_psnr": 25.0, "video_ssim": 0.8, "copy_last_psnr": 22.0, "copy_last_ssim": 0.7})
  _fake_run(tmp_path / "b_n2" / "seed_1", {"reach-v3": (4, 4), "push-v3": (4, 4)}, done=False)  # unfinished
  return tmp_path


def test_report_numbers(sweep_dir):
  out = report.write_report(sweep_dir, plots=True)
  with open(sweep_dir / "report" / "results.csv") as f:
    rows = {r["cell"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"a_n2", "a_n20", "b_n2"}
  a = rows["a_n2"]
  # Pooled over both seeds: reach 3+1 of 8, push 0 of 8 -> 4 of 16.
  assert (int(a["successes"]), int(a["episodes"])) == (4, 16)
  assert float(a["success_rate"]) == 0.25
  assert (float(a["ci95_lo"]), float(a["ci95_hi"])) == pytest.approx(metrics.wilson_interval(4, 16))
  assert [float(x) for x in a["seed_means"].split()] == [3 / 8, 1 / 8]
  assert float(a["task:reach-v3"]) == 0.5 and float(a["task:push-v3"]) == 0.0
  assert float(a["latency_ms"]) == 3.0 and float(a["wall_seconds_per_run"]) == 600.0
  assert float(a["flops_per_step"]) == 2e9 and float(a["train_flops"]) == 2e11
  assert float(a["examples_per_s"]) == 210.0  # median of the logged rates
  assert a["video_psnr"] == "nan"
  assert float(rows["a_n20"]["success_rate"]) == 13 / 16
  b = rows["b_n2"]  # seed 1 is unfinished: left out
  assert b["seeds"] == "0" and (int(b["successes"]), int(b["episodes"])) == (3, 8)
  assert float(b["video_psnr"]) == 25.0 and float(b["copy_last_ssim"]) == 0.7
  md = (sweep_dir / "report" / "results.md").read_text()
  assert "| a_n2 | a | 2 | **25%** | 10%-49% | 38% 12% | 2/2 | 16 |" in md
  assert "| b_n2 | b | 2 | **38%** |" in md and "1/2 |" in md
  assert "25.0 (22.0)" in md and "Cells with no finished run yet: never." in md
  for name in ("success_vs_demos.png", "success_vs_latency.png"):
    assert (sweep_dir / "report" / name).stat().st_size > 1000
  assert len(out["runs"]) == 5


def test_report_of_a_non_sweep_dir_names_it(tmp_path):
  with pytest.raises(ValueError, match="no sweep.json"):
    report.write_report(tmp_path)


def test_an_eval_cell_is_a_policy_row_and_a_label_cell_is_not(tmp_path):
  """An eval cell's run (plan with video, act with an IDM: only eval/results.json as
  experiments/eval.py writes it, and run.json) is tabulated like a trained policy, its training
  columns blank; a label cell's finished run (a dataset) is named, not read as a policy."""
  from wam_jax.evaluation import evaluate
  from wam_jax.evaluation import report as eval_report
  meta = {"name": "claim2", "version": 1, "seeds": [0, 1], "cells": [
      {"name": "label", "kind": "label", "init_from": "idm", "method": "label", "n_demos": 2, "config": "",
       "overrides": {}},
      {"name": "plan", "kind": "eval", "init_from": "idm", "video_from": "video", "method": "plan_idm",
       "n_demos": 2, "config": "", "overrides": {}},
      {"name": "vla", "method": "vla", "n_demos": 2, "config": "", "overrides": {}}]}
  (tmp_path / "sweep.json").write_text(json.dumps(meta))
  (tmp_path / "label" / "seed_0" / sweep_lib.LABELLED).mkdir(parents=True)
  (tmp_path / "label" / "seed_0" / "DONE").write_text("{}")
  settings = dict(seed_offset=100_000, num_workers=1, resolution=64, camera="corner4", episodes_per_task=4,
                  max_steps=200, execute_steps=4, temporal_ensemble=False, ensemble_decay=0.01,
                  consistency=True, instructions="train")
  for seed, wins in ((0, {"reach-v3": 4, "push-v3": 1}), (1, {"reach-v3": 2, "push-v3": 0})):
    episodes = [{"task": t, "seed": 100_000 + i, "instruction": t, "success": i < k, "length": 30,
                 "frozen_fraction": 0.0, "latencies_ms": [10.0 + seed] * 5} for t, k in wins.items() for i in range(4)]
    rdir = tmp_path / "plan" / f"seed_{seed}"
    eval_report.write_results(rdir / "eval", evaluate._summarize(episodes, list(wins), "plan_idm", 30.0, settings))
    (rdir / "run.json").write_text(json.dumps({"wall_seconds": 40.0, "attempts": [{"code": "abc"}]}))
    (rdir / "DONE").write_text("{}")
  _fake_run(tmp_path / "vla" / "seed_0", {"reach-v3": (4, 4), "push-v3": (2, 4)})

  out = report.write_report(tmp_path, plots=True)
  assert [r["cell"] for r in out["rows"]] == ["plan", "vla"]
  with open(tmp_path / "report" / "results.csv") as f:
    rows = {r["cell"]: r for r in csv.DictReader(f)}
  plan = rows["plan"]
  assert (plan["method"], plan["n_demos"], plan["seeds"]) == ("plan_idm", "2", "0 1")
  assert (int(plan["successes"]), int(plan["episodes"])) == (7, 16)
  assert (float(plan["ci95_lo"]), float(plan["ci95_hi"])) == pytest.approx(metrics.wilson_interval(7, 16))
  assert [float(x) for x in plan["seed_means"].split()] == [5 / 8, 2 / 8]
  assert (float(plan["task:reach-v3"]), float(plan["task:push-v3"])) == (6 / 8, 1 / 8)
  assert float(plan["latency_ms"]) == 10.5 and float(plan["wall_seconds_per_run"]) == 40.0
  assert plan["steps"] == plan["batch_size"] == plan["train_flops"] == "" and plan["flops_per_step"] == "nan"
  assert plan["execute_steps"] == "4" and rows["vla"]["steps"] == "100"
  md = (tmp_path / "report" / "results.md").read_text()
  assert "| plan | plan_idm | 2 | **44%** |" in md and "| 2/2 | 16 | - | - | 0.7 min | 10.5 ms |" in md
  assert "| plan | 0 | 62% | 8 | - |" in md
  assert "models that are not policies): label." in md
  assert (tmp_path / "report" / "success_vs_demos.png").stat().st_size > 1000
