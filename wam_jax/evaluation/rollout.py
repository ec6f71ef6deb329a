"""One closed-loop episode: policy queries, chunk execution, temporal ensembling."""

import time

import numpy as np
from PIL import Image

from wam_jax.sim import metaworld as mw


class ChunkExecutor:
  """Turns predicted action chunks into one action per env step.

  Without ensembling: query the policy, execute the first ``execute_steps``
  actions of the chunk (fewer if the chunk is shorter), query again.

  With temporal ensembling (ACT, Zhao et al. 2023): query every step and
  execute the weighted mean of every prediction made so far for this step,
  weight ``exp(-decay * i)`` with i = 0 for the oldest prediction.
  """

  def __init__(self, execute_steps: int = 1, temporal_ensemble: bool = False, decay: float = 0.01):
    if execute_steps < 1:
      raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
    self.execute_steps = execute_steps
    self.temporal_ensemble = temporal_ensemble
    self.decay = decay
    self.reset()

  def reset(self):
    self._queue = []          # Pending actions (chunk mode).
    self._chunks = []         # (start step, chunk [K, A]) (ensemble mode).
    self._t = 0

  def needs_query(self) -> bool:
    return self.temporal_ensemble or not self._queue

  def steps_to_query(self) -> int:
    """Env steps until the next policy query: 0 when this step queries."""
    return 0 if self.needs_query() else len(self._queue)

  def add(self, chunk_KA: np.ndarray):
    chunk_KA = np.asarray(chunk_KA, np.float32)
    if chunk_KA.ndim != 2 or chunk_KA.shape[0] < 1:
      raise ValueError(f"a policy must return an action chunk [K, A] with K >= 1, got {chunk_KA.shape}")
    if self.temporal_ensemble:
      self._chunks.append((self._t, chunk_KA))
    else:
      self._queue = list(chunk_KA[:self.execute_steps])

  def next_action(self) -> np.ndarray:
    if self.temporal_ensemble:
      self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > self._t]
      preds = np.stack([c[self._t - s] for s, c in self._chunks])  # Oldest first.
      weights = np.exp(-self.decay * np.arange(len(preds)))
      action = (weights[:, None] * preds).sum(0) / weights.sum()
    else:
      action = self._queue.pop(0)
    self._t += 1
    return action


