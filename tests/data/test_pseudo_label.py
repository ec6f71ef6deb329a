"""Pseudo-labelling (wam_jax/data/pseudo_label.py, scripts/label_video.py): a tiny IDM trained by the real
trainer labels a tiny action-free dataset; the output reads through the data path like demos, carries the
IDM's own predictions and its metadata, and an interrupted labelling resumes to the identical result."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import idm_wam
from tests.data import synthetic
from wam_jax.data import pipeline, pseudo_label, registry, rlds, windows
from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
VIDEO_LENGTHS = (7, 2, 10)   # 2 < k + 1: an episode with no (o_t, o_t+k) window at all
LABELED = "metaworld_video_labeled"


def idm_config(data_dir):
  cfg = idm_wam.get_config("idm_tiny")
  cfg.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8)
  cfg.data.update(data_dir=str(data_dir), cache_dir=str(data_dir / "_cache"), image_size=16, history=2,
                  action_horizon=2, future_offset=2, max_text_len=8)
  cfg.train.update(steps=4, batch_size=4, warmup_steps=1, learning_rate=3e-3, log_every=2, val_every=0,
                   ckpt_every=4, summary_every=0, compute_dtype="float32", matmul_peak_gflops=100.0)
  cfg.mesh.shape = (1, 1, 1)
  return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An IDM trained 4 steps; the video labelled in two runs (interrupted after 2 episodes, then resumed,
  with a half-written shard left between them) and, for reference, in one."""
  root = tmp_path_factory.mktemp("wam_data")
  synthetic.write_metaworld(root, "metaworld_demos", with_action=True, textured=True)
  src = synthetic.write_metaworld(root, "metaworld_video", with_action=False, lengths=VIDEO_LENGTHS,
                                  textured=True)
  workdir = tmp_path_factory.mktemp("idm_run")
  cfg = idm_config(root)
  trainer.train(cfg, workdir, devices=jax.devices()[:1])
  out = root / LABELED / "1.0.0"
  logs = []
  first = pseudo_label.label_dataset(workdir, src, out, batch_size=4, episodes_per_shard=2, max_episodes=2,
                                     log=logs.append)
  state_after_first = dict(out_exists=out.exists(),
                           partial=sorted(p.name for p in pseudo_label.partial_dir(out).iterdir()))
  # A run killed mid-shard: a shard file without its sidecar.
  (pseudo_label.partial_dir(out) / "train-00001.array_record").write_bytes(b"half-written")
  second = pseudo_label.label_dataset(workdir, src, out, batch_size=4, episodes_per_shard=2, log=logs.append)
  reference = tmp_path_factory.mktemp("reference") / LABELED / "1.0.0"
  whole = pseudo_label.label_dataset(workdir, src, reference, batch_size=4, episodes_per_shard=100,
                                     log=logs.append)
  return dict(root=root, src=src, out=out, reference=reference, workdir=workdir, cfg=cfg, logs=logs,
              first=first, second=second, whole=whole, state_after_first=state_after_first)


def decoded_episodes(directory, split):
  """Every feature of every episode, decoded (the full record, not only what the data path reads)."""
  import tensorflow_datasets as tfds
  source = tfds.builder_from_directory(str(directory)).as_data_source(split)
  return [dict(ep, steps=list(ep["steps"])) for ep in (source[i] for i in range(len(source)))]


def test_interrupted_labelling_leaves_no_dataset_and_resumes(runs):
  assert runs["first"]["status"] == "partial" and runs["first"]["episodes"] == 2
  assert not runs["state_after_first"]["out_exists"]          # never readable as complete
  assert "train-00000.json" in runs["state_after_first"]["partial"]
  assert runs["second"]["status"] == "complete"
  n_total = 2 * len(VIDEO_LENGTHS)                           # train + val
  assert runs["second"]["skipped"] == 2 and runs["second"]["episodes"] == n_total - 2
  assert runs["whole"]["episodes"] == n_total
  assert not pseudo_label.partial_dir(runs["out"]).exists()
  assert any("episodes/min" in line for line in runs["logs"])
  # A third run finds it complete and does nothing.
  again = pseudo_label.label_dataset(runs["workdir"], runs["src"], runs["out"], log=lambda _: None)
  assert again["status"] == "already_complete" and again["episodes"] == 0


