"""Label and eval cells (claim 2's script-based methods as sweep cells), without training or
evaluating anything: the command each kind runs, when its run counts as finished, the order
runs start in (a cell waits for every run it uses), the labelled dataset reaching the trainer's
config, the report reading an eval run, and a dry run of the shipped idm_claim2 sweep."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from experiments.sweeps import idm_claim2
from wam_jax.ablations import protocol
from wam_jax.ablations import report
from wam_jax.ablations import sweep as sweep_lib
from wam_jax.evaluation import evaluate as evaluate_lib
from wam_jax.evaluation import metrics
from wam_jax.evaluation import report as eval_report

REPO = pathlib.Path(__file__).resolve().parents[2]
IDM = "experiments/configs/idm_wam.py:idm_mt10_n2"
VLA = "experiments/configs/vla_baseline.py:mt10_n2"
VIDEO = "experiments/configs/video_wam.py:pretrain_mt10"
LABELLED = "metaworld_video_pool_labeled_n2"


def _claim2_sweep(**kw) -> sweep_lib.Sweep:
  return sweep_lib.Sweep(name="claim2_test", version=1, seeds=(0, 1), cells=(
      sweep_lib.Cell("idm", IDM, method="idm", n_demos=2),
      sweep_lib.Cell("label", kind="label", init_from="idm", overrides=kw.pop("label_overrides", {})),
      sweep_lib.Cell("pseudo", VLA, overrides={"data.mixture": (("metaworld_mt10_n2", 1.0), (LABELLED, 1.0))},
                     data_from={LABELLED: "label"}, method="vla_pseudo_labels", n_demos=2),
      sweep_lib.Cell("video", VIDEO, method="video_pretrain", n_demos=2),
      sweep_lib.Cell("plan", kind="eval", init_from="idm", video_from="video", method="plan_idm", n_demos=2,
                     overrides=kw.pop("eval_overrides", {}))))


def test_the_command_of_each_kind(tmp_path, monkeypatch):
  monkeypatch.delenv("WAM_DATA_DIR", raising=False)
  cells = {c.name: c for c in _claim2_sweep(label_overrides={"data_dir": str(tmp_path / "data"), "batch_size": 16},
                                            eval_overrides={"episodes": 3, "tasks": ("reach-v3", "push-v3")}).cells}
  workdir = tmp_path / "sweep"
  run = lambda name, seed=2: workdir / name / f"seed_{seed}"

  label = sweep_lib.command(cells["label"], 2, run("label"))
  assert label == [sys.executable, str(REPO / "scripts" / "label_video.py"), f"--idm={run('idm')}",
                   f"--src={tmp_path / 'data' / 'metaworld_video_pool' / '1.0.0'}",
                   f"--out={run('label') / 'dataset' / '1.0.0'}", "--batch_size=16"]
  # Without data_dir the pool is where the trainer reads protocol data: $WAM_DATA_DIR, else ./wam_data.
  bare = sweep_lib.Cell("label", kind="label", init_from="idm")
  assert f"--src={pathlib.Path('wam_data').absolute() / 'metaworld_video_pool' / '1.0.0'}" in sweep_lib.command(
      bare, 0, run("label", 0))
  monkeypatch.setenv("WAM_DATA_DIR", str(tmp_path / "elsewhere"))
  elsewhere = tmp_path / "elsewhere" / "metaworld_video_pool" / "1.0.0"
  assert f"--src={elsewhere}" in sweep_lib.command(bare, 0, run("label", 0))
  # The oracle: no IDM cell, the expert labels (label_video.py --expert).
  oracle = sweep_lib.command(sweep_lib.Cell("oracle", kind="label", overrides={"expert": True}), 0, run("oracle", 0))
  assert oracle == [sys.executable, str(REPO / "scripts" / "label_video.py"), f"--src={elsewhere}",
                    f"--out={run('oracle', 0) / 'dataset' / '1.0.0'}", "--expert=true"]

  plan = sweep_lib.command(cells["plan"], 2, run("plan"))
  assert plan[:6] == [sys.executable, str(REPO / "experiments" / "eval.py"), "--policy=plan_idm",
                      f"--idm_workdir={run('idm')}", f"--video_workdir={run('video')}", f"--out={run('plan') / 'eval'}"]
  flags = dict(a[2:].split("=", 1) for a in plan[6:])
  assert flags == {"tasks": "reach-v3,push-v3", "episodes": "3", "seed_offset": str(protocol.EVAL["seed_offset"]),
                   "max_steps": str(protocol.EVAL["max_steps"]), "execute_steps": str(protocol.EVAL["execute_steps"]),
                   "temporal_ensemble": "false", "num_videos": "1"}
  default_eval = sweep_lib.command(sweep_lib.Cell("plan", kind="eval", init_from="idm", video_from="video"), 0,
                                   run("plan", 0))
  assert f"--tasks={','.join(protocol.MT10)}" in default_eval and "--episodes=20" in default_eval

  # A train cell with data_from reads that dataset from the label run of its own seed, as a real
  # path (here through a symlinked workdir), and its config (what reuse compares) says so too.
  (tmp_path / "real").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "real")
  linked = tmp_path / "link" / "pseudo" / "seed_2"
  argv = sweep_lib.command(cells["pseudo"], 2, linked)
  real = os.path.realpath(tmp_path / "real" / "label" / "seed_2" / sweep_lib.LABELLED)
  assert argv[1:5] == [str(REPO / "experiments" / "train.py"), f"--config={REPO / VLA}", f"--workdir={linked}",
                       "--config.seed=2"]
  assert f"--config.data.dataset_dirs={((LABELLED, real),)!r}" in argv
  assert sweep_lib.load_config(cells["pseudo"], 2, tmp_path / "link").data.dataset_dirs == ((LABELLED, real),)
  assert sweep_lib.load_config(cells["pseudo"], 2).data.dataset_dirs == ()  # no workdir: the cell alone


def test_dataset_dirs_flag_round_trips_and_the_pipeline_reads_there(tmp_path):
  """What the harness puts on the trainer's command line parses back to the config it planned,
  and the data pipeline then opens that directory for the dataset (the registry entry's schema)."""
  from absl import flags
  from ml_collections import config_flags
  from wam_jax.data import pipeline
  cell = _claim2_sweep().cells[2]
  argv = sweep_lib.command(cell, 1, tmp_path / "pseudo" / "seed_1")
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                           sys_argv=["prog"] + argv[2:])
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(["prog"] + argv[2:])
  parsed = holder.value
  assert parsed.to_dict() == sweep_lib.load_config(cell, 1, tmp_path).to_dict()
  labelled = pathlib.Path(os.path.realpath(tmp_path / "label" / "seed_1" / sweep_lib.LABELLED))
  assert pipeline.dataset_dir(parsed.data, LABELLED) == labelled
  root = pipeline.resolve_data_dir(parsed.data)
  assert pipeline.dataset_dir(parsed.data, "metaworld_mt10_n2") == root / "metaworld_mt10_n2" / "1.0.0"
  assert [i.name for i in pipeline.resolve_mixture(parsed.data)] == ["metaworld_mt10_n2", LABELLED]
  with pytest.raises(ValueError, match=re.escape(f"directory {labelled} does not exist")):
    pipeline.open_reader(parsed.data, LABELLED, "train")  # not labelled yet: the path it would read is named
  unmixed = sweep_lib.load_config(sweep_lib.Cell("c", VLA, overrides={"data.dataset_dirs": ((LABELLED, "/x"),)}))
  with pytest.raises(ValueError, match="data.dataset_dirs names 'metaworld_video_pool_labeled_n2', which is not"):
    pipeline.resolve_mixture(unmixed.data)


