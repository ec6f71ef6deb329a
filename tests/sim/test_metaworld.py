"""MetaWorld envs, observations, seeding, frozen-frame detection and the demo datasets."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from wam_jax.sim import metaworld as mw
from wam_jax.sim import metaworld_data

TASKS = ("drawer-close-v3", "button-press-topdown-v3")
RES = 32


def test_unknown_task_lists_valid_names():
  with pytest.raises(ValueError, match="unknown MetaWorld task 'drawer-opn-v3'.*drawer-open-v3"):
    mw.check_task("drawer-opn-v3")
  with pytest.raises(ValueError, match="reach-v3"):
    mw.make_env("reach-v2")
  with pytest.raises(ValueError, match="assembly-v3"):
    mw.parse_tasks("reach-v3,nope")
  assert mw.parse_tasks("reach-v3, push-v3,reach-v3") == ("reach-v3", "push-v3")
  assert mw.parse_tasks("all") == tuple(mw.valid_tasks())


def test_every_v3_task_has_a_distinct_instruction():
  assert set(mw.TASK_INSTRUCTIONS) == set(mw.valid_tasks())
  assert len(mw.valid_tasks()) == 50
  assert len(set(mw.TASK_INSTRUCTIONS.values())) == 50
  assert mw.instruction("drawer-open-v3") == "open the drawer"


def test_paraphrases_are_unseen_rewordings_of_every_mt10_task():
  from wam_jax.ablations import protocol
  assert set(mw.PARAPHRASES) == set(protocol.MT10)
  seen = set(mw.TASK_INSTRUCTIONS.values())
  for task, options in mw.PARAPHRASES.items():
    assert len(set(options)) == len(options) >= 2
    assert not seen & set(options), task  # never a training instruction of any task
    assert {mw.instruction(task, "paraphrase", seed) for seed in range(len(options))} == set(options)
  assert mw.instruction("reach-v3", "train", 7) == "reach the goal position"
  with pytest.raises(ValueError, match="'assembly-v3' has no paraphrases"):
    mw.instruction("assembly-v3", "paraphrase")
  with pytest.raises(ValueError, match="instructions='typo'"):
    mw.instruction("reach-v3", "typo")


def test_observation_and_seeded_starts():
  env = mw.cached_env("drawer-close-v3", RES)
  obs = mw.observe(env, mw.reset(env, 3))
  assert obs["image_primary"].shape == (RES, RES, 3) and obs["image_primary"].dtype == np.uint8
  assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
  assert obs["env_state"].shape == (39,) and obs["env_state"].dtype == np.float32
  np.testing.assert_array_equal(obs["proprio"], obs["env_state"][:4])
  again = mw.observe(env, mw.reset(env, 3))
  other = mw.observe(env, mw.reset(env, 4))
  np.testing.assert_array_equal(obs["env_state"], again["env_state"])
  np.testing.assert_array_equal(obs["image_primary"], again["image_primary"])
  assert not np.array_equal(obs["env_state"], other["env_state"])


def test_the_goal_marker_is_where_the_goal_is_from_the_first_frame():
  """Regression: MetaWorld writes the goal to model.site_pos, and the drawn marker waited for the
  first physics step, so every episode's first frame showed it elsewhere (its start state's first
  random draw). The green marker of push-v3 must not move when nothing moves it."""
  env = mw.make_env("push-v3")
  green = lambda im: np.argwhere((im[..., 1] > 150) & (im[..., 0] < 80) & (im[..., 2] < 80)).mean(0)
  marks = []
  for seed in (100_000, 100_001, 100_002):
    first = mw.observe(env, mw.reset(env, seed))["image_primary"]
    raw, _, _ = mw.step(env, np.zeros(4))
    second = mw.observe(env, raw)["image_primary"]
    np.testing.assert_allclose(green(first), green(second), atol=0.5)
    marks.append(green(first))
  assert np.ptp(np.stack(marks), axis=0).max() > 1.5  # and it moves with the seed's goal
  # The first frame depends on the seed only, not on what the env ran before.
  fresh = mw.make_env("push-v3")
  np.testing.assert_array_equal(mw.observe(fresh, mw.reset(fresh, 100_001))["image_primary"],
                                mw.observe(env, mw.reset(env, 100_001))["image_primary"])


def test_the_zoomed_camera_magnifies_corner4_about_its_centre():
  """corner4_zoom: corner4's pose, field of view 60 -> 42.1 degrees: the goal marker's offset from
  the image centre grows tan(30) / tan(21.05) = 1.5x."""
  green = lambda im: np.argwhere((im[..., 1] > 150) & (im[..., 0] < 80) & (im[..., 2] < 80)).mean(0)
  offsets = {}
  for camera in ("corner4", "corner4_zoom"):
    env = mw.make_env("push-v3", resolution=128, camera=camera)
    offsets[camera] = np.stack([green(mw.observe(env, mw.reset(env, s))["image_primary"]) - 63.5
                                for s in (100_000, 100_001)])
  np.testing.assert_allclose(offsets["corner4_zoom"], 1.5 * offsets["corner4"], atol=1.0)
  with pytest.raises(ValueError, match="corner4_zoom"):
    mw.make_env("push-v3", camera="corner5")


def test_frames_change_while_the_arm_moves():
  env = mw.cached_env("button-press-topdown-v3", RES)
  raw = mw.reset(env, 0)
  frames, states = [], []
  for _ in range(10):
    obs = mw.observe(env, raw)
    frames.append(obs["image_primary"])
    states.append(obs["env_state"])
    raw, _, _ = mw.step(env, [0.0, 0.0, 1.0, 0.0])  # Lift the hand.
  frames = np.stack(frames)
  assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))
  assert mw.check_frames_live(frames, np.stack(states)) == 0.0
  frozen = np.repeat(frames[:1], len(frames), axis=0)
  with pytest.raises(mw.FrozenFramesError, match="frozen"):
    mw.check_frames_live(frozen, np.stack(states))


def test_several_live_envs_in_one_process_render_live_frames():
  """Regression: with several cached envs, rendering one without making its GL
  context current read stale frames (door-open-v3 seed 50004: 52% frozen)."""
  for task in ("drawer-close-v3", "button-press-topdown-v3", "drawer-open-v3", "door-open-v3",
               "window-open-v3", "button-press-v3"):
    mw.cached_env(task, 64)
  obs = metaworld_data.rollout_expert("door-open-v3", 50004, resolution=64)["steps"]["observation"]
  assert mw.check_frames_live(obs["image"], obs["env_state"]) < 0.05


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("wam_data")
  metaworld_data.generate_demos(root, TASKS, 2, resolution=RES, num_workers=1)
  metaworld_data.generate_video(root, ("reach-v3",), 2, resolution=RES, num_workers=1)
  return root


def test_demo_dataset_reads_back_with_plain_tfds(data_root):
  builder = tfds.builder_from_directory(str(data_root / "metaworld_demos" / "1.0.0"))
  train, val = builder.as_data_source("train"), builder.as_data_source("val")
  assert (len(train), len(val)) == (2, 2)  # Per task: 1 train, 1 val.
  ids = set()
  for source in (train, val):
    for i in range(len(source)):
      ep = source[i]
      meta = ep["episode_metadata"]
      ids.add(int(meta["episode_id"]))
      task = meta["task"].decode()
      assert task in TASKS and meta["success"]
      steps = list(ep["steps"])
      assert 10 < len(steps) <= metaworld_data.MAX_STEPS
      images = np.stack([s["observation"]["image"] for s in steps])
      assert images.shape == (len(steps), RES, RES, 3) and images.dtype == np.uint8
      moving = np.mean([not np.array_equal(a, b) for a, b in zip(images[:-1], images[1:])])
      assert moving > 0.5, "stored frames are frozen"
      s0, last = steps[0], steps[-1]
      assert s0["observation"]["state"].shape == (4,) and s0["observation"]["state"].dtype == np.float32
      assert s0["observation"]["env_state"].shape == (39,)
      assert s0["action"].shape == (4,) and s0["action"].dtype == np.float32
      assert np.all(np.abs(np.stack([s["action"] for s in steps])) <= 1.0)
      assert s0["language_instruction"].decode() == mw.instruction(task)
      assert s0["is_first"] and not s0["is_last"]
      assert last["is_last"] and last["is_terminal"] and last["discount"] == 0.0
      assert s0["reward"].dtype == np.float32
  assert ids == {0, 1, 2, 3}


def test_video_dataset_has_no_actions(data_root):
  builder = tfds.builder_from_directory(str(data_root / "metaworld_video" / "1.0.0"))
  assert "action" not in builder.info.features["steps"].feature
  ep = builder.as_data_source("train")[0]
  assert ep["episode_metadata"]["seed"] >= metaworld_data.VIDEO_SEED_OFFSET
  assert "action" not in next(iter(ep["steps"]))


def test_ensure_embedded_dataset_reuses_existing(data_root, monkeypatch):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(data_dir="", metaworld=dict(
      tasks=TASKS, episodes_per_task=2, video_episodes_per_task=2, resolution=RES)))
  monkeypatch.setenv("WAM_DATA_DIR", str(data_root))
  logs = []
  assert metaworld_data.ensure_embedded_dataset(cfg, log=logs.append) == data_root
  assert logs == []  # Both datasets exist: nothing regenerated.


def test_failing_expert_is_reported(tmp_path):
  with pytest.raises(RuntimeError, match="raise max_steps"):  # 5 steps: no expert succeeds.
    metaworld_data.collect_episodes(("reach-v3",), 1, max_steps=5, resolution=RES,
                                    max_failures_per_task=1, log=lambda s: None)


def test_ensure_embedded_dataset_generates_when_absent(tmp_path):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(data_dir=str(tmp_path / "root"), metaworld=dict(
      tasks=("reach-v3",), episodes_per_task=2, video_episodes_per_task=2, resolution=RES,
      extra_video_tasks=("drawer-close-v3",))))
  root = metaworld_data.ensure_embedded_dataset(cfg, num_workers=1, log=lambda s: None)
  demos = tfds.builder_from_directory(str(root / "metaworld_demos" / "1.0.0"))
  video = tfds.builder_from_directory(str(root / "metaworld_video" / "1.0.0"))
  assert demos.info.splits["train"].num_examples == 1
  tasks = {video.as_data_source(s)[i]["episode_metadata"]["task"].decode()
           for s in ("train", "val") for i in range(2)}
  assert tasks == {"reach-v3", "drawer-close-v3"}
  # Reused as is with the same settings; other settings are an error naming the field.
  assert metaworld_data.ensure_embedded_dataset(cfg, num_workers=1, log=pytest.fail) == root
  cfg.metaworld.episodes_per_task = 5
  with pytest.raises(ValueError, match="data.metaworld.episodes_per_task: dataset has 2, config asks 5"):
    metaworld_data.ensure_embedded_dataset(cfg, num_workers=1, log=lambda s: None)


def test_ensure_embedded_dataset_skips_mixtures_without_the_sample(tmp_path):
  """A run on other data (here a labelled pool) with no data_dir generates no MetaWorld sample:
  the sweep's ``vla_pseudo`` cells did, a minute of MuJoCo for datasets nobody read."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(data_dir=str(tmp_path / "root"), mixture=(("metaworld_video_labeled", 1.0),),
                                       metaworld=dict(tasks=("reach-v3",), episodes_per_task=2,
                                                      video_episodes_per_task=2, resolution=RES)))
  assert metaworld_data.ensure_embedded_dataset(cfg, num_workers=1, log=pytest.fail) == tmp_path / "root"
  assert not (tmp_path / "root").exists()