def test_resumed_output_equals_one_uninterrupted_run(runs):
  for split in ("train", "val"):
    resumed, whole = decoded_episodes(runs["out"], split), decoded_episodes(runs["reference"], split)
    assert len(resumed) == len(whole) == len(VIDEO_LENGTHS)
    for a, b in zip(resumed, whole):
      jax.tree.map(np.testing.assert_array_equal, a, b)


def test_output_reads_through_the_data_path_like_demos(runs):
  cfg = synthetic.data_cfg(runs["root"], mixture=((LABELED, 1.0),))
  spec = pipeline.open_reader(cfg, "metaworld_video", "train").spec
  for split in ("train", "val"):
    labeled = pipeline.open_reader(cfg, LABELED, split)
    source = rlds.RldsReader(runs["src"], split, spec)
    assert len(labeled) == len(source) == len(VIDEO_LENGTHS)
    np.testing.assert_array_equal(labeled.episode_lengths(), VIDEO_LENGTHS)
    for e in range(len(labeled)):
      ep, src_ep = labeled.decode(e, cameras=("primary",)), source.decode(e, cameras=("primary",))
      assert ep.actions.shape == (VIDEO_LENGTHS[e], 4) and ep.actions.dtype == np.float32
      assert np.isfinite(ep.actions).all()
      np.testing.assert_array_equal(ep.frames["primary"], src_ep.frames["primary"])  # PNG: lossless copy
      np.testing.assert_array_equal(ep.proprio, src_ep.proprio)
      assert ep.instruction == src_ep.instruction
  normalizer = pipeline.make_normalizer(cfg)                   # statistics, as any mixture computes them
  assert normalizer.action_dim(LABELED) == 4
  source = windows.WindowSource(pipeline.open_reader(cfg, LABELED, "train"),
                                windows.WindowSpec.from_config(runs["cfg"].data), normalizer, dataset_id=0)
  window = source[0]
  assert window["action_mask"].all() and window["action_dim_mask"][:4].all()


def test_metadata_names_the_idm(runs):
  step = ckpt_lib.Checkpointer(runs["workdir"] / "checkpoints", read_only=True).all_steps()[-1]
  checkpoint_id = f"{pathlib.Path(runs['workdir']).absolute()}@{step}"
  meta = json.loads((runs["out"] / pseudo_label.METADATA_FILE).read_text())
  assert meta["idm_checkpoint"] == checkpoint_id and meta["pseudo_labeled"] is True
  assert meta["src"] == str(runs["src"]) and meta["dataset"] == "metaworld_demos"
  for ep in decoded_episodes(runs["out"], "train"):
    assert ep["episode_metadata"]["pseudo_labeled"]
    assert ep["episode_metadata"]["idm_checkpoint"].decode() == checkpoint_id
    assert ep["episode_metadata"]["task"]                      # the source's metadata is kept
  info = json.loads((runs["out"] / "dataset_info.json").read_text())
  assert checkpoint_id in info["description"]