def test_finished_is_judged_per_kind(tmp_path):
  """Exit status 0 is not enough: a label run needs its complete dataset (not a partial one),
  an eval run its results.json."""
  rdir = tmp_path / "run"
  (rdir / ".dataset.partial").mkdir(parents=True)  # what an interrupted label_video.py leaves
  ok, why = sweep_lib._finished(rdir, None, "label")
  assert not ok and "no complete" in why
  (rdir / sweep_lib.LABELLED).mkdir(parents=True)
  (rdir / sweep_lib.LABELLED / "dataset_info.json").write_text("{}")
  assert sweep_lib._finished(rdir, None, "label") == (True, "")
  ok, why = sweep_lib._finished(rdir, None, "eval")
  assert not ok and "no eval/results.json" in why
  (rdir / "eval").mkdir()
  (rdir / "eval" / "results.json").write_text("{}")
  assert sweep_lib._finished(rdir, None, "eval") == (True, "")


def _results(successes: dict, latency_ms: float = 20.0) -> dict:
  """A results.json as experiments/eval.py writes it (evaluate's own summary of episode records)."""
  tasks = list(successes)
  episodes = [{"task": t, "seed": 100_000 + i, "instruction": t, "success": i < k, "length": 40 + i,
               "frozen_fraction": 0.0, "latencies_ms": [latency_ms] * 3}
              for t, (k, n) in successes.items() for i in range(n)]
  settings = dict(seed_offset=100_000, num_workers=1, resolution=64, camera="corner4", episodes_per_task=4,
                  max_steps=200, execute_steps=4, temporal_ensemble=False, ensemble_decay=0.01,
                  consistency=True, instructions="train")
  return json.loads(json.dumps(evaluate_lib._summarize(episodes, tasks, "plan_idm a -> b", 12.0, settings),
                               default=eval_report._jsonable))


