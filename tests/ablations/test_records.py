"""Run records (wam_jax/ablations/records.py): seeds finished on different machines pool into one
report and one claim, a record-only report equals the report of the run directories, a local run
replaces its record, and the harness skips recorded runs unless a run to do needs their checkpoint."""

import json
import pathlib
import shutil

import pytest

from tests.ablations import fake_runs
from tests.ablations.test_report import _fake_run
from wam_jax.ablations import compare
from wam_jax.ablations import records
from wam_jax.ablations import report
from wam_jax.ablations import sweep as sweep_lib
from wam_jax.ablations.compare import Comparison, Side

META = {"name": "fake", "version": 3, "description": "A fake sweep.", "seeds": [0, 1],
        "cells": [{"name": "pre", "config": "", "overrides": {}},
                  {"name": "wam", "method": "wam", "n_demos": 2, "config": "", "overrides": {}},
                  {"name": "vla", "method": "vla", "n_demos": 2, "config": "", "overrides": {}}]}
RUNS = {("wam", 0): {"reach-v3": (18, 20), "push-v3": (10, 20)}, ("wam", 1): {"reach-v3": (17, 20), "push-v3": (9, 20)},
        ("vla", 0): {"reach-v3": (6, 20), "push-v3": (10, 20)}, ("vla", 1): {"reach-v3": (5, 20), "push-v3": (11, 20)}}


def _machine(root: pathlib.Path, seeds, *, stage=False) -> pathlib.Path:
  """A sweep workdir ``fake_v3`` holding the runs of ``seeds`` (and the pretraining stage)."""
  wd = root / "fake_v3"
  wd.mkdir(parents=True)
  (wd / "sweep.json").write_text(json.dumps(META))
  for (cell, seed), tasks in RUNS.items():
    if seed in seeds:
      _fake_run(wd / cell / f"seed_{seed}", tasks, latency=2.0 + seed, wall=100.0 * (seed + 1))
  if stage:
    _fake_run(wd / "pre" / "seed_0", {}, frames={"video_psnr": 24.0, "copy_last_psnr": 23.0})
    (wd / "pre" / "seed_0" / "config.json").write_text(json.dumps({"train": {"steps": 100, "batch_size": 8},
                                                                   "eval": {"at_end": False}}))
    shutil.rmtree(wd / "pre" / "seed_0" / "eval")
  return wd


def _same(rows_a, rows_b) -> bool:
  """Equal report rows (NaN, for a metric no run has, equal to NaN)."""
  return json.dumps(rows_a, sort_keys=True) == json.dumps(rows_b, sort_keys=True)


def _strip_generated(text: str) -> str:
  return "\n".join(l for l in text.splitlines() if "generated" not in l and "finished run(s)" not in l)


def test_seeds_from_two_machines_pool_into_the_report_of_both(tmp_path):
  both = report.write_report(_machine(tmp_path / "one", [0, 1], stage=True), str(tmp_path / "ref"), plots=False)
  # Machine A finishes seed 0 and the stage and commits the report with its records.
  results = tmp_path / "results" / "fake"
  a = report.write_report(_machine(tmp_path / "a", [0], stage=True), str(results), plots=False)
  rdir = results / "records" / "v3"
  assert sorted(p.relative_to(rdir).as_posix() for p in a["records"]) == [
      "pre/seed_0.json", "vla/seed_0.json", "wam/seed_0.json"]
  rec = json.loads((rdir / "wam" / "seed_0.json").read_text())
  assert (rec["sweep"], rec["version"], rec["source"], rec["steps"]) == ("fake", 3, "run", 100)
  assert len(rec["evals"][""]["episodes"]) == 40 and set(rec["evals"][""]["episodes"][0]) == {
      "task", "seed", "success", "length"}
  # Machine B (a fresh clone: A's run directories are gone) finishes seed 1 only.
  b = report.write_report(_machine(tmp_path / "b", [1]), str(results), plots=False)
  assert [(r.cell, r.seed) for r in b["runs"]] == [("wam", 0), ("wam", 1), ("vla", 0), ("vla", 1)]
  assert _same(b["rows"], both["rows"])
  assert (results / "results.csv").read_text() == (tmp_path / "ref" / "results.csv").read_text()
  md = (results / "results.md").read_text()
  assert _strip_generated(md) == _strip_generated((tmp_path / "ref" / "results.md").read_text())
  assert "pre | 1 | 100 | video_psnr | 24 |" in md  # the stage's held-out metric, from its record
  # The records alone (no workdir on this machine) give the same report.
  c = report.write_report(tmp_path / "gone" / "fake_v3", str(results), plots=False)
  assert _same(c["rows"], both["rows"]) and c["records"] == []


