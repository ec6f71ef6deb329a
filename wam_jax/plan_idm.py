"""Plan with video, act with an IDM (issue 12, use (b)): ``PlanWithVideoPolicy(video_workdir, idm_workdir)``.

At each query the video world model (family 1's ``video_wam``, stage 1 or 2, or
``joint_wam``) generates the frame o_t+k from the history, and the inverse-
dynamics model (``idm``) returns the chunk a_t..a_t+K-1 that takes o_t to it,
de-normalized with the IDM's normalizer: UniPi / AVDC / VPP's recipe on our two
checkpoints. Both runs are restored from their workdirs as
``inference.CheckpointPolicy`` restores one (config, normalizer, params, EMA if
present); each builds its own inputs from the same observation history with its
own data config and statistics. k is the IDM's ``data.future_offset``; the video
model must predict that offset (one of its ``future_offset * j``, j = 1..num_future).

``frames_from`` says where the "future" the IDM sees comes from:

* ``"video"``: the video model's generated frame (the policy);
* ``"copy_last"``: o_t itself, the zero-information lower bound (what the IDM
  does when the plan carries no change).

The true-future upper bound cannot run closed loop (the simulator's o_t+k
depends on the actions being chosen), so it is measured offline on held-out
episodes: ``offline_action_errors`` (CLI: ``scripts/eval_plan_idm.py``) feeds
the IDM each window's true o_t+k, the video model's frame and o_t, and reports
its action error for each (the true-frame number is the IDM's validation
``sampled_action_l1``) beside the fed frame's PSNR: how the action error, and so
closed-loop success, depends on the predictor's frame quality.
"""

import collections
import dataclasses
import pathlib
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from wam_jax import inference
from wam_jax.data import batch as batch_lib
from wam_jax.data import normalization, pipeline, registry_files, windows
from wam_jax.data import registry as data_registry
from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.models import heads

VIDEO_FAMILIES = ("video_wam", "joint_wam")
FRAMES_FROM = ("video", "copy_last")
# Data fields both runs must agree on: the planned frame is the IDM's input as is, and one render serves both.
SHARED_DATA_FIELDS = ("image_size", "cameras", "history", "metaworld.resolution", "metaworld.camera")


def _field(cfg, dotted: str):
  for part in dotted.split("."):
    cfg = cfg.get(part) if cfg is not None else None
  return tuple(cfg) if isinstance(cfg, (list, tuple)) else cfg


def _run_assets(workdir, step: Optional[int], flag: str) -> tuple[ml_collections.ConfigDict, list, dict, int]:
  """(config, dataset names, normalizer dict, step) from a run's checkpoint assets, without its params."""
  from wam_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"{flag}={workdir}: no checkpoints (no {workdir / 'checkpoints'}); train the run first")
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    assets, step = ckpt.restore_assets(step)
  except FileNotFoundError:
    raise ValueError(f"{flag}={workdir}: no readable checkpoint in {workdir / 'checkpoints'}") from None
  finally:
    ckpt.close()
  return ml_collections.ConfigDict(assets["config"]), list(assets["dataset_names"]), assets["normalizer"], step


def check_runs(video_workdir, idm_workdir, *, video_step: Optional[int] = None, idm_step: Optional[int] = None,
               dataset_name: Optional[str] = None) -> dict:
  """Checks two runs can be chained; returns {"dataset", "video_dataset", "frame_index", "video_step", "idm_step"}.

  Reads only the checkpoints' assets. Raises a one-line ValueError naming the field when a workdir
  holds the wrong model family or the runs disagree (``check_compatible``).
  """
  video_cfg, video_names, video_norm, video_step = _run_assets(video_workdir, video_step, "--video_workdir")
  idm_cfg, idm_names, idm_norm, idm_step = _run_assets(idm_workdir, idm_step, "--idm_workdir")
  out = check_compatible(video_cfg, video_names, normalization.Normalizer.from_dict(video_norm),
                         idm_cfg, idm_names, normalization.Normalizer.from_dict(idm_norm), dataset_name)
  return dict(out, video_step=video_step, idm_step=idm_step)


