"""The sweep harness end to end: two tiny cells x 2 seeds on synthetic data, each trained and
evaluated closed loop (1 MetaWorld episode) in its own subprocess; the sweep is SIGKILLed
mid-way and rerun: finished runs are not redone, the interrupted one resumes from its checkpoint,
and the report's numbers equal a direct computation from the runs' JSON files."""

import copy
import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.ablations import fake_runs
from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from wam_jax.ablations import records
from wam_jax.ablations import report
from wam_jax.ablations import sweep as sweep_lib
from wam_jax.evaluation import metrics

REPO = pathlib.Path(__file__).resolve().parents[2]

SWEEP_FILE = '''
from wam_jax.ablations.sweep import Cell, Sweep

TINY = {{
    "model.width": 32, "model.depth": 2, "model.num_heads": 2, "model.mlp_dim": 64,
    "data.data_dir": "{data}", "data.cache_dir": "{data}/_cache", "data.image_size": 32,
    "data.action_horizon": 4, "data.max_text_len": 16, "train.batch_size": 8,
    "train.warmup_steps": 1, "train.log_every": 2, "train.val_every": 0,
    "train.matmul_peak_gflops": 100.0, "train.summary_every": 0, "train.compute_dtype": "float32",
    "mesh.shape": (1, 1, 1), "eval.tasks": ("reach-v3",), "eval.episodes_per_task": 1,
    "eval.max_steps": 4, "eval.num_videos": 0,
}}
SWEEP = Sweep(name="tiny_test", version=1, seeds=(0, 1), cells=(
    Cell("fast", "experiments/configs/vla_baseline.py:tiny", method="tiny", n_demos=2,
         overrides={{**TINY, "train.steps": 4, "train.ckpt_every": 4}}),
    # Long enough (and checkpointing often) to be killed mid-training.
    Cell("slow", "experiments/configs/vla_baseline.py:tiny", method="tiny", n_demos=5,
         overrides={{**TINY, "train.steps": 100, "train.ckpt_every": 5, "model.head.name": "mse"}}),
))
'''


def _sweep_cmd(sweep_file, workdir, max_parallel=2):
  return [sys.executable, str(REPO / "experiments" / "ablations.py"), f"--sweep={sweep_file}",
          f"--workdir={workdir}", f"--max_parallel={max_parallel}"]


def _env(cache_dir):
  # One device per run; a persistent compilation cache shared by the runs (the cells' programs
  # repeat across seeds), which roughly halves this test's time.
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _wait_for(predicate, proc, timeout, what):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      pytest.fail(f"sweep exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
    if time.time() > deadline:
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.1)


def test_sweep_killed_midway_resumes_without_redoing_finished_runs(syn_data_dir, tmp_path):  # noqa: F811
  sweep_file = tmp_path / "tiny_test.py"
  sweep_file.write_text(SWEEP_FILE.format(data=syn_data_dir))
  workdir = tmp_path / "sweep"
  fast0, slow0 = workdir / "fast" / "seed_0", workdir / "slow" / "seed_0"
  env = _env(tmp_path / "jax_cache")

  # Run order: fast/0, slow/0, fast/1, slow/1, one at a time (two at once, slow/0 can train all
  # its steps while fast/0 evaluates). Kill everything (SIGKILL to the process group: no chance
  # to clean up) once fast/0 is done and slow/0 has saved a checkpoint.
  proc = subprocess.Popen(_sweep_cmd(sweep_file, workdir, max_parallel=1), env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    _wait_for(lambda: (fast0 / "DONE").exists(), proc, 300, "the first run to finish")
    _wait_for(lambda: sweep_lib.checkpoint_steps(slow0), proc, 300, "slow/0's first checkpoint")
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  assert not (slow0 / "DONE").exists()
  done_before = (fast0 / "DONE").read_text(), (fast0 / "DONE").stat().st_mtime_ns
  killed_at = sweep_lib.checkpoint_steps(slow0)[-1]

  out = subprocess.run(_sweep_cmd(sweep_file, workdir), env=env, cwd=REPO, text=True,
                       capture_output=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "1 finished, 3 to run" in out.stdout, out.stdout
  # The finished run was skipped: same marker, one attempt.
  assert ((fast0 / "DONE").read_text(), (fast0 / "DONE").stat().st_mtime_ns) == done_before
  assert len(json.loads((fast0 / "run.json").read_text())["attempts"]) == 1
  # The killed run resumed from its checkpoint (a second attempt), then finished.
  slow_log = (slow0 / "log.txt").read_text()
  assert f"resumed from {slow0 / 'checkpoints'} step" in slow_log, slow_log[-3000:]
  attempts = json.loads((slow0 / "run.json").read_text())["attempts"]
  assert len(attempts) == 2 and attempts[0]["returncode"] is None and attempts[1]["returncode"] == 0
  assert killed_at < 100
  for cell in ("fast", "slow"):
    for seed in (0, 1):
      rdir = workdir / cell / f"seed_{seed}"
      assert (rdir / "DONE").exists() and (rdir / "eval" / "results.json").exists()
      assert json.loads((rdir / "config.json").read_text())["seed"] == seed
  # A third run has nothing to do.
  again = subprocess.run(_sweep_cmd(sweep_file, workdir) + ["--dry_run"], env=env, cwd=REPO,
                         text=True, capture_output=True, timeout=300)
  assert "0 runs to do" in again.stdout, again.stdout + again.stderr[-2000:]

  # The report equals a direct computation from the runs' JSON files.
  result = report.write_report(workdir)
  with open(workdir / "report" / "results.csv") as f:
    rows = {r["cell"]: r for r in csv.DictReader(f)}
  for cell in ("fast", "slow"):
    per_seed = [json.loads((workdir / cell / f"seed_{s}" / "eval" / "results.json").read_text())
                for s in (0, 1)]
    episodes = [e for r in per_seed for e in r["episodes"]]
    wins = sum(e["success"] for e in episodes)
    lo, hi = metrics.wilson_interval(wins, len(episodes))
    row = rows[cell]
    assert int(row["episodes"]) == len(episodes) == 2 and int(row["successes"]) == wins
    assert float(row["success_rate"]) == pytest.approx(wins / len(episodes))
    assert (float(row["ci95_lo"]), float(row["ci95_hi"])) == pytest.approx((lo, hi))
    assert [float(x) for x in row["seed_means"].split()] == pytest.approx(
        [r["mean"]["successes"] / r["mean"]["episodes"] for r in per_seed])
    assert float(row["latency_ms"]) == pytest.approx(sum(r["latency"]["mean_ms"] for r in per_seed) / 2)
    flops = json.loads((workdir / cell / "seed_0" / "metrics.jsonl").read_text().splitlines()[0])
    assert float(row["flops_per_step"]) == pytest.approx(flops["run/flops_per_step"])
    assert int(row["steps"]) == (4 if cell == "fast" else 100)
  assert (workdir / "report" / "results.md").exists()
  assert (workdir / "report" / "success_vs_demos.png").stat().st_size > 0
  assert len(result["runs"]) == 4


def test_invalid_cells_are_reported_before_any_run(tmp_path):
  """A misspelt or mistyped override makes its cell invalid at planning time: it never starts."""
  sweep = sweep_lib.Sweep(name="t", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("ok", "experiments/configs/vla_baseline.py:tiny"),
      sweep_lib.Cell("typo", "experiments/configs/vla_baseline.py:tiny",
                     overrides={"train.no_such_field": 1}),
      sweep_lib.Cell("badtype", "experiments/configs/vla_baseline.py:tiny",
                     overrides={"train.steps": "many"}),
  ))
  jobs = {j.cell.name: j for j in sweep_lib.plan(sweep, tmp_path)}
  assert jobs["ok"].state == "pending" and jobs["ok"].config.train.steps == 1000
  assert jobs["typo"].state == "invalid" and "'no_such_field'" in jobs["typo"].error
  assert jobs["badtype"].state == "invalid" and "train.steps" in jobs["badtype"].error


def test_override_flags_round_trip_through_the_config_parser():
  """What the harness puts on the command line parses back to the same values."""
  from absl import flags
  from ml_collections import config_flags
  cell = sweep_lib.Cell("c", "experiments/configs/vla_baseline.py:tiny", overrides={
      "data.mixture": (("metaworld_mt10_n2", 1.0), ("metaworld_video_pool", 0.5)),
      "mesh.shape": (1, 1, 1), "eval.tasks": ("reach-v3",), "train.ema_decay": 0.5,
      "model.head.name": "mse", "eval.at_end": False, "train.steps": 7})
  argv = sweep_lib.command(cell, 3, pathlib.Path("/tmp/x"))
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                           sys_argv=["prog"] + argv[2:])
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(["prog"] + argv[2:])
  parsed, expected = holder.value, sweep_lib.load_config(cell, seed=3)
  assert parsed.to_dict() == expected.to_dict()


