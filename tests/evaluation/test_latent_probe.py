"""The latent-action probe: a tiny latent-action model trained 2 steps on synthetic action-free
video, probed on the synthetic demos (every window counted, the regressions' algebra, errors)."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import idm_wam
from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from wam_jax import inference
from wam_jax.evaluation import latent_probe
from wam_jax.training import trainer

K = 2
DEMO_LENGTHS = (5, 9, 12, 3)  # synthetic.write_metaworld's default, both splits


@pytest.fixture(scope="module")
def lam_run(syn_data_dir, tmp_path_factory):  # noqa: F811
  cfg = idm_wam.get_config("latent_tiny")
  cfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, decoder_depth=1)
  cfg.data.update(data_dir=str(syn_data_dir), cache_dir=str(syn_data_dir / "_cache"), image_size=16, history=2,
                  action_horizon=2, future_offset=K, max_text_len=8)
  cfg.train.update(steps=2, batch_size=4, warmup_steps=1, log_every=1, val_every=0, ckpt_every=2,
                   summary_every=0, compute_dtype="float32", matmul_peak_gflops=100.0)
  cfg.mesh.shape = (1, 1, 1)
  workdir = tmp_path_factory.mktemp("lam")
  trainer.train(cfg, workdir, devices=jax.devices()[:1])
  return inference.restore_run(workdir, model_name="latent_action")


def test_ridge_r2_is_one_for_a_linear_target_and_zero_for_noise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5000, 3))
  y = np.stack([x @ [1.0, -2.0, 0.5], 3 * x[:, 1] + 7], 1)
  assert latent_probe.ridge_r2(x[:4000], y[:4000], x[4000:], y[4000:], ridge=1e-6) == pytest.approx(1.0, abs=1e-6)
  noise = rng.normal(size=(5000, 2))
  assert abs(latent_probe.ridge_r2(x[:4000], noise[:4000], x[4000:], noise[4000:])) < 0.01
  labels = np.argmax(x @ [[3.0, -3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], 1)  # linearly separable
  assert latent_probe.ridge_accuracy(x[:4000], labels[:4000], x[4000:], labels[4000:], 3) > 0.85
  random = rng.integers(0, 3, 5000)
  assert abs(latent_probe.ridge_accuracy(x[:4000], random[:4000], x[4000:], random[4000:], 3) - 1 / 3) < 0.05


def test_probe_encodes_every_window_and_reports_the_controls(lam_run):
  r = latent_probe.probe(lam_run, "metaworld_demos", batch_size=4, log=lambda *_: None)
  n = sum(max(length - K, 0) for length in DEMO_LENGTHS)  # every t with o_t+k inside the episode
  assert r["windows"] == {"train": n, "val": n}
  assert set(r["r2"]) == {"z", "task", "task + z", "shuffled z", "state change"}
  assert all(np.isfinite(v) for v in r["r2"].values()) and 0 <= r["task_accuracy"] <= 1
  assert set(r["decoder"]) == {"recon_loss", "shuffled_z_loss", "copy_last_loss"}
  assert 1 <= r["code_tuples_used"]["test"] <= r["code_tuples_used"]["possible"] == 8 ** 2
  assert r["lam"] == f"{lam_run.workdir}@2"


def test_windows_hold_the_true_chunk_and_no_action_reaches_the_model(lam_run):
  win = latent_probe.split_windows(lam_run, "metaworld_demos", "train", stride=2)
  t = np.arange(0, DEMO_LENGTHS[0] - K, 2)
  # synthetic episode 0: action_t = (0, t, 0.5 t, +-1); proprio_t = (0, t, -t, 1)
  np.testing.assert_array_equal(win.chunks_NKA[:len(t), :, 1], t[:, None] + np.arange(K))
  np.testing.assert_array_equal(win.state_change_NP[:len(t)], [[0, K, -K, 0]] * len(t))
  assert not any(w["action_mask"].any() or w["actions"].any() for w in win.inputs)


def test_bad_arguments_fail_in_one_line(lam_run, tmp_path):
  with pytest.raises(ValueError, match="metaworld_video is action-free"):
    latent_probe.probe(lam_run, "metaworld_video", log=lambda *_: None)
  with pytest.raises(ValueError, match="config.model.name='latent_action', expected 'idm'"):
    inference.restore_run(lam_run.workdir, model_name="idm")
  out = subprocess.run([sys.executable, "scripts/probe_latent_actions.py", f"--lam={tmp_path / 'nope'}"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stderr.strip().endswith("no such run directory"), out.stderr[-500:]