def _fake_outputs(cell, run_dir, seed) -> str:
  """Python that leaves what a finished run of ``cell`` leaves (the evaluations: 3 - seed of 4 on reach,
  1 of 4 on push)."""
  d = f"d = pathlib.Path({str(run_dir)!r}); d.mkdir(parents=True, exist_ok=True); "
  if cell.kind == "label":
    return d + "(d / 'dataset' / '1.0.0').mkdir(parents=True); (d / 'dataset' / '1.0.0' / 'dataset_info.json').write_text('{}')"
  results = _results({"reach-v3": (3 - seed, 4), "push-v3": (1, 4)})
  if cell.kind == "eval":
    return d + f"(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text({json.dumps(results)!r})"
  evaluates = cell.name == "pseudo"
  code = d + ("(d / 'checkpoints' / '100000').mkdir(parents=True); (d / 'config.json').write_text(json.dumps("
              f"{{'train': {{'steps': 1000, 'batch_size': 64}}, 'eval': {{'at_end': {evaluates}}}}}))")
  if evaluates:
    code += f"; (d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text({json.dumps(results)!r})"
  return code


def test_cells_start_after_every_run_they_use_and_the_report_reads_eval_runs(tmp_path, monkeypatch):
  """With max_parallel 2: a label run starts after its IDM, the pseudo-label trainer after the
  label run, the plan_idm evaluation after both the IDM and the video model. A video run that
  fails takes its evaluation down without starting it; a label run that exits 0 without its
  dataset is FAILED, not DONE. A rerun retries only those. The report has the eval cell as a
  policy row (pooled success, Wilson interval, per task; no training columns) and names the
  label cell with the stages."""
  real_command = sweep_lib.command
  started, fail_once = [], {("video", 1), ("label", 0)}

  def fake_command(cell, seed, run_dir):
    argv = real_command(cell, seed, run_dir)
    done = {c: sweep_lib.is_done(run_dir.parent.parent / c / f"seed_{seed}") for c in cell.needs}
    started.append((cell.name, seed, done, argv))
    if (cell.name, seed) in fail_once:
      fail_once.discard((cell.name, seed))
      if cell.kind == "label":  # exits 0 having written only a partial dataset
        return [sys.executable, "-c", f"import pathlib; (pathlib.Path({str(run_dir)!r}) / '.dataset.partial').mkdir()"]
      return [sys.executable, "-c", "import sys; print('video model diverged'); sys.exit(5)"]
    return [sys.executable, "-c", "import json, pathlib, time; time.sleep(0.2); " + _fake_outputs(cell, run_dir, seed)]

  monkeypatch.setattr(sweep_lib, "command", fake_command)
  sweep = _claim2_sweep()
  lines = []
  summary = sweep_lib.run(sweep, tmp_path, max_parallel=2, poll_seconds=0.05, log=lines.append)
  assert sorted(summary["failed"]) == ["label/seed_0", "plan/seed_1", "pseudo/seed_0", "video/seed_1"]
  assert sorted(summary["done"]) == sorted(["idm/seed_0", "video/seed_0", "plan/seed_0", "idm/seed_1",
                                            "label/seed_1", "pseudo/seed_1"])
  for name, seed, done, _ in started:
    assert all(done.values()), (name, seed, done)  # every run it uses was DONE when it started
  assert {(n, s) for n, s, _, _ in started} == {(c, s) for c in ("idm", "label", "video") for s in (0, 1)} | {
      ("pseudo", 1), ("plan", 0)}  # pseudo/0 (its labels failed) and plan/1 (its video failed) never started
  pseudo_argv = next(argv for n, s, _, argv in started if (n, s) == ("pseudo", 1))
  labelled = os.path.realpath(tmp_path / "label" / "seed_1" / sweep_lib.LABELLED)
  assert f"--config.data.dataset_dirs={((LABELLED, labelled),)!r}" in pseudo_argv  # its seed's labels
  failed = json.loads((tmp_path / "label" / "seed_0" / "FAILED").read_text())
  assert failed["returncode"] == 0 and "no complete" in failed["summary"]
  assert any("FAILED plan/seed_1: its stage video/seed_1 did not finish" in l for l in lines), lines
  assert any("FAILED pseudo/seed_0: its stage label/seed_0 did not finish" in l for l in lines), lines
  # Each run's bookkeeping is the same whatever its kind.
  for name, seed in (("label", 1), ("plan", 0)):
    rdir = tmp_path / name / f"seed_{seed}"
    info = json.loads((rdir / "run.json").read_text())
    assert info["cell"]["kind"] in ("label", "eval") and info["attempts"][-1]["returncode"] == 0
    assert (rdir / "command.sh").read_text().split()[1] == info["command"][1]
  assert json.loads((tmp_path / "sweep.json").read_text())["cells"][4] == {
      "name": "plan", "config": "", "overrides": {}, "method": "plan_idm", "n_demos": 2, "init_from": "idm",
      "video_from": "video", "kind": "eval"}

  text = _report_checks(tmp_path, seeds=[0])
  assert "models that are not policies): idm, label, video." in text

  started.clear()
  summary = sweep_lib.run(sweep, tmp_path, max_parallel=2, poll_seconds=0.05, log=lines.append)
  assert summary["failed"] == []
  assert sorted((n, s) for n, s, _, _ in started) == [("label", 0), ("plan", 1), ("pseudo", 0), ("video", 1)]
  _report_checks(tmp_path, seeds=[0, 1])


