"""A trained checkpoint as a policy: ``load_policy(workdir)(obs, instruction) -> [K, A]``.

Everything comes from the checkpoint itself (config, normalization statistics,
tokenizer spec, dataset names), never from a config that could drift. Inputs
go through the same ``windows.make_inference_inputs`` as training windows, and
actions are de-normalized by the same ``Normalizer``.
"""

import collections
import dataclasses
import pathlib
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from wam_jax.data import normalization, windows
from wam_jax.data import registry as data_registry
from wam_jax.data import registry_files
from wam_jax.models import heads, registry
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import sharding, trainer


@dataclasses.dataclass
class RestoredRun:
  """A trained run as its checkpoint holds it: the model (built from the saved config on one
  device), its params (EMA if asked and present) and what the data path needs."""
  workdir: pathlib.Path
  step: int
  config: ml_collections.ConfigDict
  normalizer: normalization.Normalizer
  dataset_names: list
  model: object
  params: object

  @property
  def checkpoint_id(self) -> str:
    return f"{self.workdir}@{self.step}"


def restore_run(workdir, step: Optional[int] = None, *, use_ema: bool = True, model_name: Optional[str] = None,
                edit_config: Optional[Callable[[ml_collections.ConfigDict], None]] = None,
                flag: str = "workdir") -> RestoredRun:
  """Restores a run from ``workdir`` (its newest readable step, or exactly ``step``).

  Everything comes from the checkpoint (config, statistics, dataset names): nothing can drift.
  ``model_name``: the expected ``config.model.name``; ``edit_config`` changes inference-only fields
  (sampling steps, skip_video) before the model is built. Errors are one-line ValueErrors that start
  with ``<flag>=<workdir>:`` and say what is missing.
  """
  workdir = pathlib.Path(workdir).absolute()
  where = f"{flag}={workdir}"
  if not workdir.is_dir():
    raise ValueError(f"{where}: no such run directory")
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"{where}: the run has no checkpoint (no {workdir / 'checkpoints'}); train it first")
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    if step is not None and step not in ckpt.all_steps():
      raise ValueError(f"{where}: no checkpoint step {step}; steps: {ckpt.all_steps()}")
    try:
      assets, step = ckpt.restore_assets(step)
    except FileNotFoundError:
      raise ValueError(f"{where}: the run has no readable checkpoint in {workdir / 'checkpoints'}; "
                       "train it first") from None
    config = ml_collections.ConfigDict(assets["config"])
    if model_name is not None and config.model.name != model_name:
      raise ValueError(f"{where}: config.model.name={config.model.name!r}, expected {model_name!r}")
    if edit_config is not None:
      edit_config(config)
    names = list(assets["dataset_names"])
    registry_files.load_all(config.data.get("registry_files", ""))  # the run's own entries
    # A 1-device setup: the same model/state structure the trainer saved.
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    run = trainer.setup_training(config, mesh, trainer.abstract_batch(config.data, 1), num_datasets=len(names))
    restored = ckpt.restore(run.abstract_state, step=step)
    if restored is None:
      raise ValueError(f"{where}: the run has no readable checkpoint in {workdir / 'checkpoints'}")
    state, _, step = restored
  finally:
    ckpt.close()
  return RestoredRun(workdir=workdir, step=int(step), config=config,
                     normalizer=normalization.Normalizer.from_dict(assets["normalizer"]), dataset_names=names,
                     model=run.model,
                     params=state.ema_params if (use_ema and state.ema_params is not None) else state.params)