def test_failed_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
  """The harness's bookkeeping with stand-in subprocesses (no JAX): a crashing run gets a FAILED
  file with its log tail and does not stop the others; a rerun skips finished runs, retries failed ones."""
  def fake_command(cell, seed, run_dir):
    if cell.name == "bad":
      return [sys.executable, "-c", "import sys; print('boom: the model exploded'); sys.exit(3)"]
    make_outputs = (f"import pathlib, json; d = pathlib.Path({str(run_dir)!r}); "
                    "(d / 'checkpoints' / '1000').mkdir(parents=True); (d / 'eval').mkdir(); "
                    "(d / 'eval' / 'results.json').write_text(json.dumps({'mean': {'success_rate': 0.5}}))")
    return [sys.executable, "-c", make_outputs]
  monkeypatch.setattr(sweep_lib, "command", fake_command)
  cells = tuple(sweep_lib.Cell(name, "experiments/configs/vla_baseline.py:tiny") for name in ("bad", "good"))
  sweep = sweep_lib.Sweep(name="t", version=1, seeds=(0, 1), cells=cells)
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append)
  assert summary["done"] == ["good/seed_0", "good/seed_1"]
  assert summary["failed"] == ["bad/seed_0", "bad/seed_1"]
  failed = json.loads((tmp_path / "bad" / "seed_0" / "FAILED").read_text())
  assert failed["returncode"] == 3 and "boom: the model exploded" in failed["log_tail"]
  assert any("FAILED bad seed 0: exit code 3: boom" in line for line in lines), lines
  assert (tmp_path / "good" / "seed_1" / "DONE").exists()

  lines.clear()
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append)
  assert "2 finished, 2 to run" in lines[0] and summary["failed"] == ["bad/seed_0", "bad/seed_1"]
  assert len(json.loads((tmp_path / "bad" / "seed_0" / "run.json").read_text())["attempts"]) == 2
  attempts = json.loads((tmp_path / "good" / "seed_0" / "run.json").read_text())["attempts"]
  assert len(attempts) == 1
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
  assert attempts[0]["code"] in (head, head + "+dirty")  # the code each attempt ran

  # A changed cell in the same workdir is an error naming it, not a silent mix of results.
  changed = sweep_lib.Sweep(name="t", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("good", "experiments/configs/vla_baseline.py:tiny", overrides={"train.steps": 5}),))
  with pytest.raises(ValueError, match="cell 'good' .* changed"):
    sweep_lib.run(changed, tmp_path, log=lines.append)


