"""Method vs reference from handmade run directories: Newcombe's interval against the published
values, verdicts, per-seed differences, task subsets, extra evaluations and missing runs."""

import json

import pytest

from experiments import claims
from tests.ablations.test_report import _fake_run
from wam_jax.ablations import compare
from wam_jax.ablations.compare import Comparison, Side


def test_newcombe_interval_matches_the_published_examples():
  # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (score, no continuity correction).
  assert compare.newcombe_interval(56, 70, 48, 80) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
  assert compare.newcombe_interval(9, 10, 3, 10) == pytest.approx((0.6, 0.1705, 0.8090), abs=1e-4)


def _sweep(root, name, cells, extra_evals=None):
  """cells: {cell: {seed: {task: (successes, episodes)}}}, each run finished."""
  meta = {"name": name, "version": 1, "seeds": [0, 1],
          "cells": [{"name": c, "config": "", "overrides": {}} for c in cells]}
  if extra_evals:
    meta["extra_evals"] = extra_evals
  (root / name).mkdir(parents=True)
  (root / name / "sweep.json").write_text(json.dumps(meta))
  for cell, seeds in cells.items():
    for seed, tasks in seeds.items():
      _fake_run(root / name / cell / f"seed_{seed}", tasks)


@pytest.fixture
def root(tmp_path):
  _sweep(tmp_path, "s", {
      "wam": {0: {"reach-v3": (18, 20), "push-v3": (10, 20)}, 1: {"reach-v3": (17, 20), "push-v3": (9, 20)}},
      "vla": {0: {"reach-v3": (6, 20), "push-v3": (10, 20)}, 1: {"reach-v3": (5, 20), "push-v3": (11, 20)}},
      "bad": {0: {"reach-v3": (0, 20), "push-v3": (2, 20)}},
  })
  return tmp_path


def test_verdicts_pool_every_episode_of_every_seed(root):
  row = compare.compare(root, Comparison("1", "wam vs vla", Side("s", "wam"), Side("s", "vla")))
  m, r = row["method_stats"], row["reference_stats"]
  assert (m["successes"], m["episodes"], r["successes"], r["episodes"]) == (54, 80, 32, 80)
  assert (row["diff"], *row["diff_ci95"]) == pytest.approx(compare.newcombe_interval(54, 80, 32, 80))
  assert row["verdict"] == "supported" and row["seed_diffs"] == pytest.approx({0: 12 / 40, 1: 10 / 40})
  worse = compare.compare(root, Comparison("1", "bad vs vla", Side("s", "bad"), Side("s", "vla")))
  assert worse["verdict"] == "contradicted" and list(worse["seed_diffs"]) == [0]  # only seed 0 on both sides
  # On push alone the two are level: the interval holds 0.
  push = compare.compare(root, Comparison("1", "push", Side("s", "wam"), Side("s", "vla"), tasks=("push-v3",)))
  assert push["verdict"] == "unresolved" and push["method_stats"]["episodes"] == 40


def test_missing_runs_are_not_run_and_the_table_says_so(root, tmp_path):
  rows = compare.write(root, [
      Comparison("2", "no such cell", Side("s", "nope"), Side("s", "vla")),
      Comparison("2", "no such sweep", Side("s", "wam"), Side("other_v1", "vla")),
      Comparison("1", "wam vs vla", Side("s", "wam"), Side("s", "vla"))], out_dir=str(tmp_path / "out"))
  assert [r["verdict"] for r in rows] == ["not run", "not run", "supported"]
  assert rows[0]["missing"] == ["method"] and rows[1]["missing"] == ["reference"]
  md = (tmp_path / "out" / "claims.md").read_text()
  assert "| 2 | no such cell | - | - | - | - | - | not run (method) |" in md
  assert "| 1 | wam vs vla | 68% (80) | 40% (80) | +27.5 (" in md and "| +30, +25 | 2/2 | **supported** |" in md


def test_best_is_the_side_with_the_highest_pooled_success(root):
  s = lambda cell: Side("s", cell)
  assert compare.best(root, [s("bad"), s("nope"), s("vla"), s("wam")]) == s("wam")  # 54/80 > 32/80 > 2/40
  assert compare.best(root, [s("vla"), s("bad")]) == s("vla")
  assert compare.best(root, [s("vla"), s("vla")]) is not None and compare.best(root, [s("nope")]) is None
  assert claims.best_family(root) == claims.FAMILY_CELLS[0]  # no families run under this root


