"""Closed-loop evaluation: expert ~100%, random ~0%, chunking, ensembling, reports."""

import functools
import json

import numpy as np
import pytest

from experiments.configs import vla_baseline
from wam_jax.data import normalization
from wam_jax.data import rlds
from wam_jax.data import windows
from wam_jax.evaluation import evaluate as evaluate_lib
from wam_jax.evaluation import metrics
from wam_jax.evaluation import policy as policy_lib
from wam_jax.evaluation import rollout

TASKS = ("drawer-close-v3", "button-press-topdown-v3")


def test_wilson_interval():
  lo, hi = metrics.wilson_interval(10, 10)
  assert hi == 1.0 and 0.69 < lo < 0.73
  lo, hi = metrics.wilson_interval(0, 10)
  assert lo == 0.0 and 0.27 < hi < 0.31
  lo, hi = metrics.wilson_interval(5, 10)
  assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9


def test_chunk_execution_runs_execute_steps_then_requeries():
  ex = rollout.ChunkExecutor(execute_steps=2)
  chunk = np.arange(12, dtype=np.float32).reshape(3, 4)
  assert ex.needs_query()
  ex.add(chunk)
  np.testing.assert_array_equal(ex.next_action(), chunk[0])
  assert not ex.needs_query()
  np.testing.assert_array_equal(ex.next_action(), chunk[1])
  assert ex.needs_query()
  with pytest.raises(ValueError, match="chunk"):
    ex.add(np.zeros(4))


def test_temporal_ensemble_weights_oldest_prediction_most():
  ex = rollout.ChunkExecutor(temporal_ensemble=True, decay=0.5)
  ex.add(np.full((3, 1), 1.0))
  np.testing.assert_allclose(ex.next_action(), [1.0])
  ex.add(np.full((3, 1), 3.0))  # Step 1 has predictions 1 (old) and 3 (new).
  w = np.exp(-0.5 * np.arange(2))
  np.testing.assert_allclose(ex.next_action(), [(w[0] * 1 + w[1] * 3) / w.sum()], rtol=1e-6)
  ex.add(np.full((1, 1), 5.0))
  w = np.exp(-0.5 * np.arange(3))
  np.testing.assert_allclose(ex.next_action(), [(w @ [1.0, 3.0, 5.0]) / w.sum()], rtol=1e-6)
  ex.add(np.full((1, 1), 7.0))  # The first chunk (3 steps) has run out.
  w = np.exp(-0.5 * np.arange(2))
  np.testing.assert_allclose(ex.next_action(), [(w @ [3.0, 7.0]) / w.sum()], rtol=1e-6)


def test_expert_succeeds_and_reports_are_written(tmp_path):
  res = evaluate_lib.evaluate(policy_lib.ExpertPolicy, TASKS, 2, max_steps=200, execute_steps=1,
                              out_dir=tmp_path, num_videos=1, resolution=32, log=lambda s: None)
  assert res["mean"]["success_rate"] == 1.0
  for task in TASKS:
    r = res["tasks"][task]
    assert r["successes"] == 2 and r["ci95"][1] == 1.0 and 0 < r["mean_length"] < 200
  assert res["latency"]["calls"] == sum(e["length"] for e in res["episodes"])
  assert {e["seed"] for e in res["episodes"]} == {100_000, 100_001}
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["mean"]["success_rate"] == 1.0
  assert "| drawer-close-v3 | 100% |" in (tmp_path / "results.md").read_text()
  assert len(list((tmp_path / "videos").glob("*_success.gif"))) == 2
  assert (tmp_path / "contact_sheet.png").stat().st_size > 0


def test_random_policy_fails_with_chunks_and_ensembling(tmp_path):
  factory = functools.partial(policy_lib.RandomPolicy, 0, 4)
  for ensemble in (False, True):
    res = evaluate_lib.evaluate(factory, ("button-press-topdown-v3",), 2, max_steps=40,
                                execute_steps=2, temporal_ensemble=ensemble, num_videos=0,
                                resolution=32, log=lambda s: None)
    assert res["mean"]["success_rate"] == 0.0
    assert res["mean"]["mean_length"] == 40
    assert res["latency"]["calls"] == 2 * (40 if ensemble else 20)