def check_compatible(video_cfg, video_names, video_norm, idm_cfg, idm_names, idm_norm,
                     dataset_name: Optional[str] = None) -> dict:
  """Configs, dataset names and normalizers of the two runs -> {"dataset", "video_dataset", "frame_index"}
  (``check_runs``)."""
  name = video_cfg.model.name
  if name not in VIDEO_FAMILIES:
    raise ValueError(f"--video_workdir: config.model.name={name!r}, expected one of {list(VIDEO_FAMILIES)} "
                     "(a video world model, e.g. experiments/configs/video_wam.py:pretrain_tiny)")
  if name == "joint_wam" and video_cfg.model.get("decoupled") and video_cfg.model.get("mode") == "forward_dynamics":
    raise ValueError("--video_workdir: config.model.mode='forward_dynamics' generates frames only given a chunk; "
                     "planning needs mode='policy' or 'video'")
  if idm_cfg.model.name != "idm":
    raise ValueError(f"--idm_workdir: config.model.name={idm_cfg.model.name!r}, expected 'idm' "
                     "(e.g. experiments/configs/idm_wam.py:idm_tiny)")
  if idm_cfg.model.get("use_future_proprio", False):
    raise ValueError("--idm_workdir: config.model.use_future_proprio=True: the IDM reads the robot's state at "
                     "t+k, which a video model's plan does not have; plan with an IDM trained on frames only")
  for field in SHARED_DATA_FIELDS:
    v, i = _field(video_cfg.data, field), _field(idm_cfg.data, field)
    if v != i:
      raise ValueError(f"data.{field}: the video run has {v!r}, the IDM run {i!r}; they must match")
  k, kv, fv = int(idm_cfg.data.future_offset), int(video_cfg.data.future_offset), int(video_cfg.data.num_future)
  offsets = [kv * j for j in range(1, fv + 1)]
  if k not in offsets:
    raise ValueError(f"data.future_offset: the IDM infers actions to o_t+{k}, the video run predicts offsets "
                     f"{offsets} (data.future_offset={kv} x num_future={fv})")
  registry_files.load_all(idm_cfg.data.get("registry_files", ""))
  registry_files.load_all(video_cfg.data.get("registry_files", ""))
  if dataset_name is None:  # the IDM's labelled dataset: the one the chunk's action space belongs to
    dataset_name = next((n for n in idm_names if not data_registry.get_spec(n).action_free), None)
  if dataset_name not in idm_names:
    raise ValueError(f"dataset: {dataset_name!r} is not in the IDM run's mixture {idm_names}")
  video_dataset = video_dataset_for(dataset_name, video_names)
  if video_dataset == dataset_name:
    a_idm, a_video = idm_norm.action_dim(dataset_name), video_norm.action_dim(dataset_name)
    if a_video and a_video != a_idm:
      raise ValueError(f"action dims: dataset {dataset_name!r} has {a_idm} action dims in the IDM run, "
                       f"{a_video} in the video run")
  return {"dataset": dataset_name, "video_dataset": video_dataset, "frame_index": offsets.index(k)}


def _observations(name: str) -> tuple:
  """What a dataset's observations are made of: cameras, proprio parts and slice."""
  spec = data_registry.get_spec(name)
  return spec.cameras, spec.proprio_key, spec.proprio_dims


def video_dataset_for(dataset_name: str, video_names) -> str:
  """The dataset of the video run's mixture that plans for observations of ``dataset_name``: itself
  if the video run trained on it, else the first one recorded the same way (same cameras and
  proprio: e.g. the protocol's action-free video pool for its MT10 demos). The video model then
  sees what it trained on (its dataset id and statistics); the IDM keeps the demos' own."""
  if dataset_name in video_names:
    return dataset_name
  same = [n for n in video_names if _observations(n) == _observations(dataset_name)]
  if not same:
    raise ValueError(f"dataset: the IDM acts in {dataset_name!r}, which the video run never saw, and no dataset "
                     f"of its mixture {video_names} has the same cameras and proprio")
  return same[0]