def test_a_stage_cell_starts_after_its_init_from_run_and_is_restored_from_it(tmp_path, monkeypatch):
  """init_from: the later stage gets --config.train.init_from=<the earlier cell's run, same seed>,
  starts only once that run is DONE (with max_parallel 2 too), and fails at once if it failed;
  the report leaves the stage without evaluation out and names it."""
  real_command = sweep_lib.command
  started = []

  def fake_command(cell, seed, run_dir):
    argv = real_command(cell, seed, run_dir)
    started.append((cell.name, seed, [a for a in argv if a.startswith("--config.train.init_from=")],
                    sweep_lib.is_done(run_dir.parent.parent / "pretrain" / f"seed_{seed}")))
    if cell.name == "pretrain" and seed == 1:
      return [sys.executable, "-c", "import sys; sys.exit(2)"]
    ev = "" if cell.name == "pretrain" else (
        "(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text(json.dumps({'mean': {'success_rate': 1.0}, "
        "'episodes': [{'task': 'reach-v3', 'seed': 0, 'success': True, 'length': 3}], 'latency': {'mean_ms': 1.0}, "
        "'seconds': 1.0, 'settings': {'execute_steps': 4}}))")
    if cell.name == "pretrain":  # held-out metrics at two validations: the report shows the last
      ev = ("(d / 'metrics.jsonl').write_text(json.dumps({'step': 5, 'val/video_psnr': 20.0, 'val/loss_weight': 3})"
            " + '\\n' + json.dumps({'step': 10, 'val/video_psnr': 22.5, 'val/x_step0': 1.0}) + '\\n')")
    code = ("import pathlib, json, time; time.sleep(0.3); d = pathlib.Path(%r); "
            "(d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'config.json').write_text(json.dumps({'train': {'steps': 1000}, 'eval': {'at_end': %r}})); %s"
            % (str(run_dir), cell.name != "pretrain", ev))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  sweep = sweep_lib.Sweep(name="staged", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("pretrain", "experiments/configs/video_wam.py:pretrain_tiny"),
      sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="pretrain")))
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, max_parallel=2, poll_seconds=0.05, log=lines.append)
  assert summary["done"] == ["pretrain/seed_0", "policy/seed_0"]
  assert sorted(summary["failed"]) == ["policy/seed_1", "pretrain/seed_1"]
  assert not (tmp_path / "policy" / "seed_1" / "run.json").exists()  # never started
  policy_start = [s for s in started if s[0] == "policy"]
  assert policy_start == [("policy", 0, [f"--config.train.init_from={tmp_path / 'pretrain' / 'seed_0'}"], True)]
  assert any("stage pretrain/seed_1 did not finish" in line for line in lines), lines
  result = report.write_report(tmp_path, plots=False)
  assert [r["cell"] for r in result["rows"]] == ["policy"]
  text = (tmp_path / "report" / "results.md").read_text()
  assert "models that are not policies): pretrain" in text
  assert "| pretrain | 1 | 1000 | video_psnr | 22.5 | 22.5 |" in text  # the last validation, seed 0 only
  assert "loss_weight" not in text and "x_step0" not in text

  with pytest.raises(ValueError, match="init_from='nope'"):
    sweep_lib.Sweep(name="bad", version=1, cells=(
        sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="nope"),))


def test_a_stage_shared_by_every_seed_runs_once_and_every_seed_restores_it(tmp_path, monkeypatch):
  """stage_seed=0: the stage's one run is pretrain/seed_0 (trained with --config.seed=0) even when the
  sweep runs seed 1 only; the policy of every seed starts after it and restores that run."""
  real_command = sweep_lib.command
  started = []

  def fake_command(cell, seed, run_dir):
    argv = real_command(cell, seed, run_dir)
    started.append((cell.name, seed, run_dir.name, [a for a in argv if a.startswith(("--config.seed=",
                                                                                       "--config.train.init_from="))],
                    sweep_lib.is_done(run_dir.parent.parent / "pretrain" / "seed_0")))
    code = ("import pathlib, json; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text('{}')" % str(run_dir))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  sweep = sweep_lib.Sweep(name="shared", version=1, seeds=(0, 1, 2), cells=(
      sweep_lib.Cell("pretrain", "experiments/configs/video_wam.py:pretrain_tiny", stage_seed=0),
      sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="pretrain")))
  assert json.loads(json.dumps(sweep.cells[0].spec()))["stage_seed"] == 0
  assert "stage_seed" not in sweep.cells[1].spec()
  jobs = sweep_lib.plan(sweep, tmp_path)
  assert [j.label for j in jobs] == ["pretrain/seed_0", "policy/seed_0", "policy/seed_1", "policy/seed_2"]
  assert jobs[2].config.train.init_from == str(tmp_path / "pretrain" / "seed_0")

  summary = sweep_lib.run(sweep, tmp_path, seeds=[1], max_parallel=2, poll_seconds=0.05, log=[].append)
  assert summary["done"] == ["pretrain/seed_0", "policy/seed_1"] and not summary["failed"]
  stage = f"--config.train.init_from={tmp_path / 'pretrain' / 'seed_0'}"
  assert started == [("pretrain", 0, "seed_0", ["--config.seed=0"], False),
                     ("policy", 1, "seed_1", ["--config.seed=1", stage], True)]
  started.clear()
  summary = sweep_lib.run(sweep, tmp_path, max_parallel=2, poll_seconds=0.05, log=[].append)
  assert sorted(summary["done"]) == ["policy/seed_0", "policy/seed_1", "policy/seed_2", "pretrain/seed_0"]
  assert sorted(started) == [("policy", s, f"seed_{s}", [f"--config.seed={s}", stage], True) for s in (0, 2)]
  assert sorted(p.name for p in (tmp_path / "pretrain").iterdir()) == ["seed_0"]

  with pytest.raises(ValueError, match="stage_seed=0: a train cell"):
    sweep_lib.Sweep(name="bad", version=1, cells=(
        sweep_lib.Cell("idm", "experiments/configs/idm_wam.py:idm_tiny"),
        sweep_lib.Cell("label", kind="label", init_from="idm", stage_seed=0)))


