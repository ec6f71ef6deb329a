"""Plan with video, act with an IDM (wam_jax/plan_idm.py): a tiny video world model and a tiny IDM, each
trained a few steps by the real trainer, chained into a policy that runs closed loop through the evaluator's
rollout, and the offline comparison of true, generated and copied future frames.

The two trainer runs cost ~55 s on this 2-core machine (compiling each run's init and train step), so every
test that needs them is marked slow (``-m slow``, ~90 s together); the checks of what the two runs must agree
on use the shipped presets and run by default."""

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import idm_wam, video_wam
from tests.data.synthetic import SYN_RES, syn_data_dir  # noqa: F401  (fixture)
from wam_jax import plan_idm
from wam_jax.data import normalization, pseudo_label, windows
from wam_jax.evaluation import evaluate as evaluate_lib
from wam_jax.evaluation import rollout
from wam_jax.sim import metaworld as mw
from wam_jax.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
K = 2   # data.future_offset = action_horizon of the IDM


def shrink(cfg, data_dir):
  cfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.data.update(data_dir=str(data_dir), cache_dir=str(data_dir / "_cache"), image_size=16, history=2,
                  action_horizon=K, future_offset=K, max_text_len=8)
  cfg.train.update(steps=3, batch_size=4, warmup_steps=1, learning_rate=1e-2, log_every=3, val_every=0,
                   ckpt_every=3, summary_every=0, compute_dtype="float32", matmul_peak_gflops=100.0, init_from="")
  cfg.mesh.shape = (1, 1, 1)
  return cfg


@pytest.fixture(scope="module")
def runs(syn_data_dir, tmp_path_factory):  # noqa: F811
  """A video stage-1 run on action-free video only (as the protocol's pretraining on the video pool:
  it never sees the demos the IDM acts in) and an IDM run (demos), 3 steps each."""
  out = {}
  for name, cfg in (("video", video_wam.get_config("pretrain_tiny")), ("idm", idm_wam.get_config("idm_tiny"))):
    workdir = tmp_path_factory.mktemp(name)
    cfg = shrink(cfg, syn_data_dir)
    if name == "video":
      cfg.data.mixture = (("metaworld_video", 1.0),)
    trainer.train(cfg, workdir, devices=jax.devices()[:1])
    out[name] = workdir
  return out


@pytest.fixture(scope="module")
def policies(runs):
  return {frames_from: plan_idm.PlanWithVideoPolicy(runs["video"], runs["idm"], frames_from=frames_from)
          for frames_from in plan_idm.FRAMES_FROM}


def observations(n, seed=0):
  rs = np.random.RandomState(seed)
  return [{"image_primary": rs.randint(0, 256, (SYN_RES, SYN_RES, 3)).astype(np.uint8),
           "proprio": rs.randn(4).astype(np.float32)} for _ in range(n)]


def chunks_of(policy, obs_list):
  policy.reset()
  return [policy(obs, "task 0") for obs in obs_list]