def test_a_local_run_replaces_its_record_and_records_of_another_version_are_refused(tmp_path):
  results = tmp_path / "results" / "fake"
  report.write_report(_machine(tmp_path / "a", [0]), str(results), plots=False)
  rerun = _machine(tmp_path / "b", [])
  _fake_run(rerun / "wam" / "seed_0", {"reach-v3": (0, 20), "push-v3": (0, 20)})
  out = report.write_report(rerun, str(results), plots=False)
  wam = next(r for r in out["rows"] if r["cell"] == "wam")
  assert wam["pooled"]["successes"] == 0 and wam["seeds"] == [0]
  rec = json.loads((results / "records" / "v3" / "wam" / "seed_0.json").read_text())
  assert not any(e["success"] for e in rec["evals"][""]["episodes"])
  rec["version"] = 2
  (results / "records" / "v3" / "wam" / "seed_0.json").write_text(json.dumps(rec))
  with pytest.raises(ValueError, match=r"wam/seed_0.json: a record of fake v2, not of fake v3"):
    report.write_report(tmp_path / "gone" / "fake_v3", str(results), plots=False)
  with pytest.raises(ValueError, match="does not say the version"):
    report.write_report(tmp_path / "gone" / "fake", str(results), plots=False)


def test_claims_read_the_records_and_leave_out_runs_without_a_per_task_split(tmp_path):
  results = tmp_path / "results"
  report.write_report(_machine(tmp_path / "a", [0, 1]), str(results / "fake"), plots=False)
  ref = compare.compare(tmp_path / "a", Comparison("1", "wam vs vla", Side("fake_v3", "wam"), Side("fake_v3", "vla")))
  sweeps = tmp_path / "empty"  # this machine ran none of it
  row = compare.compare(sweeps, Comparison("1", "wam vs vla", Side("fake_v3", "wam"), Side("fake_v3", "vla")),
                        records_root=results)
  assert row == ref and row["verdict"] == "supported"
  assert compare.compare(sweeps, Comparison("1", "x", Side("fake_v3", "wam"), Side("fake_v3", "vla")))[
      "verdict"] == "not run"  # without the records: nothing
  # A record rebuilt from a pooled table: its total, no per-task split (task None).
  p = results / "fake" / "records" / "v3" / "vla" / "seed_1.json"
  rec = json.loads(p.read_text())
  rec["source"] = "rebuilt from a pooled table"
  for e in rec["evals"][""]["episodes"]:
    e["task"] = None
  p.write_text(json.dumps(rec))
  push = compare.compare(sweeps, Comparison("3", "push", Side("fake_v3", "wam"), Side("fake_v3", "vla"),
                                            tasks=("push-v3",)), records_root=results)
  assert push["reference_stats"]["seeds"] == [0] and push["reference_stats"]["episodes"] == 20
  assert list(push["seed_diffs"]) == [0]
  whole = compare.compare(sweeps, Comparison("1", "all", Side("fake_v3", "wam"), Side("fake_v3", "vla")),
                          records_root=results)
  assert whole["reference_stats"]["episodes"] == 80  # the total still counts
  out = report.write_report(sweeps / "fake_v3", str(results / "fake"), plots=False)
  vla = next(r for r in out["rows"] if r["cell"] == "vla")
  assert vla["per_task"]["push-v3"]["episodes"] == 20 and vla["pooled"]["episodes"] == 80
  assert "vla seed 1 (rebuilt from a pooled table)" in (results / "fake" / "results.md").read_text()


def test_the_harness_skips_recorded_runs_unless_a_run_to_do_needs_their_checkpoint(tmp_path, monkeypatch):
  started = []
  monkeypatch.setattr(sweep_lib, "command", fake_runs.finishing_command(started))
  sweep = sweep_lib.Sweep(name="shared", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("pretrain", "experiments/configs/video_wam.py:pretrain_tiny", stage_seed=0),
      sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="pretrain"),
      sweep_lib.Cell("vla", "experiments/configs/vla_baseline.py:tiny")))
  # Machine A finished seed 0 of everything; its records say so, its directories are gone.
  recorded = {("pretrain", 0): set(), ("policy", 0): {""}, ("vla", 0): {""}}
  jobs = sweep_lib.plan(sweep, tmp_path / "b", recorded=recorded)
  state = {j.label: j.state for j in jobs}
  # seed 1's policy needs the stage's checkpoint, which no record holds: the stage runs again.
  assert state == {"pretrain/seed_0": "pending", "policy/seed_0": "recorded", "vla/seed_0": "recorded",
                   "policy/seed_1": "pending", "vla/seed_1": "pending"}
  assert "policy/seed_1 needs its run here" in next(j for j in jobs if j.label == "pretrain/seed_0").detail
  summary = sweep_lib.run(sweep, tmp_path / "b", max_parallel=2, poll_seconds=0.05, log=[].append,
                          recorded=recorded)
  assert sorted(started) == ["policy/seed_1", "pretrain/seed_0", "vla/seed_1"]
  assert summary["recorded"] == ["policy/seed_0", "vla/seed_0"] and not summary["failed"]
  # With seed 1 recorded too, nothing is left to run, the stage included.
  started.clear()
  recorded.update({("policy", 1): {""}, ("vla", 1): {""}})
  jobs = sweep_lib.plan(sweep, tmp_path / "c", recorded=recorded)
  assert {j.state for j in jobs} == {"recorded"}
  assert "0 runs to do" in sweep_lib.format_plan(sweep, jobs, 2)