def test_unknown_task_is_rejected():
  with pytest.raises(ValueError, match="valid v3 tasks"):
    evaluate_lib.evaluate(policy_lib.ExpertPolicy, ("open-sesame-v3",), 1, log=lambda s: None)


def test_parallel_workers_build_the_policy_from_a_factory():
  factory = functools.partial(policy_lib.ExpertPolicy, "drawer-close-v3")
  res = evaluate_lib.evaluate(factory, ("drawer-close-v3",), 2, num_workers=2, num_videos=0,
                              resolution=32, log=lambda s: None)
  assert res["mean"]["success_rate"] == 1.0
  assert res["settings"]["num_workers"] == 2


class _RecordingPolicy:
  """Holds still; records which steps it was queried on and which it only observed."""

  def __init__(self):
    self.events = []

  def reset(self):
    self.events.clear()

  def observe(self, obs):
    self.events.append(("observe", obs["proprio"].copy()))

  def __call__(self, obs, instruction):
    self.events.append(("query", obs["proprio"].copy()))
    return np.zeros((8, 4), np.float32)


def test_history_policies_see_every_step_inside_a_chunk():
  from wam_jax.sim import metaworld as mw
  policy = _RecordingPolicy()
  env = mw.cached_env("drawer-close-v3", 32)
  rollout.run_episode(env, policy, "drawer-close-v3", 0, max_steps=10, execute_steps=4)
  kinds = [k for k, _ in policy.events]
  assert kinds == ["query", "observe", "observe", "observe"] * 2 + ["query", "observe"]


class _FrameWindowPolicy:
  """A history-keeping policy whose actions depend on its last ``history`` frames (as the
  checkpoint policies): records each query's frame window and the steps it observed."""

  def __init__(self, history):
    self.history = self.input_frames = history
    self.windows, self.kinds, self._frames = [], [], []

  def reset(self):
    self.windows, self.kinds, self._frames = [], [], []

  def observe(self, obs):
    self.kinds.append("observe")
    self._frames = (self._frames + [obs["image_primary"]])[-self.history:]

  def __call__(self, obs, instruction):
    self._frames = (self._frames + [obs["image_primary"]])[-self.history:]
    self.kinds.append("query")
    window = np.stack(self._frames).astype(np.float32)
    self.windows.append(window)
    # Moves by what it sees: a different frame -> a different chunk -> a different episode.
    push = np.tanh(window.mean() / 64.0 - 1.0)
    return np.tile(np.array([push, -push, 0.5 * push, 1.0], np.float32), (8, 1))


@pytest.mark.parametrize("history", [1, 2])
def test_rendering_only_the_frames_a_policy_input_holds_leaves_the_episode_unchanged(history):
  from wam_jax.sim import metaworld as mw
  env = mw.cached_env("drawer-close-v3", 32)
  runs = {}
  for every_step in (True, False):
    policy = _FrameWindowPolicy(history)
    # keep_frames renders every step (the reference); without it, only the frames a query's window holds.
    ep = rollout.run_episode(env, policy, "drawer-close-v3", 3, max_steps=30, execute_steps=4,
                             keep_frames=every_step)
    runs[every_step] = (ep, policy)
  (full, p_full), (lean, p_lean) = runs[True], runs[False]
  assert (lean["success"], lean["length"]) == (full["success"], full["length"])
  assert len(p_lean.windows) == len(p_full.windows) == 8  # 30 steps, a query every 4
  for a, b in zip(p_full.windows, p_lean.windows):
    np.testing.assert_array_equal(a, b)  # every query saw exactly the same consecutive frames
  assert p_full.kinds.count("observe") == 30 - 8
  assert p_lean.kinds == (["query"] + ["observe"] * (history - 1)) * 7 + ["query"]


class _InstructionPolicy:
  """Holds still; records the instruction of every query."""

  def __init__(self):
    self.seen = []

  def reset(self):
    pass

  def __call__(self, obs, instruction):
    self.seen.append(instruction)
    return np.zeros((1, 4), np.float32)