def _report_checks(workdir, seeds) -> str:
  result = report.write_report(workdir, plots=False)
  rows = {r["cell"]: r for r in result["rows"]}
  assert list(rows) == ["pseudo", "plan"]  # in sweep order; the stages and the label run are not rows
  plan = rows["plan"]
  per_seed = [json.loads((workdir / "plan" / f"seed_{s}" / "eval" / "results.json").read_text()) for s in seeds]
  wins = sum(e["success"] for r in per_seed for e in r["episodes"])
  n = sum(len(r["episodes"]) for r in per_seed)
  assert (plan["method"], plan["n_demos"], plan["seeds"]) == ("plan_idm", 2, seeds)
  assert (plan["pooled"]["successes"], plan["pooled"]["episodes"]) == (wins, n)
  assert plan["pooled"]["ci95"] == pytest.approx(metrics.wilson_interval(wins, n))
  assert plan["per_task"]["push-v3"]["rate"] == 0.25
  assert plan["steps"] == [] and plan["latency_ms"] == pytest.approx(20.0)
  text = (workdir / "report" / "results.md").read_text()
  assert f"| plan | plan_idm | 2 | **{100 * wins / n:.0f}%** |" in text
  row = next(l for l in text.splitlines() if l.startswith("| plan | plan_idm"))
  assert row.split(" | ")[8] == "-"  # steps: not a training run
  return text