@pytest.mark.parametrize("name", sorted(p.stem for p in sweep_lib.SWEEPS_DIR.glob("*.py")))
def test_every_shipped_sweep_plans_with_valid_cells(name, tmp_path):
  """Each train cell of each sweep in experiments/sweeps/ resolves to a config the trainer accepts
  (the check ablations.py runs before any work), and cells using other cells' runs name earlier cells."""
  from wam_jax.training import trainer
  sweep = sweep_lib.load_sweep(name)
  jobs = sweep_lib.plan(sweep, tmp_path, seeds=(0,), check=lambda c: trainer.check_config(c, 1))
  assert [j.state for j in jobs if not j.eval_name] == ["pending"] * len(sweep.cells), [(j.cell.name, j.error) for j in jobs]
  for job in jobs:
    argv = sweep_lib.command(job.cell, 0, job.dir)
    flag = {"train": "--config.train.init_from", "label": "--idm", "eval": "--idm_workdir"}[job.cell.kind]
    if job.cell.init_from:
      assert f"{flag}={tmp_path.absolute() / job.cell.init_from / 'seed_0'}" in argv
    if job.cell.video_from:
      assert f"--video_workdir={tmp_path.absolute() / job.cell.video_from / 'seed_0'}" in argv
    for dataset, label in job.cell.data_from.items():
      assert (dataset, os.path.realpath(tmp_path / label / "seed_0" / sweep_lib.LABELLED)) in job.config.data.dataset_dirs


def test_a_run_finished_by_a_sibling_sweep_is_linked_not_retrained(tmp_path, monkeypatch):
  """reuse=True: a cell whose config, seed and evaluation equal a finished run of another sweep
  beside this one is linked to it (no subprocess); a changed evaluation or training field is run;
  an unfinished run the link replaces is moved aside; the report reads the linked run."""
  started = []

  def fake_command(cell, seed, run_dir):
    started.append((run_dir.parent.parent.name, cell.name, seed))
    config = sweep_lib.load_config(cell, seed).to_json_best_effort()
    code = ("import pathlib, json; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'config.json').write_text(%r); (d / 'eval').mkdir(); "
            "(d / 'eval' / 'results.json').write_text(json.dumps({'mean': {'success_rate': 0.5}, "
            "'episodes': [{'task': 'reach-v3', 'seed': 0, 'success': True, 'length': 3}, "
            "{'task': 'reach-v3', 'seed': 1, 'success': False, 'length': 9}], 'latency': {'mean_ms': 1.0}, "
            "'seconds': 1.0, 'settings': {'execute_steps': 4}}))" % (str(run_dir), config))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  vla = "experiments/configs/vla_baseline.py:tiny"
  first = sweep_lib.Sweep(name="baseline", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("vla", vla, method="vla", n_demos=2),))
  sweep_lib.run(first, tmp_path / "baseline", poll_seconds=0.05, log=lambda _: None)
  assert len(started) == 2

  second = sweep_lib.Sweep(name="family", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("reference", vla, method="vla", n_demos=2),
      sweep_lib.Cell("more_eval", vla, overrides={"eval.episodes_per_task": 3}),
      sweep_lib.Cell("longer", vla, overrides={"train.steps": 7})))
  workdir = tmp_path / "family"
  partial = workdir / "reference" / "seed_1"
  (partial / "checkpoints" / "5").mkdir(parents=True)
  jobs = sweep_lib.plan(second, workdir, reuse=True)
  assert [(j.cell.name, j.seed, j.state) for j in jobs if j.state == "reusable"] == [
      ("reference", 0, "reusable"), ("reference", 1, "reusable")]
  assert sweep_lib.plan(second, workdir, reuse=False)[0].state == "pending"

  started.clear()
  lines = []
  summary = sweep_lib.run(second, workdir, poll_seconds=0.05, log=lines.append, reuse=True)
  assert sorted(started) == [("family", c, s) for c in ("longer", "more_eval") for s in (0, 1)]
  assert summary["failed"] == [] and len(summary["done"]) == 6
  for seed in (0, 1):
    link = workdir / "reference" / f"seed_{seed}"
    assert link.is_symlink() and link.resolve() == (tmp_path / "baseline" / "vla" / f"seed_{seed}").resolve()
  aside = [p.name for p in (workdir / "reference").iterdir() if p.name.startswith(".seed_1.replaced-")]
  assert len(aside) == 1 and (workdir / "reference" / aside[0] / "checkpoints" / "5").exists()
  assert any("reuse reference seed 1" in line for line in lines), lines

  rows = {r["cell"]: r for r in report.write_report(workdir, plots=False)["rows"]}
  assert rows["reference"]["seeds"] == [0, 1]
  assert (rows["reference"]["pooled"]["successes"], rows["reference"]["pooled"]["episodes"]) == (2, 4)

  # A rerun changes nothing: the links are finished runs, not candidates for another link.
  started.clear()
  assert sweep_lib.run(second, workdir, poll_seconds=0.05, log=lambda _: None, reuse=True)["failed"] == []
  assert started == []


