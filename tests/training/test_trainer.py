"""The training loop end to end on a tiny synthetic dataset: loss falls, exact
resume after a crash or SIGTERM, damaged checkpoints skipped, config errors,
and the trained checkpoint as a policy."""

import json
import shutil
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import vla_baseline
from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from wam_jax import inference
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import sharding, trainer

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(data_dir, steps=8):
  cfg = vla_baseline.get_config("tiny")
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=16)
  cfg.data.update(data_dir=str(data_dir), cache_dir=str(data_dir / "_cache"), image_size=32,
                  history=2, action_horizon=4, max_text_len=16)
  cfg.train.update(steps=steps, batch_size=8, warmup_steps=2, log_every=2, val_every=4, val_batches=1,
                   ckpt_every=4, matmul_peak_gflops=100.0, ema_decay=0.9, summary_every=4)
  cfg.mesh.shape = (1, 1, 1)
  return cfg


def one_device():
  return jax.devices()[:1]


def final_params(workdir, cfg):
  ckpt = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True)
  assets, step = ckpt.restore_assets()
  policy = inference.load_policy(workdir)
  return step, jax.device_get(policy.params), assets


@pytest.fixture(scope="module")
def reference_run(syn_data_dir, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp("reference")
  cfg = tiny_config(syn_data_dir)
  result = trainer.train(cfg, workdir, devices=one_device())
  return cfg, workdir, result


def test_run_writes_metrics_config_and_checkpoints(reference_run):
  cfg, workdir, result = reference_run
  assert result["step"] == cfg.train.steps
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  assert all(np.isfinite(r["train/loss"]) and r["train/mfu"] > 0 for r in train_rows)
  assert any("val/action_l1" in r for r in rows)
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 8
  assert ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [4, 8]
  assert list((workdir / "tensorboard").iterdir())


def test_input_summaries_show_history_then_future():
  from wam_jax.data.fake_batch import make_batch
  cfg = tiny_config(pathlib.Path("/unused"))
  batch = make_batch(cfg, 8)
  img = trainer.input_summaries(batch, ("primary",))["inputs/primary"]
  s = cfg.data.image_size
  assert img.shape == (4, s, (cfg.data.history + cfg.data.num_future) * s, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[2, :, :s], batch["image_primary"][2, 0])
  np.testing.assert_array_equal(img[2, :, -s:], batch["future_image_primary"][2, -1])


def test_loss_falls(syn_data_dir, tmp_path):  # noqa: F811
  cfg = tiny_config(syn_data_dir, steps=80)
  cfg.train.update(learning_rate=1e-3, log_every=5, val_every=0, ckpt_every=80)
  trainer.train(cfg, tmp_path, devices=one_device())
  losses = [json.loads(l)["train/loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in l]
  # Single-batch losses are noisy: compare the first and last few logged values.
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses


def test_resume_after_crash_is_bitwise_exact(reference_run, syn_data_dir, tmp_path):  # noqa: F811
  cfg, ref_dir, _ = reference_run
  # Crash after step 6: the last save is step 4, so steps 5-6 are redone.
  trainer.train(cfg, tmp_path, devices=one_device(), crash_after_step=6)
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps() == [4]
  result = trainer.train(cfg, tmp_path, devices=one_device())
  assert result["step"] == 8
  _, ref, _ = final_params(ref_dir, cfg)
  _, got, _ = final_params(tmp_path, cfg)
  jax.tree.map(np.testing.assert_array_equal, ref, got)


def abstract_state(cfg):
  mesh = sharding.make_mesh((1, 1, 1), one_device())
  run = trainer.setup_training(cfg, mesh, trainer.abstract_batch(cfg.data, cfg.train.batch_size), 1)
  return run.abstract_state


def test_damaged_latest_checkpoint_is_skipped(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")
  damaged = [f for f in (tmp_path / "checkpoints" / "8" / "state").rglob("*")
             if f.is_file() and "metadata" not in f.name]
  assert damaged
  for f in damaged:
    f.unlink()
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True)
  state, assets, step = ckpt.restore(abstract_state(cfg))
  assert step == 4 and int(state.step) == 4
  assert assets["dataset_names"] == ["metaworld_demos"]
  with pytest.raises(Exception):
    ckpt.restore(abstract_state(cfg), step=8)  # asked for explicitly: an error, not a fallback


def test_policy_from_checkpoint(reference_run):
  cfg, workdir, _ = reference_run
  policy = inference.load_policy(workdir)
  assert policy.step == 8
  policy.reset()
  rs = np.random.RandomState(0)
  for _ in range(3):
    obs = {"image_primary": rs.randint(0, 256, (48, 48, 3)).astype(np.uint8),
           "proprio": rs.randn(4).astype(np.float32)}
    actions = policy(obs, "task 1")
    assert actions.shape == (cfg.data.action_horizon, 4) and actions.dtype == np.float32
    assert np.all(np.isfinite(actions))


def _train_cmd(cfg_overrides, workdir):
  return [sys.executable, str(REPO / "experiments" / "train.py"),
          "--config=" + str(REPO / "experiments" / "configs" / "vla_baseline.py") + ":tiny",
          f"--workdir={workdir}"] + cfg_overrides


def test_unknown_config_field_fails_naming_it(tmp_path):
  out = subprocess.run(_train_cmd(["--config.train.no_such_field=1"], tmp_path),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert "--config.train.no_such_field" in out.stderr and "no_such_field" in out.stderr
  assert not (tmp_path / "config.json").exists()  # failed before any work


def test_semantic_config_errors_fail_before_work(tmp_path):
  out = subprocess.run(_train_cmd(["--config.model.head.name=difusion"], tmp_path),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "config.model.head.name='difusion'" in out.stderr and "Traceback" not in out.stderr
  assert not (tmp_path / "config.json").exists()


def test_sigterm_saves_exactly_the_uninterrupted_state(syn_data_dir, tmp_path):  # noqa: F811
  cfg = tiny_config(syn_data_dir, steps=400)
  cfg.train.update(val_every=0, ckpt_every=1000)
  overrides = [f"--config.{k}={v}" for k, v in _flat(cfg).items()
               if k.split(".")[0] in ("model", "train", "mesh") or k in (
                   "data.data_dir", "data.cache_dir", "data.image_size", "data.history",
                   "data.action_horizon", "data.max_text_len")]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  sigterm_dir = tmp_path / "sigterm"
  proc = subprocess.Popen(_train_cmd(overrides, sigterm_dir), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  head = []
  for line in proc.stdout:  # the first progress line: the loop is running
    head.append(line)
    if line.startswith("step "):
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=180)
  out = "".join(head) + out
  assert proc.returncode == 0, out
  steps = ckpt_lib.Checkpointer(sigterm_dir / "checkpoints", read_only=True).all_steps()
  assert len(steps) == 1 and 2 <= steps[0] < 400, (steps, out[-2000:])
  # The same run in-process, saving at exactly that step: identical state.
  cfg.train.ckpt_every = steps[0]
  trainer.train(cfg, tmp_path / "plain", devices=one_device(), crash_after_step=steps[0])
  abstract = abstract_state(cfg)
  got, _, _ = ckpt_lib.Checkpointer(sigterm_dir / "checkpoints", read_only=True).restore(abstract)
  ref, _, _ = ckpt_lib.Checkpointer(tmp_path / "plain" / "checkpoints", read_only=True).restore(abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ref), jax.device_get(got))


def _flat(cfg, prefix=""):
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(_flat(v, prefix + k + "."))
    elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
      out[prefix + k] = v
    elif isinstance(v, tuple) and all(isinstance(x, int) for x in v):
      out[prefix + k] = "(" + ",".join(map(str, v)) + ")"
  return out


def test_init_from_restores_matching_params_by_path(reference_run):
  cfg, ref_dir, _ = reference_run
  _, ref_params, _ = final_params(ref_dir, cfg)
  other = cfg.copy_and_resolve_references()
  other.data.action_horizon = cfg.data.action_horizon + 2  # action_queries change shape
  fresh = trainer.setup_training(other, sharding.make_mesh((1, 1, 1), one_device()),
                                 trainer.abstract_batch(other.data, 8), 1).init_state(jax.random.key(7)).params
  loaded = jax.device_get(ckpt_lib.load_params_into(ref_dir, fresh))
  np.testing.assert_array_equal(loaded["backbone"]["block_1"]["mlp"]["wi"]["kernel"],
                                ref_params["backbone"]["block_1"]["mlp"]["wi"]["kernel"])
  np.testing.assert_array_equal(loaded["action_queries"], jax.device_get(fresh["action_queries"]))
  assert loaded["action_queries"].shape[0] == other.data.action_horizon


# ----------------------------------------------------------------------------
# Resume never mixes runs (issue 18).
# ----------------------------------------------------------------------------
def _copy_run(src, dst):
  shutil.copytree(src, dst, dirs_exist_ok=True)
  return dst


def _steps(workdir):
  return ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True).all_steps()


def test_changed_config_rerun_is_an_error_naming_the_fields(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  workdir = _copy_run(ref_dir, tmp_path / "run")
  before = (workdir / "config.json").read_text()
  other = cfg.copy_and_resolve_references()
  other.model.depth = 3
  other.train.learning_rate = 1e-3
  with pytest.raises(trainer.ConfigChangedError) as e:
    trainer.train(other, workdir, devices=one_device())
  msg = str(e.value)
  assert "model.depth: 2 -> 3" in msg and "train.learning_rate: 0.0003 -> 0.001" in msg
  assert "--workdir" in msg and "allow_changes=model.depth,train.learning_rate" in msg
  assert "\n" not in msg
  # Nothing was touched: the old run's config and checkpoints are as they were.
  assert (workdir / "config.json").read_text() == before and _steps(workdir) == [4, 8]
  # Fields that do not change what is trained may differ freely.
  free = cfg.copy_and_resolve_references()
  free.train.update(log_every=1, ckpt_every=2)
  assert trainer.train(free, workdir, devices=one_device())["step"] == 8


def test_deliberate_change_resumes_and_saves_new_steps(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  workdir = _copy_run(ref_dir, tmp_path / "run")
  more = cfg.copy_and_resolve_references()
  more.train.steps = 12
  with pytest.raises(trainer.ConfigChangedError, match="train.steps: 8 -> 12"):
    trainer.train(more, workdir, devices=one_device())
  more.train.allow_changes = "train.steps"
  assert trainer.train(more, workdir, devices=one_device())["step"] == 12
  assert _steps(workdir) == [4, 8, 12]


def test_incompatible_checkpoint_is_not_treated_as_damage(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  workdir = _copy_run(ref_dir, tmp_path / "run")
  other = cfg.copy_and_resolve_references()
  other.model.depth = 3
  other.train.allow_changes = "*"  # even when the change is allowed, a new model cannot resume
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="block_2"):
    trainer.train(other, workdir, devices=one_device())
  assert _steps(workdir) == [4, 8] and not (workdir / "checkpoints" / "damaged").exists()


def test_changed_config_rerun_cli_is_one_line_exit_2(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  workdir = _copy_run(ref_dir, tmp_path / "run")
  overrides = [f"--config.{k}={v}" for k, v in _flat(cfg).items()
               if k.split(".")[0] in ("model", "train", "mesh") or k.startswith("data.")]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run(_train_cmd(overrides + ["--config.model.depth=3"], workdir), capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "model.depth: 2 -> 3" in errors[0] and "Traceback" not in out.stderr


def test_damaged_step_is_set_aside_and_training_continues_exactly(reference_run, tmp_path):
  cfg, ref_dir, _ = reference_run
  workdir = _copy_run(ref_dir, tmp_path / "run")
  for f in (workdir / "checkpoints" / "8" / "state").rglob("*"):
    if f.is_file() and "metadata" not in f.name:
      f.unlink()
  # The rerun falls back to step 4, moves 8 aside, retrains 5-8 and can save step 8 again.
  assert trainer.train(cfg, workdir, devices=one_device())["step"] == 8
  assert _steps(workdir) == [4, 8]
  assert [p.name for p in (workdir / "checkpoints" / "damaged").iterdir()] == ["8-0"]
  _, ref, _ = final_params(ref_dir, cfg)
  _, got, _ = final_params(workdir, cfg)
  jax.tree.map(np.testing.assert_array_equal, ref, got)


def test_sigterm_at_a_checkpoint_step_saves_once_and_exits_cleanly(syn_data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
  cfg = tiny_config(syn_data_dir)
  cfg.train.update(val_every=0)
  real_save = ckpt_lib.Checkpointer.save

  def save_then_sigterm(self, step, *args, **kwargs):  # preemption arrives right after a periodic save
    out = real_save(self, step, *args, **kwargs)
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return out
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_then_sigterm)
  assert trainer.train(cfg, tmp_path, devices=one_device())["step"] == 4
  assert _steps(tmp_path) == [4]
  assert "saved step 4" in capsys.readouterr().out


def test_nonfinite_state_is_never_checkpointed(syn_data_dir, tmp_path, monkeypatch):  # noqa: F811
  cfg = tiny_config(syn_data_dir)
  cfg.train.update(val_every=0, log_every=4, ckpt_every=3)
  real_make = trainer.make_train_step

  def nan_at_step_3(*args, **kwargs):  # the loss of step 3 (state.step 2) is NaN; not a log step
    step = real_make(*args, **kwargs)
    def wrapped(state, batch):
      new, metrics = step(state, batch)
      return new, dict(metrics, loss=jnp.where(state.step == 2, jnp.nan, metrics["loss"]))
    return wrapped
  monkeypatch.setattr(trainer, "make_train_step", nan_at_step_3)
  with pytest.raises(FloatingPointError, match="not finite at step 3"):
    trainer.train(cfg, tmp_path, devices=one_device())
  assert _steps(tmp_path) == []


def test_unknown_accelerator_peak_logs_no_mfu_and_trains_on(syn_data_dir, tmp_path, monkeypatch):  # noqa: F811
  from wam_jax.training import peak as peak_lib
  cfg = tiny_config(syn_data_dir, steps=4)
  cfg.train.update(matmul_peak_gflops=0.0, val_every=0)

  def no_datasheet(devices, kind="float32"):
    raise ValueError("no datasheet peak for device_kind 'TPU v9x'")
  monkeypatch.setattr(peak_lib, "hardware_peak_flops", no_datasheet)
  assert trainer.train(cfg, tmp_path, devices=one_device())["step"] == 4
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r for r in rows if "train/loss" in r] and not any("train/mfu" in r for r in rows)


def test_config_changes_ignores_free_fields_and_new_fields_at_their_off_default():
  saved = {"model": {"depth": 2}, "train": {"log_every": 5}, "data": {"mixture": [["a", 1.0]]}}
  now = {"model": {"depth": 2, "loss_norm": "none"}, "train": {"log_every": 1, "new_flag": ""},
         "data": {"mixture": [["a", 1.0]],
         "registry_files": ""}, "eval": {"episodes_per_task": 3}}
  assert trainer.config_changes(saved, now) == {}
  now["data"]["registry_files"] = "mine.json"  # a new field set to something: a real change
  now["model"]["depth"] = 3
  assert set(trainer.config_changes(saved, now)) == {"data.registry_files", "model.depth"}


def test_compiler_options_reach_the_step_of_their_platform_only(tmp_path):
  """train.compiler_options: the running platform's options are compiled into the train step (a
  misspelled CPU option fails the compile, naming it); another platform's never reach it (TPU
  options on a CPU mesh compile as if absent)."""
  cfg = tiny_config(tmp_path)
  mesh = sharding.make_mesh((1, 1, 1), one_device())
  spec = trainer.abstract_batch(cfg.data, cfg.train.batch_size)
  cfg.train.compiler_options.tpu.xla_tpu_enable_windowed_einsum_for_all_gather = False
  assert trainer.compiler_options(cfg.train, mesh) is None
  run = trainer.setup_training(cfg, mesh, spec, 1)
  run.train_step.lower(run.abstract_state, spec).compile()
  cfg.train.compiler_options.cpu.xla_cpu_no_such_option = True
  assert trainer.compiler_options(cfg.train, mesh) == {"xla_cpu_no_such_option": True}
  run = trainer.setup_training(cfg, mesh, spec, 1)
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    run.train_step.lower(run.abstract_state, spec).compile()


def test_grad_norm_of_logs_each_named_loss_gradient_of_the_step(syn_data_dir, tmp_path):  # noqa: F811
  cfg = tiny_config(syn_data_dir, steps=4)
  cfg.train.update(val_every=0, ema_decay=0.0, grad_norm_of="action_l1,action_mse")
  trainer.train(cfg, tmp_path, devices=one_device())
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in logged] == [2, 4]
  for r in logged:  # the L1 head's loss is action_l1: its gradient is the step's whole gradient
    np.testing.assert_allclose(r["train/grad_norm/action_l1"], r["train/grad_norm"], rtol=1e-4)
    assert r["train/grad_norm/action_mse"] > 0 and r["train/grad_norm/action_mse"] != r["train/grad_norm"]


def test_grad_norm_of_an_unknown_metric_fails_before_work_naming_it(syn_data_dir, tmp_path):  # noqa: F811
  cfg = tiny_config(syn_data_dir, steps=4)
  cfg.train.grad_norm_of = "action_l1,video_loss"
  with pytest.raises(ValueError, match=r"grad_norm_of names 'video_loss'.*action_l1"):
    trainer.train(cfg, tmp_path, devices=one_device())
  assert not (tmp_path / "metrics.jsonl").exists() or "train/loss" not in (tmp_path / "metrics.jsonl").read_text()