class CheckpointPolicy:
  """Keeps the last ``data.history`` observations; predicts a de-normalized chunk.

  obs: {"image_<cam>" or "image_primary": uint8 [H, W, 3], "proprio": float [P_raw]}, frames
  at the resolution training frames were recorded at (MetaWorld: data.metaworld.resolution,
  ``evaluate.render_settings``), not data.image_size; a camera the dataset lacks may be absent.
  Returns float32 [K, A_dataset] in the dataset's (env) units.
  """

  def __init__(self, workdir, step: Optional[int] = None, dataset_name: Optional[str] = None,
               use_ema: bool = True, seed: int = 0, sampling_steps: Optional[int] = None,
               skip_video: Optional[bool] = None):
    def edit(config):
      if sampling_steps:  # a generative head's steps at inference: same params, no retraining
        heads.set_sampling_steps(config.model.head, sampling_steps)
      if skip_video is not None:  # a world model's two inference paths: same params, no retraining
        owner = config.model.get("policy", config.model)  # video_wam: model.policy; joint_wam: model
        if "skip_video" not in owner:
          raise ValueError(f"skip_video: config.model.name={config.model.name!r} has no skip_video field "
                           "(config.model.policy.skip_video of video_wam, config.model.skip_video of joint_wam)")
        owner.skip_video = bool(skip_video)

    run = restore_run(workdir, step, use_ema=use_ema, edit_config=edit)
    self.config, self.normalizer, self.step, self.params = run.config, run.normalizer, run.step, run.params
    names = run.dataset_names
    if dataset_name is None:  # The first dataset with actions: the one a policy acts in.
      dataset_name = next(n for n in names if data_registry.get_spec(n).action_key is not None)
    if dataset_name not in names:
      raise ValueError(f"dataset {dataset_name!r} was not in the training mixture {names}")
    self.dataset_name = dataset_name
    self.data_cfg = self.config.data
    self.history = int(self.data_cfg.history)
    model = run.model
    self._predict = jax.jit(lambda p, b, r: registry.predict_actions(model, p, b, r))
    self._predict_frames = None  # families that generate frames (predicted_frame)
    if registry.predicts_frames(model):
      self._predict_frames = jax.jit(lambda p, b, r: registry.predict_frames(model, p, b, r))
    self.future_offset = int(self.data_cfg.future_offset)
    self._frame_rng = jax.random.fold_in(jax.random.key(seed), 1)  # never touches the action keys
    self._batch = None
    self._rng = jax.random.key(seed)
    self._frames = collections.deque(maxlen=self.history)
    self.latencies_ms = []

  @property
  def input_frames(self) -> int:
    """Consecutive frames one query's input holds: the evaluator renders only these."""
    return self.history

  @property
  def predicts_frames(self) -> bool:
    """Whether ``predicted_frame()`` returns a frame after a query (a family with a world model)."""
    return self._predict_frames is not None

  def predict_normalized(self, batch: dict, rng) -> np.ndarray:
    """The model's chunk for a batch of its inputs, normalized: float32 [B, K, A_pad]."""
    return np.asarray(self._predict(self.params, batch, rng))

  def generate_frames(self, batch: dict, rng) -> dict:
    """Future frames for a batch of its inputs (+ actions for forward dynamics):
    {camera: uint8 [B, F, S, S, 3]}; ValueError for a family that does not predict frames."""
    if self._predict_frames is None:
      raise ValueError(f"config.model.name={self.config.model.name!r} does not predict frames")
    return {cam: np.asarray(f) for cam, f in self._predict_frames(self.params, batch, rng).items()}

  def reset(self) -> None:
    self._frames.clear()

  def observe(self, obs: dict) -> None:
    """Records a step the policy was not queried on (history = consecutive frames)."""
    self._frames.append(obs)

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    start = time.perf_counter()
    self.observe(obs)
    inputs = windows.history_inputs(self._frames, instruction, self.data_cfg, self.normalizer,
                                    self.dataset_name)  # Padded, resized, zero-filled as in training.
    batch = {k: np.asarray(v)[None] for k, v in inputs.items()}
    self._rng, rng = jax.random.split(self._rng)
    pred_BKA = self.predict_normalized(batch, rng)
    # predicted_frame() reads this: a forward-dynamics model predicts the outcome of this chunk.
    self._batch = dict(batch, actions=pred_BKA, action_mask=np.ones(pred_BKA.shape[:2], bool))
    actions = self.normalizer.denormalize_actions(pred_BKA[0], self.dataset_name)
    actions = actions[:, :self.normalizer.action_dim(self.dataset_name)]
    self.latencies_ms.append(1e3 * (time.perf_counter() - start))
    return actions.astype(np.float32)

  def predicted_frame(self) -> Optional[np.ndarray]:
    """The frame the model predicts ``future_offset`` steps after its last query, uint8 [S, S, 3]
    (first camera, data.image_size), or None (a family that does not predict frames, or no query yet)."""
    if self._predict_frames is None or self._batch is None:
      return None
    self._frame_rng, rng = jax.random.split(self._frame_rng)
    return self.generate_frames(self._batch, rng)[self.data_cfg.cameras[0]][0, 0]


def load_policy(workdir, step: Optional[int] = None, **kwargs) -> CheckpointPolicy:
  return CheckpointPolicy(workdir, step=step, **kwargs)