def test_a_changed_cell_is_accepted_only_while_it_still_builds_the_runs_it_holds(tmp_path):
  """Pinning a cell to the preset its runs were trained with (the preset has moved on since) leaves its
  workdir usable and is recorded; a change that would train another run is refused, naming the run."""
  vla = "experiments/configs/vla_baseline.py:tiny"
  first = sweep_lib.Sweep(name="s", version=1, seeds=(0,), cells=(sweep_lib.Cell("c", vla),))
  sweep_lib.write_sweep_json(first, tmp_path)
  run = tmp_path / "c" / "seed_0"
  run.mkdir(parents=True)
  (run / "config.json").write_text(sweep_lib.load_config(first.cells[0], 0).to_json_best_effort())

  pinned = sweep_lib.Sweep(name="s", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("c", vla, overrides={"train.steps": 1000}),  # the tiny preset's own value
      sweep_lib.Cell("new", vla, overrides={"train.steps": 7})))
  sweep_lib.write_sweep_json(pinned, tmp_path)
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert [c["overrides"] for c in saved["cells"]] == [{"train.steps": 1000}, {"train.steps": 7}]

  moved = sweep_lib.Sweep(name="s", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("c", vla, overrides={"train.steps": 5}),))
  with pytest.raises(ValueError, match=r"cell 'c' .* no longer describes its run\(s\) \['seed_0'\]"):
    sweep_lib.write_sweep_json(moved, tmp_path)
  assert json.loads((tmp_path / "sweep.json").read_text()) == saved


def test_extra_evaluations_run_after_each_finished_run_and_have_their_own_report(tmp_path, monkeypatch):
  """Sweep.extra_evals: each finished run is evaluated again (eval.py --as_trained + the flags) into
  eval_<name>/, after its training; a failed one is retried on rerun without retraining; the
  report tabulates it with --eval=<name>."""
  order = []
  results = ("json.dumps({'mean': {'success_rate': %s}, 'episodes': [{'task': 'reach-v3', 'seed': 0, "
             "'success': %s, 'length': 3}], 'latency': {'mean_ms': 1.0}, 'seconds': 1.0, "
             "'settings': {'execute_steps': 4}})")

  def fake_train(cell, seed, run_dir):
    order.append(("train", seed))
    return [sys.executable, "-c", (
        "import pathlib, json; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
        "(d / 'config.json').write_text(json.dumps({'train': {'steps': 1000}, 'eval': {'at_end': True}})); "
        "(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text(%s)") % (str(run_dir), results % (1.0, True))]

  fail_once = {1}

  def fake_eval(run_dir, name, flags):
    seed = int(pathlib.Path(run_dir).name[5:])
    order.append((name, seed))
    if seed in fail_once:
      fail_once.clear()
      return [sys.executable, "-c", "import sys; print('renderer died'); sys.exit(4)"]
    return [sys.executable, "-c", "import pathlib, json; d = pathlib.Path(%r) / 'eval_%s'; d.mkdir(); "
            "(d / 'results.json').write_text(%s)" % (str(run_dir), name, results % (0.0, False))]

  real_eval_command = sweep_lib.eval_command
  monkeypatch.setattr(sweep_lib, "command", fake_train)
  monkeypatch.setattr(sweep_lib, "eval_command", fake_eval)
  sweep = sweep_lib.Sweep(name="t", version=1, seeds=(0, 1), extra_evals={"paraphrase": {"instructions": "paraphrase"}},
                          cells=(sweep_lib.Cell("vla", "experiments/configs/vla_baseline.py:tiny", n_demos=2),))
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append)
  assert order == [("train", 0), ("paraphrase", 0), ("train", 1), ("paraphrase", 1)]
  assert summary["done"] == ["vla/seed_0", "vla/seed_0/eval_paraphrase", "vla/seed_1"]
  assert summary["failed"] == ["vla/seed_1/eval_paraphrase"]
  assert any("FAILED vla/seed_1/eval_paraphrase: exit code 4" in line and "renderer died" in line for line in lines)
  assert json.loads((tmp_path / "vla" / "seed_0" / "run.json").read_text())["attempts"][0]["returncode"] == 0
  assert (tmp_path / "vla" / "seed_0" / "eval_paraphrase.run.json").exists()

  plain = report.write_report(tmp_path, plots=False)
  assert plain["rows"][0]["pooled"]["successes"] == 2
  extra = report.write_report(tmp_path, plots=False, eval_name="paraphrase")  # seed 1's has not run yet
  assert extra["rows"][0]["seeds"] == [0] and extra["rows"][0]["pooled"]["successes"] == 0
  assert "extra evaluation `paraphrase`" in (tmp_path / "report_paraphrase" / "results.md").read_text()
  with pytest.raises(ValueError, match="no such extra evaluation"):
    report.write_report(tmp_path, plots=False, eval_name="nope")

  order.clear()
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append)
  assert order == [("paraphrase", 1)] and summary["failed"] == []
  assert report.write_report(tmp_path, plots=False, eval_name="paraphrase")["rows"][0]["seeds"] == [0, 1]

  argv = real_eval_command(tmp_path / "vla" / "seed_0", "paraphrase", {"instructions": "paraphrase", "episodes": 3})
  assert argv[1:] == [str(REPO / "experiments" / "eval.py"), "--policy=checkpoint",
                      f"--workdir={tmp_path / 'vla' / 'seed_0'}", "--as_trained",
                      f"--out={tmp_path / 'vla' / 'seed_0' / 'eval_paraphrase'}", "--instructions=paraphrase",
                      "--episodes=3"]