def test_paraphrase_evaluation_gives_the_policy_unseen_instructions_and_records_them(tmp_path):
  from wam_jax.sim import metaworld as mw
  policy = _InstructionPolicy()
  res = evaluate_lib.evaluate(lambda: policy, ("reach-v3",), 2, max_steps=3, execute_steps=1, num_videos=0,
                              resolution=32, instructions="paraphrase", out_dir=tmp_path, log=lambda s: None)
  assert sorted(set(policy.seen)) == sorted(mw.PARAPHRASES["reach-v3"])  # seeds 100000, 100001
  assert [e["instruction"] for e in res["episodes"]] == [mw.instruction("reach-v3", "paraphrase", s)
                                                         for s in (100_000, 100_001)]
  assert res["settings"]["instructions"] == "paraphrase"
  assert "unseen paraphrased instructions" in (tmp_path / "results.md").read_text()
  with pytest.raises(ValueError, match="'assembly-v3' has no paraphrases"):
    evaluate_lib.evaluate(lambda: policy, ("assembly-v3",), 1, instructions="paraphrase", log=lambda s: None)


class _ModelInputsPolicy:
  """Holds still; keeps the model inputs a checkpoint policy would build from each query."""

  def __init__(self, data_cfg):
    self.data_cfg, self.history, self.inputs = data_cfg, [], []
    stats = normalization.ArrayStats(*(np.full(4, v, np.float32) for v in (0, 1, -1, 1, -1, 1)))
    self.normalizer = normalization.Normalizer("zscore", {"metaworld_demos": normalization.DatasetStats(
        proprio=stats, action=stats, action_normalize_mask=(True,) * 4)})

  def reset(self):
    self.history.clear()

  def __call__(self, obs, instruction):
    self.history.append(obs)
    self.inputs.append((obs["image_primary"], windows.history_inputs(
        self.history[-2:], instruction, self.data_cfg, self.normalizer, "metaworld_demos")))
    return np.zeros((1, 4), np.float32)


def test_eval_renders_at_the_training_recipe_resolution():
  """Issue 18: the base preset trains on 64 px renders resized to 128; evaluation rendered
  at 128 natively. It must render at data.metaworld.resolution and resize like the data path."""
  config = vla_baseline.get_config("base")
  assert (config.data.metaworld.resolution, config.data.image_size) == (64, 128)
  kwargs = evaluate_lib.eval_kwargs_from_config(config)
  assert kwargs["resolution"] == 64 and kwargs["camera"] == config.data.metaworld.camera
  policy = _ModelInputsPolicy(config.data)
  kwargs.update(tasks=("drawer-close-v3",), episodes_per_task=1, max_steps=3, num_videos=0,
                num_workers=1)
  evaluate_lib.evaluate(lambda: policy, log=lambda s: None, **kwargs)
  assert len(policy.inputs) == 3
  for frame, inputs in policy.inputs:
    assert frame.shape == (64, 64, 3)
    np.testing.assert_array_equal(inputs["image_primary"][-1], rlds.resize_frames(frame[None], 128)[0])


class _CopyLastPredictor:
  """Predicts that the frame ``future_offset`` steps after each query is the query's own frame."""
  future_offset = 4

  def reset(self):
    self.last = None

  def __call__(self, obs, instruction):
    self.last = obs["image_primary"]
    return np.zeros((8, 4), np.float32)

  def predicted_frame(self):
    from PIL import Image
    return np.asarray(Image.fromarray(self.last).resize((16, 16), Image.BILINEAR))


def test_prediction_errors_compare_each_prediction_with_the_real_frame_of_its_step():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  errors = rollout.prediction_errors(frames, {1: frames[1], 3: frames[0], 9: frames[2]}, offset=3)
  assert [e[0] for e in errors] == [1, 3]  # step 9 lies past the episode's end
  assert errors[0][2] == 0.0
  assert errors[1][3:] == errors[1][1:3]  # the prediction for 3 was frame 0: the copy guess
  expected = np.mean((frames[0].astype(np.float32) / 255 - frames[3].astype(np.float32) / 255) ** 2)
  np.testing.assert_allclose(errors[1][2], expected, rtol=1e-5)
  np.testing.assert_allclose(errors[1][1], 10 * np.log10(1 / expected), rtol=1e-5)