class PlanWithVideoPolicy:
  """The video model plans o_t+k, the IDM acts to reach it (module docstring).

  obs and the returned chunk are ``inference.CheckpointPolicy``'s: obs {"image_<cam>": uint8 [H, W, 3] at
  the training render resolution, "proprio": float [P_raw]}; returns float32 [K, A_dataset] in env units,
  K = the IDM's ``data.action_horizon``. ``predicted_frame()`` is the planned o_t+k of the last query (first
  camera, uint8 [S, S, 3]), so recorded rollouts and the consistency metric score the plan.
  ``latencies_ms`` / ``frame_ms`` / ``idm_ms``: per query, the whole call and its two parts
  (``latency_parts`` names the parts for the evaluator's report).
  """
  predicts_frames = True  # predicted_frame(): the planned o_t+k

  def __init__(self, video_workdir, idm_workdir, *, frames_from: str = "video", video_step: Optional[int] = None,
               idm_step: Optional[int] = None, dataset_name: Optional[str] = None, use_ema: bool = True,
               seed: int = 0):
    if frames_from not in FRAMES_FROM:
      raise ValueError(f"frames_from={frames_from!r} is not one of {list(FRAMES_FROM)}")
    checked = check_runs(video_workdir, idm_workdir, video_step=video_step, idm_step=idm_step,
                         dataset_name=dataset_name)
    self.frames_from = frames_from
    self.dataset_name = checked["dataset"]
    self.video_dataset_name = checked["video_dataset"]  # what the video run calls these observations
    self._frame_index = checked["frame_index"]
    self.video = None  # copy_last never asks the video model: its params are not even restored
    if frames_from == "video":
      self.video = inference.CheckpointPolicy(video_workdir, step=checked["video_step"],
                                              dataset_name=self.video_dataset_name, use_ema=use_ema)
    self.idm = inference.CheckpointPolicy(idm_workdir, step=checked["idm_step"], dataset_name=self.dataset_name,
                                          use_ema=use_ema)
    self.cameras = tuple(self.idm.data_cfg.cameras)
    self._dataset_cameras = set(data_registry.get_spec(self.dataset_name).cameras)
    self.future_offset = int(self.idm.data_cfg.future_offset)
    self.history = self.idm.history  # the video run's too (check_compatible)
    self._rng = jax.random.key(seed)
    self._frames = collections.deque(maxlen=self.history)
    self._planned = None
    self.latencies_ms, self.frame_ms, self.idm_ms = [], [], []

  @property
  def input_frames(self) -> int:
    """Consecutive frames one query's input holds: the evaluator renders only these."""
    return self.history

  def latency_parts(self) -> dict:
    """{part: [ms per query so far]}: the evaluator reports each beside the whole call's latency."""
    return {"frame generation": self.frame_ms, "IDM": self.idm_ms}

  def reset(self) -> None:
    self._frames.clear()
    self._planned = None

  def observe(self, obs: dict) -> None:
    self._frames.append(obs)

  def plan(self, instruction: str, rng) -> tuple[dict, dict]:
    """(IDM inputs [1, ...], planned o_t+k {camera: uint8 [S, S, 3]}) from the current history."""
    idm_in = windows.history_inputs(self._frames, instruction, self.idm.data_cfg, self.idm.normalizer,
                                    self.dataset_name)
    if self.frames_from == "copy_last":
      planned = {cam: idm_in[batch_lib.image_key(cam)][-1] for cam in self.cameras}
    else:
      video_in = windows.history_inputs(self._frames, instruction, self.video.data_cfg, self.video.normalizer,
                                        self.video_dataset_name)
      frames = self.generate({k: np.asarray(v)[None] for k, v in video_in.items()}, rng)
      planned = {cam: f[0] for cam, f in frames.items()}
    return {k: np.asarray(v)[None] for k, v in idm_in.items()}, planned

  def generate(self, video_batch: dict, rng) -> dict:
    """The video model's o_t+k for a batch of its inputs: {camera: uint8 [B, S, S, 3]}; zeros for a camera
    the dataset lacks (as training windows hold, future frames included)."""
    frames = self.video.generate_frames(video_batch, rng)
    out = {}
    for cam in self.cameras:
      f = np.asarray(frames[cam])[:, self._frame_index]
      out[cam] = f if cam in self._dataset_cameras else np.zeros_like(f)
    return out

  def act(self, idm_batch: dict, rng) -> np.ndarray:
    """The IDM's normalized chunk [B, K, A_pad] for a batch of its inputs with future frames."""
    return self.idm.predict_normalized(idm_batch, rng)

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    start = time.perf_counter()
    self.observe(obs)
    self._rng, frame_rng, idm_rng = jax.random.split(self._rng, 3)
    batch, self._planned = self.plan(instruction, frame_rng)
    planned_at = time.perf_counter()
    batch.update(with_future_frames(self._planned, int(self.idm.data_cfg.num_future)))
    pred_BKA = self.act(batch, idm_rng)
    actions = self.idm.normalizer.denormalize_actions(pred_BKA[0], self.dataset_name)
    actions = actions[:, :self.idm.normalizer.action_dim(self.dataset_name)].astype(np.float32)
    end = time.perf_counter()
    self.frame_ms.append(1e3 * (planned_at - start))
    self.idm_ms.append(1e3 * (end - planned_at))
    self.latencies_ms.append(1e3 * (end - start))
    return actions

  def predicted_frame(self) -> Optional[np.ndarray]:
    """The planned o_t+k of the last query (first camera), uint8 [S, S, 3]; None before a query."""
    return None if self._planned is None else self._planned[self.cameras[0]]