def test_data_pipeline_reads_generated_datasets(data_root, tmp_path):
  from experiments.configs import common
  from wam_jax.data import batch as batch_lib
  from wam_jax.data import pipeline
  cfg = common.data_config()
  cfg.data_dir = str(data_root)
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.image_size = RES
  cfg.mixture = (("metaworld_demos", 1.0), ("metaworld_video", 1.0))
  pipe = pipeline.make_pipeline(cfg, split="train", batch_size=4, seed=0, train=True)
  batch = next(pipe.iterator)
  batch_lib.check_batch(batch, cfg.cameras, history=cfg.history, horizon=cfg.action_horizon,
                        action_dim=cfg.action_dim)
  assert batch["image_primary"].shape[-3:] == (RES, RES, 3)
  from_video = batch["dataset_id"] == 1
  assert not batch["action_mask"][from_video].any()  # Action-free windows.
  assert batch["action_dim_mask"][~from_video][:, :4].all()


def test_collection_saves_each_task_before_the_next_one_starts(monkeypatch):
  """In-process (``num_workers=1``) collection runs jobs in task order and hands a task to
  ``on_task_done`` as soon as it has its episodes, before the next task's first rollout: an interrupted
  generation keeps every finished task, and memory holds one task's episodes, not all of them. A failed
  seed is replaced by the task's next unused seed."""
  events = []

  def fake_rollout(task, seed, **kwargs):
    events.append(("rollout", task, seed))
    success = not (task == "reach-v3" and seed == 1)
    return {"episode_metadata": {"success": success, "seed": seed}, "steps": {"is_first": np.zeros(3, bool)}}

  monkeypatch.setattr(metaworld_data, "rollout_expert", fake_rollout)
  logs = []
  done, stats = metaworld_data.collect_episodes(
      ("reach-v3", "push-v3"), 3, num_workers=1, log=logs.append,
      on_task_done=lambda task, eps: events.append(("saved", task, tuple(e["episode_metadata"]["seed"] for e in eps))))
  saved_reach = events.index(("saved", "reach-v3", (0, 2, 3)))
  first_push = next(i for i, e in enumerate(events) if e[:2] == ("rollout", "push-v3"))
  assert saved_reach < first_push
  assert events[-1] == ("saved", "push-v3", (0, 1, 2))
  assert done == {"reach-v3": [], "push-v3": []}
  assert (stats.episodes, stats.failures, stats.failed_seeds) == (6, 1, {"reach-v3": [1]})
  assert logs[-1].startswith("[demos] 6/6 episodes, 1 failed")