@pytest.mark.slow
def test_chunks_are_the_idms_denormalized_prediction_for_the_planned_frame(runs, policies):
  policy = policies["copy_last"]
  obs = observations(3)
  chunks = chunks_of(policy, obs)
  for c in chunks:
    assert c.shape == (K, 4) and c.dtype == np.float32 and np.isfinite(c).all()
  # The same chunk by another restore path (the labeller's): o_t itself as o_t+k, de-normalized.
  idm = pseudo_label.load_idm(runs["idm"])
  window = windows.history_inputs(obs[1:], "task 0", idm.config.data, idm.normalizer, idm.dataset_name)
  window.update({k: v[0] for k, v in plan_idm.with_future_frames(
      {"primary": window["image_primary"][-1]}, int(idm.config.data.num_future)).items()})
  np.testing.assert_allclose(chunks[-1], idm.chunks([window], jax.random.key(0), 1)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_policy_is_deterministic_and_shows_its_plan(runs, policies):
  policy = policies["video"]
  assert policy.future_offset == K
  policy.reset()
  assert policy.predicted_frame() is None
  obs = observations(3, seed=1)
  first = chunks_of(policy, obs)
  frame = policy.predicted_frame()
  assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
  again = plan_idm.PlanWithVideoPolicy(runs["video"], runs["idm"], seed=0)
  for a, b in zip(first, chunks_of(again, obs)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(again.predicted_frame(), frame)
  assert len(policy.latencies_ms) >= 3 and len(policy.frame_ms) == len(policy.idm_ms) == len(policy.latencies_ms)


@pytest.mark.slow
def test_copy_last_feeds_the_current_frame_not_the_plan(policies):
  obs = observations(2, seed=2)
  video, copy = (chunks_of(policies[f], obs)[-1] for f in ("video", "copy_last"))
  assert np.any(video != copy)
  planned, last = policies["video"].predicted_frame(), policies["copy_last"].predicted_frame()
  assert np.any(planned != last)
  np.testing.assert_array_equal(last, windows.history_inputs(
      obs, "task 0", policies["copy_last"].idm.data_cfg, policies["copy_last"].idm.normalizer,
      "metaworld_demos")["image_primary"][-1])


def normalizer(action_dim=4):
  stats = lambda n: normalization.ArrayStats(*(np.full(n, v, np.float32) for v in (0, 1, -1, 1, -1, 1)))
  return normalization.Normalizer("zscore", {"metaworld_demos": normalization.DatasetStats(
      proprio=stats(4), action=stats(action_dim), action_normalize_mask=(True,) * action_dim)})


def check(video_edit=None, idm_edit=None, dataset_name=None, video_actions=4, video_preset="pretrain_tiny",
          video_names=("metaworld_demos", "metaworld_video")):
  """check_compatible on the shipped presets, edited."""
  video, idm = video_wam.get_config(video_preset), idm_wam.get_config("idm_tiny")
  (video_edit or (lambda c: None))(video)
  (idm_edit or (lambda c: None))(idm)
  return plan_idm.check_compatible(video, list(video_names), normalizer(video_actions),
                                   idm, ["metaworld_demos"], normalizer(), dataset_name)


def test_the_presets_chain_and_mismatches_fail_in_one_line_naming_the_field():
  assert check() == {"dataset": "metaworld_demos", "video_dataset": "metaworld_demos", "frame_index": 0}
  # A video model pretrained on action-free video only plans as that video: same cameras and proprio.
  assert check(video_names=("bridge", "metaworld_video"))["video_dataset"] == "metaworld_video"
  with pytest.raises(ValueError, match=r"^dataset: the IDM acts in 'metaworld_demos', which the video run never "
                                       r"saw, and no dataset of its mixture \['bridge'\] has the same cameras"):
    check(video_names=("bridge",))
  assert check(video_preset="policy_tiny")["frame_index"] == 0  # a stage-2 video WAM plans as well
  # A video model predicting t+2, t+4: the IDM's k = 4 is its second frame.
  assert check(lambda c: c.data.update(future_offset=2, num_future=2))["frame_index"] == 1
  cases = [
      ("data.image_size", lambda c: c.data.update(image_size=32), None),
      ("data.cameras", lambda c: c.data.update(cameras=("primary", "wrist")), None),
      ("data.history", None, lambda c: c.data.update(history=3)),
      ("data.metaworld.resolution", None, lambda c: c.data.metaworld.update(resolution=128)),
      ("data.future_offset", lambda c: c.data.update(future_offset=3), None),
      ("--video_workdir: config.model.name='vla'", lambda c: c.model.update(name="vla"), None),
      ("--idm_workdir: config.model.name='latent_action', expected 'idm'",
       None, lambda c: c.model.update(name="latent_action")),
      ("--idm_workdir: config.model.use_future_proprio=True", None, lambda c: c.model.update(use_future_proprio=True)),
  ]
  for field, video_edit, idm_edit in cases:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}") as e:
      check(video_edit, idm_edit)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="^dataset: 'metaworld_video' is not in the IDM run's mixture"):
    check(dataset_name="metaworld_video")
  with pytest.raises(ValueError, match="^action dims: dataset 'metaworld_demos' has 4 .* 3 in the video run"):
    check(video_actions=3)
  with pytest.raises(ValueError, match=r"^--video_workdir=\S*nowhere: no checkpoints"):
    plan_idm.check_runs("/nowhere", "/nowhere")


