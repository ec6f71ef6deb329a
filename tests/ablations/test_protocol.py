"""Protocol data generation on a shrunken recipe (2 tasks, a few episodes, in-process): a killed
generation leaves no dataset that looks complete and resumes without redoing saved tasks; N-demo
datasets are nested; the video pool has no actions; configs read the datasets by name."""

import jax
import pytest

from experiments.configs import protocol as protocol_config
from experiments.configs import vla_baseline
from wam_jax.ablations import protocol
from wam_jax.data import rlds
from wam_jax.data import registry
from wam_jax.data.fake_batch import make_batch
from wam_jax.models import registry as model_registry
from wam_jax.sim import metaworld_data

TASKS = ("reach-v3", "drawer-close-v3")


@pytest.fixture
def small_recipe(monkeypatch):
  P = protocol.Part
  monkeypatch.setattr(protocol, "parts", lambda: {p.name: p for p in (
      P("demos_train", TASKS, 3, 0, 200, True),
      P("demos_val", TASKS, 1, 10_000, 200, True),
      P("video_mt10", TASKS[:1], 2, 50_000, 500, False),
      P("video_val", TASKS[:1], 1, 60_000, 500, False))})
  monkeypatch.setattr(protocol, "datasets", lambda: {
      "metaworld_mt10_n2": {"train": [("demos_train", 2)], "val": [("demos_val", None)]},
      "metaworld_mt10_n5": {"train": [("demos_train", 3)], "val": [("demos_val", None)]},
      "metaworld_video_pool": {"train": [("video_mt10", None)], "val": [("video_val", None)]}})
  calls = []
  real = metaworld_data.rollout_expert

  def counted(task, seed, **kw):
    calls.append((task, seed))
    if seed >= 10_000 and counted.fail:
      raise KeyboardInterrupt("killed")  # as if the run were killed in the second part
    return real(task, seed, **kw)
  counted.fail = True
  monkeypatch.setattr(metaworld_data, "rollout_expert", counted)
  return calls, counted


def _metadata(reader):
  out = []
  for i in range(len(reader)):
    ep = reader.features.deserialize_example_np(reader.raw(i))
    meta = ep["episode_metadata"]
    task = meta["task"].decode() if isinstance(meta["task"], bytes) else str(meta["task"])
    out.append((task, int(meta["seed"]), "action" in ep["steps"][0]))
  return out


def test_generation_resumes_and_datasets_are_nested(small_recipe, tmp_path):
  calls, rollout = small_recipe
  names = ["metaworld_mt10_n2", "metaworld_mt10_n5"]
  with pytest.raises(KeyboardInterrupt):
    protocol.ensure_data(tmp_path, names, num_workers=1, keep_parts=True, log=lambda s: None)
  # demos_train was saved; nothing that looks like a dataset exists.
  assert protocol.status(tmp_path)["parts"]["demos_train"] == (2, 2)
  assert protocol.status(tmp_path)["parts"]["demos_val"] == (0, 2)
  assert not any(protocol.is_ready(tmp_path, n) for n in names)

  calls.clear()
  rollout.fail = False
  lines = []
  protocol.ensure_data(tmp_path, names, num_workers=1, keep_parts=True, log=lines.append)
  assert calls and all(seed >= 10_000 for _, seed in calls), "saved tasks were redone"
  assert any("2/2 tasks already saved" in line for line in lines)
  n2, n5 = (_metadata(rlds.RldsReader(protocol.dataset_dir(tmp_path, n), "train", registry.get_spec(n)))
            for n in names)
  assert [(t, s) for t, s, _ in n2] == [(t, s) for t, s, _ in n5 if s < 2] and len(n5) == 6
  val = _metadata(rlds.RldsReader(protocol.dataset_dir(tmp_path, names[0]), "val",
                                  registry.get_spec(names[0])))
  assert [s for _, s, _ in val] == [10_000, 10_000] and all(a for _, _, a in n2)

  protocol.ensure_data(tmp_path, ["metaworld_video_pool"], num_workers=1, log=lambda s: None)
  video = _metadata(rlds.RldsReader(protocol.dataset_dir(tmp_path, "metaworld_video_pool"), "train",
                                    registry.get_spec("metaworld_video_pool")))
  assert [s for _, s, _ in video] == [50_000, 50_001] and not any(a for _, _, a in video)
  # Every protocol dataset exists now: the parts are cleaned up.
  assert not (tmp_path / protocol.PARTS_DIR).exists()