def test_recorded_reads_the_evaluations_of_each_record(tmp_path):
  rdir = records.records_dir("fake", 3, tmp_path)
  assert rdir == tmp_path / "fake" / "records" / "v3" and records.recorded(rdir) == {}
  records.write(rdir, {"sweep": "fake", "version": 3, "cell": "wam", "seed": 2, "evals": {"": {}, "paraphrase": {}}})
  assert records.recorded(rdir) == {("wam", 2): {"", "paraphrase"}}
  assert not list(rdir.rglob("*.tmp"))


def test_records_rebuilt_from_a_report_without_run_directories_give_the_same_report(tmp_path):
  from scripts import rebuild_records
  sweep = sweep_lib.Sweep(name="fake", version=3, seeds=(0, 1), cells=tuple(
      sweep_lib.Cell(c["name"], "experiments/configs/vla_baseline.py:tiny", method=c.get("method", ""),
                     n_demos=c.get("n_demos")) for c in META["cells"]))
  meta = dict(META, cells=[c.spec() for c in sweep.cells])
  old = _machine(tmp_path / "old", [0], stage=True)
  (old / "sweep.json").write_text(json.dumps(meta))
  _fake_run(old / "vla" / "seed_1", RUNS["vla", 1])  # vla pools two seeds: no per-task split per seed
  legacy = tmp_path / "legacy"
  ref = report.write_report(old, str(legacy), plots=False)
  shutil.rmtree(legacy / "records")  # a report from before records existed: tables only
  shutil.rmtree(old)                 # and its machine is gone
  written = rebuild_records.rebuild([rebuild_records.read_report(legacy)], load_sweep=lambda name: sweep)
  assert len(written) == 4  # wam 0, vla 0, vla 1, the stage
  recs = {p.parent.name + "/" + p.stem: json.loads(p.read_text()) for p in written}
  assert "per-task counts exact" in recs["wam/seed_0"]["source"]
  assert {e["task"] for e in recs["vla/seed_1"]["evals"][""]["episodes"]} == {None}
  assert sum(e["success"] for e in recs["vla/seed_1"]["evals"][""]["episodes"]) == 16
  assert recs["pre/seed_0"]["val"] == {"video_psnr": 24.0, "copy_last_psnr": 23.0} and recs["pre/seed_0"]["evals"] == {}
  again = report.write_report(tmp_path / "gone" / "fake_v3", str(legacy), plots=False)
  a, b = ref["rows"], again["rows"]
  for ra, rb in zip(a, b):
    assert (ra["cell"], ra["seeds"], ra["pooled"], ra["seed_means"], ra["steps"], ra["latency_ms"]) == (
        rb["cell"], rb["seeds"], rb["pooled"], rb["seed_means"], rb["steps"], rb["latency_ms"])
  assert a[0]["per_task"] == b[0]["per_task"]  # wam: one seed, exact
  assert b[1]["per_task"] == {}  # vla pooled two seeds: neither split is known
  assert rebuild_records.rebuild([rebuild_records.read_report(legacy)], load_sweep=lambda name: sweep) == []