def test_future_frames_fill_slot_zero_only():
  frames = {"primary": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)}
  out = plan_idm.with_future_frames(frames, 2)
  assert out["future_image_primary"].shape == (2, 2, 4, 4, 3)
  np.testing.assert_array_equal(out["future_image_primary"][:, 0], frames["primary"])
  np.testing.assert_array_equal(out["future_mask"], [[True, False], [True, False]])
  assert plan_idm.with_future_frames({"primary": frames["primary"][0]}, 1)["future_mask"].shape == (1, 1)


@pytest.mark.slow
def test_wrong_family_workdirs_are_refused(runs):
  with pytest.raises(ValueError, match=r"^--video_workdir: config\.model\.name='idm'"):
    plan_idm.check_runs(runs["idm"], runs["idm"])
  with pytest.raises(ValueError, match=r"^--idm_workdir: config\.model\.name='video_wam', expected 'idm'"):
    plan_idm.check_runs(runs["video"], runs["video"])
  with pytest.raises(ValueError, match="frames_from"):
    plan_idm.PlanWithVideoPolicy(runs["video"], runs["idm"], frames_from="oracle")


@pytest.mark.slow
def test_one_closed_loop_episode_scores_the_plan(runs, policies):
  policy = policies["video"]
  settings = evaluate_lib.render_settings(policy.idm.data_cfg)
  env = mw.cached_env("reach-v3", settings["resolution"], settings["camera"])
  ep = rollout.run_episode(env, policy, "reach-v3", 0, max_steps=8, execute_steps=2, keep_frames=True,
                           consistency=True)
  assert ep["length"] == 8 and len(ep["latencies_ms"]) == 4
  r = settings["resolution"]
  assert ep["frames"].shape == (9, r, 2 * r, 3)   # [real | planned] side by side
  assert [e[0] for e in ep["consistency"]] == [2, 4, 6, 8]
  assert all(np.isfinite(e[1:]).all() for e in ep["consistency"])
  parts = ep["latency_parts_ms"]  # this episode's queries only, split into the plan and the act
  assert set(parts) == {"frame generation", "IDM"} and all(len(v) == 4 for v in parts.values())
  assert all(f + i <= total for f, i, total in zip(parts["frame generation"], parts["IDM"], ep["latencies_ms"]))


@pytest.mark.slow
def test_offline_errors_compare_true_generated_and_copied_frames(policies):
  out = plan_idm.offline_action_errors(None, None, policy=policies["video"], max_episodes=2, batch_size=4,
                                       log=lambda s: None)
  assert out["windows"] == (5 - K) + (9 - K) and out["episodes"] == 2  # val episodes of lengths 5 and 9
  assert out["true_future"]["frame_psnr"] == pytest.approx(100.0)
  for source in ("true_future", "video", "copy_last"):
    assert all(np.isfinite(v) for v in out[source].values()), out[source]
  assert out["copy_last"]["frame_psnr"] < 100.0
  assert out["copy_last"]["action_l1"] != out["true_future"]["action_l1"]


@pytest.mark.slow  # two subprocesses that import jax and restore both runs (~40 s)
def test_eval_and_offline_scripts_run_plan_idm(runs, tmp_path):
  env = {"JAX_PLATFORMS": "cpu", "MUJOCO_GL": "egl", "PATH": ""}
  r = subprocess.run([sys.executable, str(REPO / "experiments" / "eval.py"), "--policy=plan_idm",
                      f"--video_workdir={runs['video']}", f"--idm_workdir={runs['idm']}", "--tasks=reach-v3",
                      "--episodes=1", "--max_steps=4", "--execute_steps=2", "--num_videos=1"],
                     capture_output=True, text=True, cwd=REPO, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (runs["idm"] / "eval_plan" / "results.json").exists()
  r = subprocess.run([sys.executable, str(REPO / "scripts" / "eval_plan_idm.py"), f"--video_workdir={runs['idm']}",
                      f"--idm_workdir={runs['idm']}"], capture_output=True, text=True, cwd=REPO, env=env)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("eval_plan_idm: --video_workdir:")
