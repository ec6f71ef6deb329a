"""The policy interface closed-loop evaluation drives, and two reference policies.

A policy is any object with

  reset() -> None                      called before every episode
  __call__(obs, instruction) -> [K, A] float action chunk in env units (K >= 1)

``obs`` is ``wam_jax.sim.metaworld.observe``'s dict for the current step:
"image_primary" uint8 [H, W, 3], "proprio" float32 [4], "env_state" float32 [39].
Actions are de-normalized (MetaWorld: [-1, 1]^4). A policy that needs history
keeps it itself between resets, and may define ``observe(obs) -> None``: the
evaluator calls it on every step it does not query the policy (the steps
executed from a chunk), so the history holds consecutive frames as in training. Such a policy
may also define ``input_frames: int``, how many consecutive frames (ending at the query) one
query's input holds: the evaluator then renders only those frames, not the steps in between
(rendering is ~90% of an env step; ``rollout.run_episode``). A policy
that predicts frames may also define ``predicted_frame() -> uint8 [H, W, 3] | None`` (its
prediction for ``future_offset`` steps after its last query): recorded rollouts then show it
beside the real frame (``predicts_frames = False`` says it never returns one: the checkpoint
policy of a family without a world model). Learned policies must not read "env_state"
(it holds the goal position); the scripted expert needs it.

Evaluation builds policies inside worker processes from a picklable zero-arg
factory (a class or ``functools.partial``), e.g.
``functools.partial(wam_jax.inference.load_policy, workdir)``.
"""

from typing import Optional, Protocol

import numpy as np

from wam_jax.sim import metaworld as mw


class Policy(Protocol):

  def reset(self) -> None:
    ...

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    ...


class ExpertPolicy:
  """MetaWorld's scripted expert; returns [1, 4].

  With ``task=None`` the task is recognized from the instruction, so one
  factory (``ExpertPolicy``) serves every task.
  """

  def __init__(self, task: Optional[str] = None):
    self._task = None if task is None else mw.check_task(task)
    self._experts = {}

  def reset(self) -> None:
    pass

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    task = self._task or mw.INSTRUCTION_TO_TASK.get(instruction)
    if task is None:
      raise ValueError(f"ExpertPolicy: no MetaWorld task has the instruction {instruction!r}")
    if task not in self._experts:
      from wam_jax.sim.metaworld_data import expert_policy  # pylint: disable=g-import-not-at-top
      self._experts[task] = expert_policy(task)
    action = self._experts[task].get_action(np.asarray(obs["env_state"], np.float64))
    return np.clip(action, -1.0, 1.0).astype(np.float32)[None]


class RandomPolicy:
  """Uniform random actions in [-1, 1]; returns [chunk, 4]."""

  def __init__(self, seed: int = 0, chunk: int = 1):
    self._rng = np.random.default_rng(seed)
    self._chunk = chunk

  def reset(self) -> None:
    pass

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    return self._rng.uniform(-1.0, 1.0, (self._chunk, mw.ACTION_DIM)).astype(np.float32)