def test_dry_run_prices_a_new_cell_by_a_finished_run_of_the_same_step(tmp_path):
  """A cell with no finished seed takes its seconds/step and seconds/episode from a finished run of
  another sweep whose step costs the same (same model, batch, frames, evaluation; other seed and N);
  a cell with a different model falls back to the defaults."""
  vla = "experiments/configs/vla_baseline.py:tiny"
  done = sweep_lib.Sweep(name="done", version=1, seeds=(3,), cells=(sweep_lib.Cell("vla", vla, n_demos=20),))
  rdir = tmp_path / "done" / "vla" / "seed_3"
  (rdir / "eval").mkdir(parents=True)
  (tmp_path / "done" / "sweep.json").write_text("{}")
  (rdir / "config.json").write_text(sweep_lib.load_config(done.cells[0], 3).to_json_best_effort())
  (rdir / "metrics.jsonl").write_text("\n".join(json.dumps({"train/steps_per_s": r}) for r in (4.0, 5.0, 6.0)))
  (rdir / "eval" / "results.json").write_text(json.dumps({"seconds": 30.0, "episodes": [{}] * 10}))
  (rdir / "DONE").write_text("{}")

  new = sweep_lib.Sweep(name="new", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("same_step", vla, n_demos=2, overrides={"train.steps": 1000}),
      sweep_lib.Cell("wider", vla, n_demos=2, overrides={"train.steps": 1000, "model.width": 64})))
  jobs = {j.cell.name: j for j in sweep_lib.plan(new, tmp_path / "new")}
  cfg = jobs["same_step"].config
  episodes = len(cfg.eval.tasks or cfg.data.metaworld.tasks) * cfg.eval.episodes_per_task
  assert jobs["same_step"].estimate_s == pytest.approx(sweep_lib.STARTUP_SECONDS + 1000 / 5.0 + 3.0 * episodes)
  default = (sweep_lib.STARTUP_SECONDS + 1000 * sweep_lib.DEFAULT_SECONDS_PER_EXAMPLE * cfg.train.batch_size
             + sweep_lib.DEFAULT_SECONDS_PER_EVAL_EPISODE * episodes)
  assert jobs["wider"].estimate_s == pytest.approx(default)


def test_a_reused_stage_makes_its_later_stage_reusable_in_the_same_plan(tmp_path, monkeypatch):
  """A sweep whose pretraining stage and policy both finished in a sibling sweep reuses both in one
  plan: the policy restores from a stage that is itself about to be linked (session 12: the policy
  was planned as pending and retrained)."""
  def fake_command(cell, seed, run_dir):
    config = sweep_lib.load_config(cell, seed, run_dir.parent.parent).to_json_best_effort()
    code = ("import pathlib; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'config.json').write_text(%r)" % (str(run_dir), config))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  cells = lambda: (sweep_lib.Cell("pretrain", "experiments/configs/video_wam.py:pretrain_tiny", stage_seed=0),
                   sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="pretrain",
                                  overrides={"eval.at_end": False}))
  sweep_lib.run(sweep_lib.Sweep(name="first", version=1, seeds=(0,), cells=cells()), tmp_path / "first",
                poll_seconds=0.05, log=lambda _: None)
  jobs = sweep_lib.plan(sweep_lib.Sweep(name="second", version=1, seeds=(0,), cells=cells()),
                        tmp_path / "second", reuse=True)
  assert [(j.cell.name, j.state) for j in jobs] == [("pretrain", "reusable"), ("policy", "reusable")]
  assert jobs[1].reuse_from == (tmp_path / "first" / "policy" / "seed_0").absolute()


def test_a_cell_without_local_runs_is_priced_by_its_committed_records(tmp_path):
  """Its records' wall time (training + evaluation, on the machines that ran them) is the estimate,
  scaled by the steps still to train; a cell with no record of its own is priced per step by the
  records of a cell with the same step (its N=20 twin); one with another step keeps the defaults."""
  vla = "experiments/configs/vla_baseline.py:tiny"
  sweep = sweep_lib.Sweep(name="priced", version=1, seeds=(1,), cells=(
      sweep_lib.Cell("recorded_cell", vla, n_demos=2, overrides={"train.steps": 1000}),
      sweep_lib.Cell("new_cell", vla, n_demos=5, overrides={"train.steps": 1000}),
      sweep_lib.Cell("same_step_longer", vla, n_demos=20, overrides={"train.steps": 3000}),
      sweep_lib.Cell("other_step", vla, n_demos=5, overrides={"train.steps": 1000, "train.batch_size": 8})))
  rdir = tmp_path / "records" / "v1"
  for seed, wall in ((0, 1800.0), (2, 2400.0), (3, float("nan")), (4, None)):  # rebuilt records: NaN, none
    (rdir / "recorded_cell").mkdir(parents=True, exist_ok=True)
    (rdir / "recorded_cell" / f"seed_{seed}.json").write_text(json.dumps({"wall_seconds": wall}))
  walls = records.walls(rdir)
  assert walls == {"recorded_cell": [1800.0, 2400.0]} and records.walls(tmp_path / "none") == {}
  jobs = {j.cell.name: j for j in sweep_lib.plan(sweep, tmp_path / "w", record_walls=walls)}
  assert jobs["recorded_cell"].estimate_s == pytest.approx(sweep_lib.STARTUP_SECONDS + 2100.0)
  assert jobs["new_cell"].estimate_s == pytest.approx(sweep_lib.STARTUP_SECONDS + 2100.0)
  assert jobs["same_step_longer"].estimate_s == pytest.approx(sweep_lib.STARTUP_SECONDS + 6300.0)
  without = {j.cell.name: j for j in sweep_lib.plan(sweep, tmp_path / "w")}
  assert jobs["other_step"].estimate_s == pytest.approx(without["other_step"].estimate_s)
  assert without["recorded_cell"].estimate_s < 2100.0  # the defaults: an idle machine's rate
  assert without["new_cell"].estimate_s < 2100.0

  (jobs["recorded_cell"].dir / "checkpoints" / "500").mkdir(parents=True)  # half trained here
  jobs = {j.cell.name: j for j in sweep_lib.plan(sweep, tmp_path / "w", record_walls=walls)}
  assert jobs["recorded_cell"].estimate_s == pytest.approx(sweep_lib.STARTUP_SECONDS + 1050.0)