def test_extra_evaluations_are_compared_on_their_own_episodes(tmp_path):
  _sweep(tmp_path, "p", {"h": {0: {"reach-v3": (5, 10)}}, "v": {0: {"reach-v3": (5, 10)}}},
         extra_evals={"paraphrase": {"instructions": "paraphrase"}})
  for cell, k in (("h", 9), ("v", 1)):
    rdir = tmp_path / "p" / cell / "seed_0"
    (rdir / "eval_paraphrase").mkdir()
    eps = [{"task": "reach-v3", "seed": i, "success": i < k, "length": 5} for i in range(10)]
    (rdir / "eval_paraphrase" / "results.json").write_text(json.dumps(
        {"episodes": eps, "latency": {"mean_ms": 1.0}, "seconds": 1.0, "settings": {"execute_steps": 4}}))
  train = compare.compare(tmp_path, Comparison("4", "t", Side("p", "h"), Side("p", "v")))
  para = compare.compare(tmp_path, Comparison("4", "p", Side("p", "h"), Side("p", "v"), eval_name="paraphrase"))
  assert train["verdict"] == "unresolved" and para["verdict"] == "supported"
  assert para["method_stats"]["successes"] == 9 and para["eval"] == "paraphrase"


def test_the_shipped_claims_name_existing_sweeps_and_cells():
  import importlib  # pylint: disable=g-import-not-at-top
  rows = claims.comparisons()
  assert {r.claim for r in rows} == {"1", "2", "3", "4", "all"}
  for row in rows:
    for side in (row.method, row.reference):
      name, version = side.sweep.rsplit("_v", 1)
      sweep = importlib.import_module(f"experiments.sweeps.{name}").SWEEP
      assert int(version) == sweep.version, side
      assert side.cell in {c.name for c in sweep.cells}, side
      if row.eval_name:
        assert row.eval_name in sweep.extra_evals, side


def test_rollout_consistency_pools_seeds_by_frames_and_is_tabled(root, tmp_path):
  """Claim 3's frame table: each seed's eval consistency pooled frame-weighted (overall, per task,
  along the episode); a cell without it is 'not run'; the table shows predicted minus copy."""
  stats = lambda psnr, copy, frames: {"psnr_db": psnr, "mse": 0.01, "copy_psnr_db": copy, "copy_mse": 0.02,
                                      "frames": frames}
  for seed, (a, b) in {0: (stats(30.0, 28.0, 10), stats(20.0, 21.0, 10)),
                       1: (stats(24.0, 28.0, 30), stats(22.0, 21.0, 10))}.items():
    path = root / "s" / "wam" / f"seed_{seed}" / "eval" / "results.json"
    results = json.loads(path.read_text())
    results["consistency"] = {"mean": stats(0.0, 0.0, 0) | a, "tasks": {"reach-v3": a},
                              "along_episode": {"0-39": a, "40-79": b} if seed == 0 else {"0-39": a}}
    path.write_text(json.dumps(results))
  c = compare.rollout_consistency(root, Side("s", "wam"))
  assert c["seeds"] == [0, 1] and c["mean"]["frames"] == 40
  assert c["mean"]["psnr_db"] == pytest.approx((30 * 10 + 24 * 30) / 40)  # frame-weighted, not per seed
  assert c["along_episode"]["40-79"] == stats(20.0, 21.0, 10) | {"mse": pytest.approx(0.01), "copy_mse": pytest.approx(0.02)}
  assert compare.rollout_consistency(root, Side("s", "vla")) is None
  compare.write(root, [], str(tmp_path / "out"), consistency=[("wam", Side("s", "wam")), ("vla", Side("s", "vla"))])
  md = (tmp_path / "out" / "claims.md").read_text()
  assert "| wam (`s/wam`) | 2 | 40 | 25.50 (28.00) | -2.50 dB | 0.500 | -2.50 | -1.00 |" in md
  assert "| vla (`s/vla`) | finished, no consistency recorded |" in md


def test_the_shipped_consistency_cells_exist():
  import importlib  # pylint: disable=g-import-not-at-top
  for _, side in claims.consistency():
    name, version = side.sweep.rsplit("_v", 1)
    sweep = importlib.import_module(f"experiments.sweeps.{name}").SWEEP
    assert int(version) == sweep.version and side.cell in {c.name for c in sweep.cells}, side


def _as_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _cell_config(sweep, name: str) -> dict:
  """The seed-0 config of a shipped sweep's cell, as the trainer compares run identities (JSON)."""
  from wam_jax.ablations import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  return _as_json(sweep_lib.load_config(sweep.cell(name), seed=0))


def test_the_cnn_reference_cell_is_the_cnn_preset():
  """The claims' plain-CNN row reads ``claims.CNN_CELL`` as "the cnn_bc.py:mt10_n20 preset": the cell's
  config must be exactly the preset's (the trainer's run identity), or the row names the wrong run."""
  from experiments.configs import cnn_bc  # pylint: disable=g-import-not-at-top
  from experiments.sweeps import baseline_quality  # pylint: disable=g-import-not-at-top
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  preset = cnn_bc.get_config("mt10_n20")
  preset.seed = 0
  assert trainer.config_changes(_as_json(preset), _cell_config(baseline_quality.SWEEP, claims.CNN_CELL)) == {}