def test_protocol_presets():
  for n in (2, 5, 20):
    cfg = vla_baseline.get_config(f"mt10_n{n}")
    assert cfg.data.mixture == ((f"metaworld_mt10_n{n}", 1.0),)
    assert cfg.eval.tasks == protocol.MT10 and cfg.eval.episodes_per_task == 20
    assert cfg.eval.seed_offset == 100_000 and cfg.eval.max_steps == 200 and cfg.eval.execute_steps == 4
    assert cfg.eval.at_end and cfg.data.image_size == 64
  assert vla_baseline.get_config("mt10").data.mixture == (("metaworld_mt10_n20", 1.0),)
  with pytest.raises(ValueError, match="n_demos=3"):
    vla_baseline.get_config("mt10_n3")
  with pytest.raises(ValueError, match="mt10_n2"):
    protocol_config.n_demos_of("mt10_x")
  for name in protocol.DATASET_NAMES:
    assert registry.get_spec(name).directory == f"{name}/1.0.0"


def test_pretraining_stages_see_the_video_pool_only_and_policies_restore_them():
  """One pretraining per family serves every N (and seed): no labeled demos in its data."""
  from experiments.configs import idm_wam, video_wam  # pylint: disable=g-import-not-at-top
  pool = ((protocol.VIDEO_NAME, 1.0),)
  stages = {"video_wam:pretrain_mt10": video_wam.get_config("pretrain_mt10"),
            "idm_wam:latent_mt10": idm_wam.get_config("latent_mt10"),
            "idm_wam:latent_policy_mt10": idm_wam.get_config("latent_policy_mt10")}
  for name, cfg in stages.items():
    assert cfg.data.mixture == pool, name
    assert not cfg.eval.at_end, name
  assert idm_wam.get_config("latent_policy_mt10").train.init_from == "runs/latent_mt10"
  for n in (2, 5, 20):
    policy = video_wam.get_config(f"policy_mt10_n{n}")
    assert policy.data.mixture == ((f"metaworld_mt10_n{n}", 1.0), (protocol.VIDEO_NAME, 0.3))
    assert policy.train.init_from == "runs/video_pretrain_mt10" and policy.eval.at_end
    finetune = idm_wam.get_config(f"finetune_mt10_n{n}")
    assert finetune.data.mixture == ((f"metaworld_mt10_n{n}", 1.0),)
    assert finetune.train.init_from == "runs/latent_policy_mt10"
  with pytest.raises(ValueError, match="video_weight > 0"):
    protocol_config.apply(vla_baseline.get_config("mt10_n2"), None)


def _family_protocol_configs():
  from experiments.configs import cnn_bc, hybrid, idm_wam, joint_wam, video_wam  # pylint: disable=g-import-not-at-top
  yield "vla_baseline:mt10_n2", vla_baseline.get_config("mt10_n2")
  yield "cnn_bc:mt10_n2", cnn_bc.get_config("mt10_n2")
  for mod in (video_wam, joint_wam, idm_wam, hybrid):
    for preset in mod.PROTOCOL_PRESETS:  # N=2, and the pretraining stages (no N)
      if not preset.endswith(("_n5", "_n20")):
        yield f"{mod.__name__.split('.')[-1]}:{preset}", mod.get_config(preset)


def test_every_family_reads_protocol_frames_the_same_way():
  """Unaugmented frames, and the protocol's conv trunk wherever the model has a ``stem`` field;
  every such model builds and initialises with it at the protocol's geometry (shapes only)."""
  seen = 0
  for name, cfg in _family_protocol_configs():
    assert not cfg.data.augment.enabled, name
    assert cfg.data.image_size == protocol.RESOLUTION, name
    # Room for every decoded protocol episode (demos + pool, ~1.2 GB): no re-decoding while training.
    assert cfg.data.episode_cache_mb == protocol_config.EPISODE_CACHE_MB >= 1536, name
    if "stem" not in cfg.model:
      continue
    assert tuple(cfg.model.stem) == protocol_config.STEM, name
    model = model_registry.build_model(cfg, num_datasets=2)
    shapes = jax.eval_shape(lambda b, m=model: model_registry.init_params(m, jax.random.key(0), b),
                            make_batch(cfg, 2, num_datasets=2))
    convs = [p for p in jax.tree_util.tree_flatten_with_path(shapes)[0] if "stem_3" in jax.tree_util.keystr(p[0])]
    assert convs, f"{name}: no stem convolution in its parameters"
    seen += 1
  assert seen >= 5  # vla, video WAM (both stages), joint, idm/latent presets