def test_deadline_starts_only_runs_that_finish_before_it(tmp_path, monkeypatch):
  """A job (with the longest run that uses it) that its estimate says would end after the deadline is
  not started, nor are the runs that use it; a job that fits runs."""
  started = []
  monkeypatch.setattr(sweep_lib, "command", fake_runs.finishing_command(started))
  sweep = sweep_lib.Sweep(name="deadline", version=1, seeds=(0,), cells=(
      sweep_lib.Cell("pretrain", "experiments/configs/video_wam.py:pretrain_tiny"),
      sweep_lib.Cell("policy", "experiments/configs/video_wam.py:policy_tiny", init_from="pretrain"),
      sweep_lib.Cell("quick", "experiments/configs/vla_baseline.py:tiny")))
  walls = {"pretrain": [1200.0], "policy": [1500.0], "quick": [600.0]}
  jobs = {j.cell.name: j for j in sweep_lib.plan(sweep, tmp_path, record_walls=walls)}
  assert sweep_lib.seconds_needed(jobs["pretrain"], list(jobs.values())) == pytest.approx(
      jobs["pretrain"].estimate_s + jobs["policy"].estimate_s)
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append, record_walls=walls,
                          deadline=time.time() + 1800)  # pretrain + policy need ~47 min: quick (~11) fits
  assert started == ["quick/seed_0"] and summary["done"] == ["quick/seed_0"] and not summary["failed"]
  assert summary["skipped"] == ["pretrain/seed_0", "policy/seed_0"]
  assert any("not started pretrain/seed_0: needs ~47m" in line for line in lines), lines
  assert any("not started policy/seed_0: its stage pretrain/seed_0 was not run before the deadline" in line
             for line in lines), lines


def test_deadline_prices_a_seed_again_once_an_earlier_seed_of_its_cell_has_finished(tmp_path, monkeypatch):
  """The plan prices a cell with no finished seed at the defaults; once seed 0 finishes, seed 1 is
  priced at the rate seed 0 measured (here 2 s a step: far past the deadline), and not started."""
  started = []

  def slow_command(cell, seed, run_dir):
    started.append(f"{cell.name}/seed_{seed}")
    code = ("import json, pathlib; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text('{}'); "
            "(d / 'metrics.jsonl').write_text(json.dumps({'step': 50, 'train/steps_per_s': 0.5}) + '\\n')"
            % str(run_dir))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", slow_command)
  sweep = sweep_lib.Sweep(name="reprice", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("quick", "experiments/configs/vla_baseline.py:tiny"),))
  jobs = sweep_lib.plan(sweep, tmp_path)
  assert all(j.estimate_s < 1800 for j in jobs)  # both fit by the defaults
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, poll_seconds=0.05, log=lines.append, deadline=time.time() + 1800)
  assert started == ["quick/seed_0"] and summary["done"] == ["quick/seed_0"], lines
  assert summary["skipped"] == ["quick/seed_1"], lines


def test_deadline_flag_parses_clock_times_and_offsets():
  from experiments import ablations as cli  # noqa: E402  (absl flags defined at import: once per process)
  now = time.mktime((2026, 12, 2, 19, 30, 0, 0, 0, -1))
  assert cli.parse_deadline("", now) is None
  assert cli.parse_deadline("+90m", now) == now + 5400 and cli.parse_deadline("+2h", now) == now + 7200
  assert cli.parse_deadline("21:15", now) == now + 6300
  assert cli.parse_deadline("18:00", now) == now + 22.5 * 3600  # passed today: tomorrow's 18:00
  late = time.mktime((2026, 12, 31, 22, 57, 0, 0, 0, -1))  # a session that crosses midnight (and a year)
  assert cli.parse_deadline("01:20", late) == time.mktime((2027, 1, 1, 1, 20, 0, 0, 0, -1))
  # A date and time stays that time once passed (the queue resolves DEADLINE once into this form: an
  # 'HH:MM' resolved per step moved to tomorrow for the steps that started after it).
  resolved = time.strftime("%Y-%m-%dT%H:%M", time.localtime(cli.parse_deadline("01:20", late)))
  assert resolved == "2027-01-01T01:20"
  assert cli.parse_deadline(resolved, late + 86400 * 3) == time.mktime((2027, 1, 1, 1, 20, 0, 0, 0, -1))
  for bad in ("25:00", "9pm", "+5", "2027-01-01 01:20"):
    with pytest.raises(ValueError, match="expected 'HH:MM'"):
      cli.parse_deadline(bad, now)


def test_core_groups_split_the_cores_into_disjoint_groups_one_per_run():
  assert sweep_lib.core_groups(2, [0, 1]) == [frozenset({0}), frozenset({1})]
  assert sweep_lib.core_groups(2, [0, 1, 2, 3, 4]) == [frozenset({0, 1, 2}), frozenset({3, 4})]
  assert sweep_lib.core_groups(3, [4, 6]) == [] and sweep_lib.core_groups(1, [0, 1]) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
@pytest.mark.skipif(not sweep_lib.core_groups(2) or shutil.which("taskset") is None,
                    reason="needs 2+ cores and taskset (util-linux)")