def test_the_vla_reference_cells_are_the_preset_and_the_byte_token_recipe():
  """``vla_pooled_n*`` is the ``vla_baseline.py:mt10_n*`` preset exactly; ``vla_l1_n*`` (what the families
  were compared with) differs from it in the instruction's encoding and the learning rate, nothing else."""
  from experiments.configs import vla_baseline  # pylint: disable=g-import-not-at-top
  from experiments.sweeps import baseline_data_efficiency  # pylint: disable=g-import-not-at-top
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  for n in (2, 5, 20):
    preset = vla_baseline.get_config(f"mt10_n{n}")
    preset.seed = 0
    assert preset.model.text_pool and preset.train.learning_rate == 1e-3
    cell = lambda name: _cell_config(baseline_data_efficiency.SWEEP, name)
    assert trainer.config_changes(_as_json(preset), cell(f"vla_pooled_n{n}")) == {}
    changed = trainer.config_changes(_as_json(preset), cell(f"vla_l1_n{n}"))
    assert set(changed) == {"model.text_pool", "train.learning_rate"}, changed


def test_the_pooled_joint_wam_differs_from_the_joint_wam_only_in_the_vla_presets_instruction_recipe():
  """``families:joint_wam_pooled`` is the ``joint_wam`` cell with the VLA preset's pooled instruction and
  learning rate (``vla_baseline.POOLED_INSTRUCTION``), and the claims compare it with the byte-token twin
  at every N (at N=20 through ``joint_wam_data_efficiency``'s cells: the families' runs, linked)."""
  from experiments.sweeps import families  # pylint: disable=g-import-not-at-top
  from experiments.sweeps import joint_wam_data_efficiency  # pylint: disable=g-import-not-at-top
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  cell = lambda name: _cell_config(families.SWEEP, name)
  jw_cell = lambda name: _cell_config(joint_wam_data_efficiency.SWEEP, name)
  pooled, byte = cell("joint_wam_pooled"), cell("joint_wam")
  assert trainer.config_changes(byte, pooled) == {"model.text_pool": (False, True),
                                                  "train.learning_rate": (3e-4, 1e-3)}
  for half, key in (("joint_wam_text_pool", "model.text_pool"), ("joint_wam_lr1e-3", "train.learning_rate")):
    assert trainer.config_changes(byte, cell(half)) == {key: trainer.config_changes(byte, pooled)[key]}
  assert trainer.config_changes(pooled, jw_cell("joint_wam_pooled_n20")) == {}  # the same runs: linked
  assert trainer.config_changes(byte, jw_cell("joint_wam_n20")) == {}
  for n in (2, 5):
    assert trainer.config_changes(jw_cell(f"joint_wam_n{n}"), jw_cell(f"joint_wam_pooled_n{n}")) == \
        trainer.config_changes(byte, pooled)
  refs = {(r.method.cell, r.reference.cell) for r in claims.comparisons()}
  assert {*((f"joint_wam_pooled_n{n}", f"joint_wam_n{n}") for n in (2, 5, 20)),
          ("joint_wam_pooled", "vla_pooled_n20"), ("joint_wam_pooled", "vla_l1_n20"),
          ("joint_wam_text_pool", "joint_wam"), ("joint_wam_lr1e-3", "joint_wam")} <= refs


def test_the_pooled_video_wam_differs_from_the_video_wam_only_in_the_vla_presets_instruction_recipe():
  """``families:video_wam_pooled`` is ``video_wam`` (the same video pretraining) with
  ``vla_baseline.POOLED_INSTRUCTION``, and the claims compare it with its byte-token twin."""
  from experiments.configs import vla_baseline  # pylint: disable=g-import-not-at-top
  from experiments.sweeps import families  # pylint: disable=g-import-not-at-top
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  byte, pooled = (_cell_config(families.SWEEP, c) for c in ("video_wam", "video_wam_pooled"))
  changes = trainer.config_changes(byte, pooled)
  assert set(changes) == set(vla_baseline.POOLED_INSTRUCTION), changes
  assert {k: new for k, (_, new) in changes.items()} == vla_baseline.POOLED_INSTRUCTION
  assert families.SWEEP.cell("video_wam_pooled").init_from == families.SWEEP.cell("video_wam").init_from
  refs = {(r.method.cell, r.reference.cell) for r in claims.comparisons()}
  assert {("video_wam_pooled", "video_wam"), ("video_wam_pooled", "vla_l1_n20"),
          ("video_wam_pooled", "vla_pooled_n20")} <= refs