def with_future_frames(frames: dict, num_future: int) -> dict:
  """{camera: uint8 [B, S, S, 3] or [S, S, 3]} -> the IDM's future keys: future_image_<cam>
  [B, F, S, S, 3] (the frame in slot 0, repeated in the others) and future_mask [B, F] (slot 0 only)."""
  out = {}
  for cam, f in frames.items():
    f = np.asarray(f)
    f = f[None] if f.ndim == 3 else f
    out[batch_lib.future_image_key(cam)] = np.repeat(f[:, None], num_future, axis=1)
  b = len(next(iter(out.values())))
  out["future_mask"] = np.broadcast_to(np.arange(num_future) == 0, (b, num_future)).copy()
  return out


# --- Offline: the IDM's action error with the true, the generated and the copied frame -----------

def offline_action_errors(video_workdir, idm_workdir, *, split: str = "val", max_episodes: Optional[int] = None,
                          batch_size: int = 32, seed: int = 0, policy: Optional[PlanWithVideoPolicy] = None,
                          log=print) -> dict:
  """The IDM's action error on held-out windows for each source of o_t+k.

  Every window (o_t-h+1..o_t, a_t..a_t+K-1) of the IDM's dataset ``split`` (the first ``max_episodes``
  episodes) whose o_t+k lies inside the episode is scored three times, the IDM given: the true o_t+k
  ("true_future", the upper bound: the IDM's validation ``sampled_action_l1``), the video model's frame
  ("video") and o_t ("copy_last"). Returns {source: {"action_l1" (normalized units, the validation
  metric), "action_l1_env" (env units), "frame_psnr" (dB of the fed frame against the true o_t+k,
  first camera)}, "windows", "episodes", "split", "dataset"}.
  """
  policy = policy or PlanWithVideoPolicy(video_workdir, idm_workdir, seed=seed)
  if policy.video is None:
    raise ValueError("offline_action_errors needs a policy with frames_from='video' (it scores all three sources)")
  ds = policy.dataset_name
  sides = {}
  for side, name in (("video", policy.video_dataset_name), ("idm", ds)):
    run = getattr(policy, side)
    wspec = windows.WindowSpec.from_config(run.data_cfg)
    names = [n for n, _ in pipeline.parse_mixture(run.data_cfg)]
    sides[side] = (run, wspec, names.index(name), tokenizer_lib.for_spec(wspec), name)
  idm_run, idm_spec = sides["idm"][:2]
  reader = pipeline.open_reader(idm_run.data_cfg, ds, split)
  n_eps = len(reader) if max_episodes is None else min(max_episodes, len(reader))
  cam0, k = policy.cameras[0], policy.future_offset
  rng = jax.random.key(seed)
  sums = {s: collections.Counter() for s in ("true_future", "video", "copy_last")}
  count, total_windows = 0.0, 0

  def score(pairs):
    """Accumulates one batch: pairs = [(idm window, video window), ...]."""
    nonlocal rng, count
    n = len(pairs)
    rows = pairs + [pairs[-1]] * (batch_size - n)  # one compiled shape
    idm_b = {key: np.stack([p[0][key] for p in rows]) for key in rows[0][0]}
    video_b = {key: np.stack([p[1][key] for p in rows]) for key in rows[0][1]}
    rng, frame_rng, idm_rng = jax.random.split(rng, 3)
    true = {c: idm_b[batch_lib.future_image_key(c)][:, 0] for c in policy.cameras}
    fed = {"true_future": true, "video": policy.generate(video_b, frame_rng),
           "copy_last": {c: idm_b[batch_lib.image_key(c)][:, -1] for c in policy.cameras}}
    mask_NKA = heads.loss_mask(idm_b)[:n]
    target_NKA = idm_b["actions"][:n]
    count += float(mask_NKA.sum())
    for source, frames in fed.items():
      batch = dict(idm_b, **with_future_frames(frames, idm_spec.num_future))
      pred = policy.act(batch, idm_rng)[:n]
      env = lambda x: idm_run.normalizer.denormalize_actions(x.reshape(-1, x.shape[-1]), ds).reshape(x.shape)
      sums[source]["action_l1"] += float((np.abs(pred - target_NKA) * mask_NKA).sum())
      sums[source]["action_l1_env"] += float((np.abs(env(pred) - env(target_NKA)) * mask_NKA).sum())
      sums[source]["frame_psnr"] += float(psnr(frames[cam0][:n], true[cam0][:n]).sum())

  pending = []
  for e in range(n_eps):
    raw = reader.decode(e, cameras=idm_spec.cameras, image_size=idm_spec.image_size)
    # The video side reads the episode as its own dataset (video_dataset_for); it never needs actions.
    eps = {side: windows.prepare_episode(raw if name == ds else dataclasses.replace(raw, actions=None), wspec,
                                         run.normalizer, name, tok)
           for side, (run, wspec, _, tok, name) in sides.items()}
    for t in range(max(raw.length - k, 0)):  # o_t+k inside the episode
      w_idm = windows.cut_window(eps["idm"], t, idm_spec, sides["idm"][2])
      if not w_idm["action_mask"].any():
        continue
      pending.append((w_idm, windows.cut_window(eps["video"], t, sides["video"][1], sides["video"][2])))
      if len(pending) == batch_size:
        score(pending)
        total_windows += len(pending)
        pending = []
  if pending:
    score(pending)
    total_windows += len(pending)
  if not total_windows:
    raise ValueError(f"dataset {ds!r} split {split!r}: no window with o_t+{k} inside its episode "
                     f"in {n_eps} episodes")
  # action_dim_mask keeps the dataset's dims: both sums run over the same entries.
  out = {s: {"action_l1": v["action_l1"] / count, "action_l1_env": v["action_l1_env"] / count,
             "frame_psnr": v["frame_psnr"] / total_windows} for s, v in sums.items()}
  out.update(windows=total_windows, episodes=n_eps, split=split, dataset=ds)
  log(f"[plan_idm] {ds}/{split}: {total_windows} windows of {n_eps} episodes; IDM action L1 (normalized) "
      + ", ".join(f"{s} {v['action_l1']:.4f} (frame {v['frame_psnr']:.1f} dB)" for s, v in out.items()
                  if isinstance(v, dict)))
  return out


def psnr(a_NHWC: np.ndarray, b_NHWC: np.ndarray) -> np.ndarray:
  """PSNR in dB of uint8 frames in [0, 1] units, [N]; identical frames give 100 dB (``frame_metrics.psnr``)."""
  a, b = (np.asarray(x, np.float32) / 255.0 for x in (a_NHWC, b_NHWC))
  return 10.0 * np.log10(1.0 / np.maximum(np.mean((a - b) ** 2, axis=(-3, -2, -1)), 1e-10))