def test_actions_are_the_idms_own_predictions(runs):
  idm = pseudo_label.load_idm(runs["workdir"])
  cfg = synthetic.data_cfg(runs["root"], mixture=((LABELED, 1.0),))
  wspec = windows.WindowSpec.from_config(idm.config.data)
  k, kk = wspec.future_offset, wspec.action_horizon
  source = rlds.RldsReader(runs["src"], "train", pseudo_label.source_spec(idm, runs["src"]))
  labeled = pipeline.open_reader(cfg, LABELED, "train")
  for e in (0, 1):
    ep = windows.prepare_episode(source.decode(e, cameras=wspec.cameras, image_size=wspec.image_size), wspec,
                                 idm.normalizer, idm.dataset_name, tokenizer_lib.ByteTokenizer(wspec.max_text_len))
    got = labeled.decode(e).actions
    t0 = max(ep.length - 1 - k, 0)

    def chunk(t):
      window = windows.cut_window(ep, t, wspec, idm.dataset_id)
      if ep.length - 1 < k:  # no o_t+k in the episode: its last frame stands in, marked valid
        window["future_mask"][0] = True
      batch = {key: np.asarray(v)[None] for key, v in window.items()}
      pred = np.asarray(idm.predict(idm.params, batch, jax.random.key(0)))[0]
      return idm.normalizer.denormalize_actions(pred, idm.dataset_name)[:, :4]

    for t in sorted({0, min(1, t0), t0}):
      np.testing.assert_allclose(got[t], chunk(t)[0], rtol=1e-4, atol=1e-5)
    for t in range(t0 + 1, ep.length):  # the tail continues the last full window's chunk
      np.testing.assert_allclose(got[t], chunk(t0)[min(t - t0, kk - 1)], rtol=1e-4, atol=1e-5)
  assert len(np.unique(labeled.decode(0).actions[:, 0])) > 1  # not one constant action


def test_step_actions_rule():
  chunks = np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1)  # chunks at t = 0, 1, 2; K = 2
  np.testing.assert_array_equal(pseudo_label.step_actions(chunks, 5)[:, 0], [0, 2, 4, 5, 5])
  np.testing.assert_array_equal(pseudo_label.step_actions(chunks[:1], 1)[:, 0], [0])


def test_bad_inputs_name_what_is_wrong(runs, tmp_path, monkeypatch):
  out = tmp_path / "labeled" / "1.0.0"
  with pytest.raises(ValueError, match="no_such_dataset.*no dataset_info.json"):
    pseudo_label.label_dataset(runs["workdir"], tmp_path / "no_such_dataset", out)
  empty_run = tmp_path / "untrained"
  empty_run.mkdir()
  with pytest.raises(ValueError, match="untrained: the run has no checkpoint"):
    pseudo_label.label_dataset(empty_run, runs["src"], out)
  with pytest.raises(ValueError, match="no checkpoint step 999; steps: \\[4\\]"):
    pseudo_label.label_dataset(runs["workdir"], runs["src"], out, step=999)
  with pytest.raises(ValueError, match="no_run: no such run directory"):
    pseudo_label.label_dataset(tmp_path / "no_run", runs["src"], out)
  with pytest.raises(ValueError, match="not action-free"):
    pseudo_label.label_dataset(runs["workdir"], runs["root"] / "metaworld_demos" / "1.0.0", out)
  # Refused before any labelling (TFDS reads the last directory as the version when it finishes).
  with pytest.raises(ValueError, match=r"--out=\S*/labeled: the last directory is the dataset's TFDS version"):
    pseudo_label.label_dataset(runs["workdir"], runs["src"], out.parent)
  monkeypatch.setattr(pseudo_label, "METADATA_FILE", "missing.json")  # an existing output, not by this IDM
  with pytest.raises(ValueError, match="exists and was not labelled by"):
    pseudo_label.label_dataset(runs["workdir"], runs["src"], runs["out"], log=lambda _: None)
  monkeypatch.undo()
  restore_assets = ckpt_lib.Checkpointer.restore_assets

  def as_vla(self, step=None):
    assets, s = restore_assets(self, step)
    assets["config"]["model"]["name"] = "vla"
    return assets, s

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_assets", as_vla)
  with pytest.raises(ValueError, match=r"config\.model\.name='vla', expected 'idm'"):
    pseudo_label.label_dataset(runs["workdir"], runs["src"], out)
  assert not out.exists()