def test_rollout_consistency_scores_the_frame_predicted_for_query_plus_offset():
  from PIL import Image
  from wam_jax.sim import metaworld as mw
  env = mw.cached_env("drawer-close-v3", 32)
  ep = rollout.run_episode(env, _CopyLastPredictor(), "drawer-close-v3", 0, max_steps=12, execute_steps=4,
                           keep_frames=True, consistency=True)
  real = ep["frames"][:, :, :32]  # [real | predicted] side by side
  assert [e[0] for e in ep["consistency"]] == [4, 8, 12]
  for step, _, mse, _, copy_mse in ep["consistency"]:
    small = lambda f: np.asarray(Image.fromarray(f).resize((16, 16), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(mse, np.mean((small(real[step - 4]) - small(real[step])) ** 2), rtol=1e-5)
    np.testing.assert_allclose(copy_mse, mse, rtol=1e-5)  # this policy predicts the copy
  summary = evaluate_lib.consistency_summary([ep], ["drawer-close-v3"], bin_steps=8)
  assert summary["mean"]["frames"] == 3 and list(summary["along_episode"]) == ["0-7", "8-15"]
  assert summary["along_episode"]["8-15"]["frames"] == 2


class _LeanCopyLastPredictor(_CopyLastPredictor):
  """The copy predictor as the checkpoint policies are: one input frame, a prediction 3 steps ahead
  (not a query step, with 4 executed per chunk), and a chunk that depends on the frame."""
  future_offset = 3
  input_frames = 1

  def __call__(self, obs, instruction):
    super().__call__(obs, instruction)
    push = np.tanh(obs["image_primary"].astype(np.float32).mean() / 64.0 - 1.0)
    return np.tile(np.array([push, -push, 0.5 * push, 1.0], np.float32), (8, 1))


def test_consistency_renders_only_queries_and_prediction_targets_and_scores_the_same(monkeypatch):
  """A frame-predicting policy with consistency on: the query steps and each prediction's target
  step are rendered, nothing else (session 12: every step was, twice the rendering), and the
  episode and its consistency rows equal those of rendering every step."""
  from wam_jax.sim import metaworld as mw
  env = mw.cached_env("drawer-close-v3", 32)
  observe, rendered = mw.observe, []
  monkeypatch.setattr(mw, "observe", lambda e, raw: rendered.append(1) or observe(e, raw))
  runs = {}
  for every_step in (True, False):
    rendered.clear()
    ep = rollout.run_episode(env, _LeanCopyLastPredictor(), "drawer-close-v3", 5, max_steps=30,
                             execute_steps=4, keep_frames=every_step, consistency=True)
    runs[every_step] = (ep, len(rendered))
  (full, n_full), (lean, n_lean) = runs[True], runs[False]
  assert (lean["success"], lean["length"]) == (full["success"], full["length"]) == (False, 30)
  assert [e[0] for e in lean["consistency"]] == list(range(3, 30, 4))  # the query at 28 aims past the end
  np.testing.assert_allclose(lean["consistency"], full["consistency"])
  assert (n_full, n_lean) == (31, 8 + 7 + 1)  # 30 steps + the last; 8 queries + 7 targets + the last


class _TwoPartPolicy(policy_lib.RandomPolicy):
  """A random chunk whose call reports two parts, as plan_idm's frame generation and IDM."""

  def __init__(self):
    super().__init__(0, 4)
    self.plan_ms, self.act_ms = [], []

  def latency_parts(self):
    return {"plan": self.plan_ms, "act": self.act_ms}

  def __call__(self, obs, instruction):
    self.plan_ms.append(1.0)
    self.act_ms.append(2.0)
    return super().__call__(obs, instruction)


def test_latency_parts_are_summarized_per_part_and_reported(tmp_path):
  res = evaluate_lib.evaluate(_TwoPartPolicy, ["drawer-close-v3"], 2, max_steps=8, execute_steps=4,
                              out_dir=tmp_path, num_videos=0, resolution=32, log=lambda s: None)
  calls = res["latency"]["calls"]
  assert calls == 4  # 2 episodes x 8 steps / 4 per chunk: each episode's parts, not the policy's running lists
  assert {p: (v["calls"], v["p50_ms"]) for p, v in res["latency_parts"].items()} == {
      "plan": (calls, 1.0), "act": (calls, 2.0)}
  assert "plan p50 1.00 ms; act p50 2.00 ms" in (tmp_path / "results.md").read_text()
  plain = evaluate_lib.evaluate(functools.partial(policy_lib.RandomPolicy, 0, 4), ["drawer-close-v3"], 1,
                                max_steps=4, num_videos=0, resolution=32, log=lambda s: None)
  assert plain["latency_parts"] == {}