def test_a_run_recorded_by_another_sweep_is_recorded_for_this_one(tmp_path):
  """link_identical_records: a train cell whose config and seed, and whose chain of init_from
  stages (configs and seeds), match another sweep's recorded run gets that record (naming it); a
  different config, a different stage, a seed without a record, or a run this sweep recorded itself
  gets none; linked records are not sources; a stage (one run for every seed) is linked once."""
  vla = "experiments/configs/vla_baseline.py:tiny"
  pretrain, policy = "experiments/configs/video_wam.py:pretrain_tiny", "experiments/configs/video_wam.py:policy_tiny"
  other = sweep_lib.Sweep(name="other", version=2, seeds=(0, 1), cells=(
      sweep_lib.Cell("vla", vla, overrides={"train.steps": 7}),
      sweep_lib.Cell("pretrain", pretrain, stage_seed=0),
      sweep_lib.Cell("policy", policy, init_from="pretrain")))
  odir = records.records_dir("other", 2, tmp_path)
  for cell, seed in (("vla", 0), ("vla", 1), ("pretrain", 0), ("policy", 0), ("policy", 1)):
    records.write(odir, {"sweep": "other", "version": 2, "cell": cell, "seed": seed, "evals": {"": {}},
                         "wall_seconds": 60.0, "source": "run here"})
  this = sweep_lib.Sweep(name="this", version=1, seeds=(0, 1, 2), cells=(
      sweep_lib.Cell("same_vla", vla, overrides={"train.steps": 7}),
      sweep_lib.Cell("longer_vla", vla, overrides={"train.steps": 8}),
      sweep_lib.Cell("video_pretrain", pretrain, stage_seed=0),  # another name, the same stage
      sweep_lib.Cell("policy", policy, init_from="video_pretrain"),
      sweep_lib.Cell("longer_pretrain", pretrain, stage_seed=0, overrides={"train.steps": 3}),
      sweep_lib.Cell("policy_b", policy, init_from="longer_pretrain"),  # the same config, another stage
      sweep_lib.Cell("seed1_pretrain", pretrain, stage_seed=1),
      sweep_lib.Cell("policy_c", policy, init_from="seed1_pretrain"),  # the stage at another seed
      sweep_lib.Cell("scratch", policy, overrides={"train.init_from": ""})))  # no stage at all
  rdir = records.records_dir("this", 1, tmp_path)
  records.write(rdir, {"sweep": "this", "version": 1, "cell": "same_vla", "seed": 1, "evals": {"": {}},
                       "source": "its own run"})
  lines = []
  linked = sweep_lib.link_identical_records(this, root=tmp_path, others=[other], log=lines.append)
  # same_vla seed 1: its own record; seed 2: none anywhere. video_pretrain: one run for the three
  # seeds, recorded once. policy: restored from an identical stage.
  assert linked == ["same_vla/seed_0", "video_pretrain/seed_0", "policy/seed_0", "policy/seed_1"], linked
  assert len(lines) == len(linked)
  rec = json.loads(records.path(rdir, "same_vla", 0).read_text())
  assert (rec["sweep"], rec["version"], rec["cell"], rec["linked_from"]) == ("this", 1, "same_vla",
                                                                             "other v2 vla/seed_0")
  assert rec["source"].startswith("the same run as other v2 vla/seed_0") and rec["wall_seconds"] == 60.0
  assert "identical stages" in json.loads(records.path(rdir, "policy", 1).read_text())["source"]
  assert json.loads(records.path(rdir, "same_vla", 1).read_text())["source"] == "its own run"
  assert records.read_meta(rdir)["name"] == "this" and "the same run as other v2 vla/seed_0" in lines[0]
  for cell in ("longer_vla", "policy_b", "policy_c", "scratch"):
    assert not records.path(rdir, cell, 0).exists(), cell
  assert sweep_lib.link_identical_records(this, root=tmp_path, others=[other]) == []  # already recorded

  third = sweep_lib.Sweep(name="third", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("vla", vla, overrides={"train.steps": 7}),))
  assert sweep_lib.link_identical_records(third, root=tmp_path, others=[this]) == []  # a link is no source


def test_an_extra_evaluation_reports_from_the_sweeps_one_set_of_records(tmp_path):
  """``--eval=paraphrase --out=RESULTS``: tables in RESULTS/paraphrase, records (which hold every
  evaluation of a run) only in RESULTS/records; the report of the records alone is the same."""
  meta = dict(META, extra_evals={"paraphrase": {"instructions": "paraphrase"}})
  wd = _machine(tmp_path / "a", [0, 1])
  (wd / "sweep.json").write_text(json.dumps(meta))
  for (cell, seed) in RUNS:
    run = wd / cell / f"seed_{seed}"
    shutil.copytree(run / "eval", run / "eval_paraphrase")
  results = tmp_path / "results"
  main = report.write_report(wd, str(results), plots=False)
  para = report.write_report(wd, str(results), plots=False, eval_name="paraphrase")
  assert (results / "paraphrase" / "results.md").exists() and not (results / "paraphrase" / "records").exists()
  assert len(para["runs"]) == len(main["runs"]) == 4
  alone = report.write_report(tmp_path / "gone" / "fake_v3", str(results), plots=False, eval_name="paraphrase")
  assert _same(alone["rows"], para["rows"])