def test_script_reports_bad_input_in_one_line(runs, tmp_path):
  r = subprocess.run([sys.executable, str(REPO / "scripts" / "label_video.py"), f"--idm={runs['workdir']}",
                      f"--src={tmp_path / 'missing'}", f"--out={tmp_path / 'x' / '1.0.0'}"],
                     capture_output=True, text=True, cwd=REPO, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("label_video: --src=")
  assert "no dataset_info.json" in r.stderr
  both = subprocess.run([sys.executable, str(REPO / "scripts" / "label_video.py"), f"--idm={runs['workdir']}",
                         "--expert", f"--src={runs['src']}", f"--out={tmp_path / 'y' / '1.0.0'}"],
                        capture_output=True, text=True, cwd=REPO, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
  assert both.returncode == 2 and "pass exactly one labeller" in both.stderr.strip().splitlines()[-1]


def test_the_sweep_harness_label_command_writes_a_finished_dataset(runs, tmp_path):
  """The exact command a sweep's label cell runs (experiments/sweeps/idm_claim2.py), end to end: its
  output is a complete RLDS dataset where the harness and the data path look for it."""
  from wam_jax.ablations import protocol
  from wam_jax.ablations import sweep as sweep_lib
  root = tmp_path / "protocol_data"  # the protocol's pool, synthetic and short
  synthetic.write_metaworld(root, protocol.VIDEO_NAME, with_action=False, lengths=(5, 3), textured=True)
  workdir = tmp_path / "sweep"
  (workdir / "idm").mkdir(parents=True)
  (workdir / "idm" / "seed_0").symlink_to(runs["workdir"])
  cell = sweep_lib.Cell("label", kind="label", init_from="idm", overrides={"data_dir": str(root), "batch_size": 4})
  rdir = workdir / "label" / "seed_0"
  rdir.mkdir(parents=True)
  out = subprocess.run(sweep_lib.command(cell, 0, rdir), cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert sweep_lib._finished(rdir, None, "label") == (True, "")
  reader = rlds.RldsReader(rdir / sweep_lib.LABELLED, "train", registry.get_spec(LABELED))
  assert len(reader) == 2 and reader.decode(0).actions.shape == (5, 4)


def test_the_expert_labels_a_real_pool_with_the_actions_it_took(tmp_path):
  """The oracle (``--expert``): two scripted-expert rollouts written as action-free video (as the protocol
  writes its pool) get back the actions the expert took, from each step's stored full state; the metadata
  names the expert. A source without real tasks gets an error naming the task."""
  from wam_jax.data import rlds_writer
  from wam_jax.sim import metaworld_data
  episodes = [metaworld_data.rollout_expert(task, seed, resolution=16, max_steps=40)
              for task, seed in (("reach-v3", 0), ("drawer-close-v3", 1))]
  taken = [ep["steps"]["action"] for ep in episodes]
  for i, ep in enumerate(episodes):
    ep.pop("first_success")
    ep["steps"].pop("action")
    ep["episode_metadata"]["episode_id"] = i
  src = rlds_writer.write_rlds_dataset(tmp_path / "pool" / "1.0.0", metaworld_data.features(16, with_action=False),
                                       {"train": episodes, "val": episodes[:1]})
  out = tmp_path / "metaworld_video_pool_oracle" / "1.0.0"
  r = pseudo_label.label_dataset(pseudo_label.EXPERT, src, out, log=lambda s: None)
  assert (r["status"], r["episodes"], r["idm_checkpoint"]) == ("complete", 3, "metaworld-scripted-expert")
  labelled = decoded_episodes(out, "train")
  for ep, actions in zip(labelled, taken):
    np.testing.assert_allclose(np.stack([s["action"] for s in ep["steps"]]), actions, atol=1e-5)
    assert ep["episode_metadata"]["idm_checkpoint"].decode() == "metaworld-scripted-expert"
  meta = json.loads((out / pseudo_label.METADATA_FILE).read_text())
  assert meta["action_rule"] == pseudo_label.EXPERT_RULE and meta["dataset"] == "metaworld_mt10_n20"
  synthetic_src = synthetic.write_metaworld(tmp_path / "synthetic", "metaworld_video", with_action=False)
  with pytest.raises(ValueError, match="unknown MetaWorld task 'task 0'"):
    pseudo_label.label_dataset(pseudo_label.EXPERT, synthetic_src, tmp_path / "bad" / "x" / "1.0.0",
                               log=lambda s: None)