def run_episode(env, policy, task: str, seed: int, *, max_steps: int = 200, execute_steps: int = 1,
                temporal_ensemble: bool = False, ensemble_decay: float = 0.01,
                keep_frames: bool = False, consistency: bool = False, instructions: str = "train") -> dict:
  """Runs one seeded episode until success or ``max_steps``.

  ``instructions``: "train" (the task's training instruction) or "paraphrase" (an unseen
  rewording, ``metaworld.instruction``); the text used is returned as "instruction".

  Returns {"task", "seed", "success", "length", "latencies_ms", "frozen_fraction",
  "latency_parts_ms" ({part: [ms per query]} of a policy with ``latency_parts()``, e.g. plan_idm's
  frame generation and IDM; else {}), "frames" (uint8 [T+1, H, W, 3] if keep_frames else None),
  "consistency"}. Raises
  FrozenFramesError if the frames stop changing while the scene moves.

  With ``keep_frames`` and a policy that predicts frames (``predicted_frame()``
  and ``future_offset``: policy.py), each recorded frame is [real | predicted]
  side by side, [T+1, H, 2W, 3]: the prediction made ``future_offset`` steps
  earlier for this step (black where none landed). Asked outside the latency timing.

  With ``consistency`` and such a policy, "consistency" lists [step, psnr_db, mse, copy_psnr_db,
  copy_mse] per executed chunk: the frame predicted at the query for ``step`` = query +
  future_offset against the frame the simulator shows at that step, beside copying the query's
  frame (``prediction_errors``); else [].

  Rendering is ~90% of an env step. A policy that says how many consecutive frames its input
  holds (``policy.input_frames``: the checkpoint policies) gets a frame only where one can reach
  that input: at each query and on the ``input_frames - 1`` steps before it; the steps in between
  are simulated, not rendered (the episode is the same: rendering reads the simulation).
  With ``consistency``, each prediction's target step (query + ``future_offset``) is rendered too.
  Every step is rendered with ``keep_frames``, temporal ensembling (a query
  every step) or a policy without ``input_frames``. The frozen-renderer check runs on the rendered
  frames.
  """
  instruction = mw.instruction(task, instructions, seed)
  executor = ChunkExecutor(execute_steps, temporal_ensemble, ensemble_decay)
  policy.reset()
  parts = policy.latency_parts() if hasattr(policy, "latency_parts") else {}
  parts_before = {name: len(ms) for name, ms in parts.items()}
  raw_obs = mw.reset(env, seed)
  frames, states, latencies, predictions = [], [], [], {}
  success, length = False, 0
  predicts_frames = hasattr(policy, "predicted_frame") and bool(getattr(policy, "predicts_frames", True))
  every_step = keep_frames or temporal_ensemble or not hasattr(policy, "input_frames")
  input_frames = max(1, int(getattr(policy, "input_frames", 1)))
  scored = {}  # step -> real frame, for consistency: each query's frame and each prediction's target
  for t in range(max_steps):
    to_query = executor.steps_to_query()
    # Else no policy input holds this step's frame and no prediction is scored against it.
    if every_step or to_query < input_frames or t in predictions:
      obs = mw.observe(env, raw_obs)
      frames.append(obs["image_primary"])
      states.append(obs["env_state"])
      scored[t] = obs["image_primary"]
      if to_query == 0:
        start = time.perf_counter()
        chunk = np.asarray(policy(obs, instruction))
        latencies.append(1000 * (time.perf_counter() - start))
        executor.add(chunk)
        if (keep_frames or consistency) and predicts_frames:
          predicted = policy.predicted_frame()
          if predicted is not None:
            predictions[t + policy.future_offset] = predicted
      elif hasattr(policy, "observe"):
        policy.observe(obs)  # Steps inside a chunk still extend a history-keeping policy's window.
    raw_obs, _, success = mw.step(env, executor.next_action())
    length = t + 1
    if success:
      break
  final = mw.observe(env, raw_obs)
  frames.append(final["image_primary"])
  states.append(final["env_state"])
  scored[length] = final["image_primary"]
  frozen = mw.check_frames_live(np.stack(frames), np.stack(states))
  errors = prediction_errors(scored, predictions, policy.future_offset) if predictions else []
  if predictions and keep_frames:
    frames = beside_predictions(np.stack(frames), predictions)
  return {"task": task, "seed": int(seed), "instruction": instruction, "success": bool(success), "length": length,
          "latencies_ms": latencies, "frozen_fraction": frozen,
          "latency_parts_ms": {name: list(ms[parts_before[name]:]) for name, ms in parts.items()},
          "frames": np.stack(frames) if keep_frames else None, "consistency": errors}


def prediction_errors(frames, predictions: dict, offset: int) -> list:
  """[[step, PSNR dB, MSE, copy PSNR dB, copy MSE], ...] of each {step: uint8 [S, S, 3] prediction}
  against the real frame of that step resized to S x S (the model's resolution), MSE in [0, 1]
  units; "copy" scores the copy-the-last-frame guess (the real frame ``offset`` steps earlier,
  when the prediction was made) the same way. ``frames``: every step's frame [T, H, W, 3], or
  {step: frame} of the steps rendered. Steps without a real frame (past the episode's end) are
  skipped."""
  if not isinstance(frames, dict):
    frames = dict(enumerate(frames))
  def small(frame, shape):
    return np.asarray(Image.fromarray(frame).resize(shape[1::-1], Image.BILINEAR), np.float32) / 255.0

  def score(a, b):
    mse = float(np.mean((a - b) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-10))), mse

  out = []
  for step, pred in sorted(predictions.items()):
    if step not in frames or max(step - offset, 0) not in frames:
      continue
    pred = np.asarray(pred, np.float32) / 255.0
    real = small(frames[step], pred.shape)
    copy = small(frames[max(step - offset, 0)], pred.shape)
    out.append([int(step), *score(pred, real), *score(copy, real)])
  return out


def beside_predictions(frames_THWC: np.ndarray, predictions: dict) -> np.ndarray:
  """[T, H, W, 3] real frames and {step: uint8 [S, S, 3] predicted frame} -> [T, H, 2W, 3]."""
  t, h, w, _ = frames_THWC.shape
  right = np.zeros_like(frames_THWC)
  for step, frame in predictions.items():
    if step < t:
      right[step] = np.asarray(Image.fromarray(np.asarray(frame)).resize((w, h), Image.BILINEAR))
  return np.concatenate([frames_THWC, right], axis=2)