def test_pin_cores_pins_runs_side_by_side_and_frees_a_run_left_alone(tmp_path, monkeypatch):
  """pin_cores. Seed s runs 2 + 2 * s seconds after its start-up, so seeds 0 and 1 start together,
  seed 2 replaces seed 0 beside seed 1, and ends alone. (a) With neighbours for their whole estimate,
  runs start on disjoint groups of the cores (every thread, from the first sample: XLA sizes its
  pool then), through taskset (no Python-level fork of the sweep process: JAX's fork hook warns of
  deadlocks), which command.sh does not keep; the run left alone goes to every core. (b) Runs
  spawned on every core (a share no neighbour reaches) are pinned once settled, worker threads too.
  (c) A run with no neighbour starts and stays on every core. Timing margins are seconds against a
  0.3 s settle: a loaded CI machine took longer than 0.3 s to start Python."""
  def fake_command(cell, seed, run_dir):
    code = ("import os, pathlib, json, threading, time; d = pathlib.Path(%r); seen, worker = [], []\n"
            "def watch():\n"
            "  while True: worker.append(sorted(os.sched_getaffinity(0))); time.sleep(0.02)\n"
            "threading.Thread(target=watch, daemon=True).start()\n"
            "end = time.time() + 2 + 2 * %d\n"
            "while time.time() < end: seen.append(sorted(os.sched_getaffinity(0))); time.sleep(0.02)\n"
            "(d / 'cpus.json').write_text(json.dumps([seen, worker]))\n"
            "(d / 'checkpoints' / '100000').mkdir(parents=True); (d / 'eval').mkdir()\n"
            "(d / 'eval' / 'results.json').write_text('{}')" % (str(run_dir), seed))
    return [sys.executable, "-c", code]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  sweep = sweep_lib.Sweep(name="pinned", version=1, seeds=(0, 1, 2), cells=(
      sweep_lib.Cell("vla", "experiments/configs/vla_baseline.py:tiny"),))
  mine = os.sched_getaffinity(0)
  forks = []  # Python-level forks of this process
  os.register_at_fork(before=lambda: forks.append(1))
  groups = {tuple(sorted(g)) for g in sweep_lib.core_groups(2)}
  every = sorted(mine)

  def samples(root, s):
    return json.loads((root / "vla" / f"seed_{s}" / "cpus.json").read_text())

  # (a) Spawned on their groups (settle never reached: only the spawn pins).
  lines = []
  summary = sweep_lib.run(sweep, tmp_path / "a", max_parallel=2, poll_seconds=0.02, log=lines.append,
                          pin_cores=True, settle_seconds=1e9)
  assert sorted(summary["done"]) == ["vla/seed_0", "vla/seed_1", "vla/seed_2"]
  assert not forks and os.sched_getaffinity(0) == mine
  seen = {s: samples(tmp_path / "a", s)[0] for s in range(3)}
  assert {tuple(seen[0][0]), tuple(seen[1][0])} == groups  # side by side from the start
  assert tuple(seen[2][0]) in groups and seen[2][-1] == every  # beside seed 1, then alone
  for s in range(3):
    run_dir = tmp_path / "a" / "vla" / f"seed_{s}"
    assert "taskset" not in (run_dir / "command.sh").read_text()
    assert sweep_lib.read_json(run_dir / "run.json")["attempts"][-1]["spawned_on"] == ",".join(
        map(str, seen[s][0]))
  assert any(line.startswith("[sweep] start vla/seed_0 on cores ") for line in lines), lines

  # (b) Spawned on every core, pinned once settled.
  monkeypatch.setattr(sweep_lib, "SPAWN_PINNED_SHARE", float("inf"))
  lines = []
  summary = sweep_lib.run(sweep, tmp_path / "b", max_parallel=2, poll_seconds=0.02, log=lines.append,
                          pin_cores=True, settle_seconds=0.3)
  assert sorted(summary["done"]) == ["vla/seed_0", "vla/seed_1", "vla/seed_2"] and not forks
  seen, worker = {}, {}
  for s in range(3):
    seen[s], worker[s] = samples(tmp_path / "b", s)
    assert seen[s][0] == every, s
    assert worker[s] and worker[s][-1] == seen[s][-1], s  # the worker thread is moved too
  pinned = {s: [c for c in seen[s] if c != every] for s in range(3)}
  assert {tuple(c) for c in pinned[0]} | {tuple(c) for c in pinned[1]} <= groups
  assert pinned[0] and pinned[1] and pinned[0][-1] != pinned[1][0]  # side by side: disjoint groups
  assert pinned[2] and seen[2][-1] == every  # pinned beside seed 1, then alone on every core
  assert any(line.endswith(f"on cores {','.join(map(str, every))}") for line in lines), lines

  # (c) No neighbour: every core throughout.
  monkeypatch.setattr(sweep_lib, "SPAWN_PINNED_SHARE", 0.7)
  sweep_lib.run(sweep, tmp_path / "c", seeds=[0], max_parallel=2, poll_seconds=0.02, log=[].append,
                pin_cores=True, settle_seconds=0.3)
  for part in samples(tmp_path / "c", 0):
    assert part and all(c == every for c in part)


def test_cost_key_reads_loss_weights_as_zero_or_not_and_ignores_the_video_normalization():
  base = {"model": {"name": "joint_wam", "depth": 4, "video_weight": 1.0, "video": {"loss_norm": "none"}},
          "train": {"batch_size": 64}}
  heard = copy.deepcopy(base)
  heard["model"].update(video_weight=100.0, video={"loss_norm": "copy"})
  assert sweep_lib.cost_key(heard) == sweep_lib.cost_key(base)
  assert heard["model"]["video_weight"] == 100.0  # the caller's config is left alone
  silent = copy.deepcopy(base)
  silent["model"]["video_weight"] = 0.0  # no future-frame segment: a cheaper step
  deeper = copy.deepcopy(base)
  deeper["model"]["depth"] = 6
  assert len({sweep_lib.cost_key(c) for c in (base, silent, deeper)}) == 3


def test_prepare_generates_the_embedded_sample_before_the_runs_and_only_for_runs_that_read_it(tmp_path, monkeypatch):
  """ablations.py's prepare step makes the embedded MetaWorld sample once, before two runs that
  read it start side by side (each would otherwise generate it on its own pinned core); runs with a
  data_dir are left alone."""
  from experiments import ablations as cli  # noqa: E402
  from wam_jax.sim import metaworld_data
  calls = []
  monkeypatch.setattr(metaworld_data, "ensure_embedded_dataset", lambda data: calls.append(data.metaworld.tasks))
  jobs = sweep_lib.plan(sweep_lib.load_sweep("quickstart"), tmp_path / "qs", seeds=(0,))
  cli.prepare(jobs)
  assert len(calls) == 3 and all(tuple(t) == tuple(calls[0]) for t in calls), calls
  calls.clear()
  for job in jobs:
    job.config.data.data_dir = str(tmp_path / "elsewhere")
  cli.prepare(jobs)
  assert calls == []