def test_kind_fields_are_checked():
  cell = sweep_lib.Cell
  bad = {
      "kind 'eval' needs video_from": (cell("idm", IDM), cell("p", kind="eval", init_from="idm")),
      "kind 'label' needs init_from": (cell("l", kind="label"),),
      "or overrides=.'expert': True. for the oracle labeller": (cell("l", kind="label"),),
      "labels with init_from's IDM or with the expert, not both": (
          cell("idm", IDM), cell("l", kind="label", init_from="idm", overrides={"expert": True})),
      "kind 'label' takes no config": (cell("idm", IDM), cell("l", IDM, kind="label", init_from="idm")),
      "a train cell needs a config": (cell("v"),),
      "is a train cell, not a label cell": (cell("idm", IDM), cell("v", VLA, data_from={LABELLED: "idm"})),
      "video_from='v', which is not a cell listed before": (
          cell("idm", IDM), cell("p", kind="eval", init_from="idm", video_from="v"), cell("v", VIDEO)),
      "are flags the harness sets": (
          cell("idm", IDM), cell("l", kind="label", init_from="idm", overrides={"out": "/x"})),
      "sets both data_from and the data.dataset_dirs override": (
          cell("idm", IDM), cell("l", kind="label", init_from="idm"),
          cell("v", VLA, data_from={LABELLED: "l"}, overrides={"data.dataset_dirs": ()})),
      "kind='labels'": (cell("l", kind="labels"),),
  }
  for message, cells in bad.items():
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
      sweep_lib.Sweep(name="bad", version=1, cells=cells)


def test_dry_run_of_the_idm_claim2_sweep(tmp_path):
  """The shipped sweep plans without running anything: every cell of every seed, the label and
  eval cells marked and waiting for the runs they use, an estimate for each, the data to make."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", WAM_DATA_DIR=str(tmp_path / "no_data"))
  out = subprocess.run([sys.executable, str(REPO / "experiments" / "ablations.py"), "--sweep=idm_claim2",
                        f"--workdir={tmp_path / 'idm_claim2'}", "--dry_run", "--norecords"], env=env, cwd=REPO, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  # The video model is a stage shared by every seed: one run, video_pretrain/seed_0 (stage_seed).
  assert lines[0] == f"sweep idm_claim2 v{idm_claim2.SWEEP.version}: 20 cells x seeds [0, 1, 2] = 58 runs"
  plan = [l.split() for l in lines[1:59]]
  by_name = {(p[0], int(p[p.index("seed") + 1])): p for p in plan}
  assert len(by_name) == 58 and all(p[p.index("seed") + 2] == "pending" for p in plan)
  assert [k for k in by_name if k[0] == "video_pretrain"] == [("video_pretrain", 0)]
  for s in (0, 1, 2):
    for n in (2, 5):
      assert by_name[(f"label_n{n}", s)][1] == "[label]" and by_name[(f"label_n{n}", s)][-1] == f"idm_n{n}"
      assert by_name[(f"plan_idm_n{n}", s)][1] == "[eval]"
      assert by_name[(f"plan_idm_n{n}", s)][-3:] == ["after", f"idm_n{n},", "video_pretrain"]
      assert by_name[(f"vla_pseudo_n{n}", s)][-2:] == ["after", f"label_n{n}"]
      assert by_name[(f"vla_oracle_n{n}", s)][-2:] == ["after", "label_oracle"]
      assert by_name[(f"label_state_n{n}", s)][1] == "[label]"
      assert by_name[(f"label_state_n{n}", s)][-2:] == ["after", f"idm_state_n{n}"]
      assert by_name[(f"vla_state_pseudo_n{n}", s)][-2:] == ["after", f"label_state_n{n}"]
    assert by_name[("label_oracle", s)][1] == "[label]"  # the expert labels: it waits for nothing
  assert all(p[p.index("seed") + 3].startswith("~") for p in plan)  # an estimate for every run
  assert lines[59].startswith("58 runs to do: ~")
  data = next(l for l in lines if l.startswith("protocol data"))
  assert f"{tmp_path / 'no_data'}/metaworld_video_pool" in data and f"{tmp_path / 'no_data'}/metaworld_mt10_n5" in data
  assert lines[-1].startswith("first command: ") and "pretrain_mt10 " in lines[-1]
  assert not (tmp_path / "idm_claim2").exists() and not (tmp_path / "no_data").exists()  # nothing written
