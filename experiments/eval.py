r"""Closed-loop MetaWorld evaluation of a policy.

  python experiments/eval.py --policy=expert --tasks=drawer-open-v3 --episodes=10 --out=/tmp/ev
  python experiments/eval.py --policy=checkpoint --workdir=runs/x --out=runs/x/eval
  # the run's own evaluation settings, with unseen paraphrased instructions (-> runs/x/eval_paraphrase)
  python experiments/eval.py --policy=checkpoint --workdir=runs/x --as_trained --instructions=paraphrase
  python experiments/eval.py --policy=exported --export_dir=exports/x --out=/tmp/ev   # scripts/export.py
  python experiments/eval.py --policy=remote --address=ws://127.0.0.1:8000 --out=/tmp/ev  # scripts/serve.py
  # plan with video, act with an IDM (wam_jax/plan_idm.py); --out defaults to <idm_workdir>/eval_plan
  python experiments/eval.py --policy=plan_idm --video_workdir=runs/video_pretrain_tiny --idm_workdir=runs/idm_tiny

Writes results.json, results.md, videos/*.gif and contact_sheet.png to --out.
"""

import functools
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from wam_jax.evaluation import evaluate as evaluate_lib  # noqa: E402
from wam_jax.evaluation import policy as policy_lib  # noqa: E402
from wam_jax.sim import metaworld as mw  # noqa: E402

_DEFAULT_TASKS = ["drawer-close-v3", "button-press-topdown-v3", "drawer-open-v3", "door-open-v3"]

_POLICY = flags.DEFINE_enum("policy", "expert", ["expert", "random", "checkpoint", "exported", "remote", "plan_idm"],
                            "Policy to run.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Training run directory (--policy=checkpoint).")
_VIDEO_WORKDIR = flags.DEFINE_string("video_workdir", "", "Video world-model run (--policy=plan_idm): plans o_t+k.")
_IDM_WORKDIR = flags.DEFINE_string("idm_workdir", "", "Inverse-dynamics run (--policy=plan_idm): acts to reach it.")
_FRAMES_FROM = flags.DEFINE_enum(
    "frames_from", "video", ["video", "copy_last"], "--policy=plan_idm: the IDM's future frame from the video "
    "model, or o_t itself (the zero-information lower bound; the true-frame upper bound: scripts/eval_plan_idm.py).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "", "Exported policy directory (--policy=exported).")
_ADDRESS = flags.DEFINE_string("address", "ws://127.0.0.1:8000", "Policy server (--policy=remote).")
_TASKS = flags.DEFINE_list("tasks", _DEFAULT_TASKS, "MetaWorld v3 task names.")
_EPISODES = flags.DEFINE_integer("episodes", 10, "Episodes per task.")
_OUT = flags.DEFINE_string("out", "", "Output directory ('' -> <workdir>/eval or ./eval_out).")
_SEED_OFFSET = flags.DEFINE_integer("seed_offset", 100_000, "First episode seed (disjoint from data).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 200, "Episode step limit.")
_EXECUTE = flags.DEFINE_integer("execute_steps", 4, "Actions executed per predicted chunk.")
_ENSEMBLE = flags.DEFINE_bool("temporal_ensemble", False, "ACT temporal ensembling (query every step).")
_WORKERS = flags.DEFINE_integer("num_workers", 1, "Worker processes.")
_VIDEOS = flags.DEFINE_integer("num_videos", 2, "Rollout GIFs per task.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Camera image size (match training).")
_CAMERA = flags.DEFINE_string("camera", "corner4", "MetaWorld camera (match training).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random policy.")
_SAMPLING_STEPS = flags.DEFINE_integer(
    "sampling_steps", 0, "Sampling steps of a diffusion/flow head (--policy=checkpoint); 0: the checkpoint's config.")
_SKIP_VIDEO = flags.DEFINE_enum(
    "skip_video", "", ["", "true", "false"], "video_wam/joint_wam (--policy=checkpoint): read actions in one pass "
    "(true) or generate the future frames first (false); '': the checkpoint's config.")
_AS_TRAINED = flags.DEFINE_bool(
    "as_trained", False, "--policy=checkpoint: tasks, episodes per task, seeds, step limit, chunk execution, "
    "workers and videos from the run's config.eval (what its training evaluated); flags given explicitly win.")
_INSTRUCTIONS = flags.DEFINE_enum(
    "instructions", "train", ["train", "paraphrase"], "The tasks' training instructions, or unseen "
    "paraphrases of them (the MT10 tasks; shared/PROTOCOL.md claim 4).")
_CONSISTENCY = flags.DEFINE_bool(
    "consistency", True, "For a policy that predicts frames: PSNR/MSE of the predicted t+k frame of each "
    "executed chunk against the simulator's frame at t+k, per task and along the episode.")


def policy_factory():
  if _POLICY.value == "expert":
    return policy_lib.ExpertPolicy
  if _POLICY.value == "random":
    return functools.partial(policy_lib.RandomPolicy, _SEED.value)
  if _POLICY.value in ("exported", "remote"):  # each eval worker opens its own session
    from wam_jax.export import client, loader  # pylint: disable=g-import-not-at-top
    if _POLICY.value == "exported":
      return functools.partial(loader.load, _EXPORT_DIR.value or _usage("--policy=exported needs --export_dir"))
    return functools.partial(client.RemotePolicy, _ADDRESS.value)
  if _POLICY.value == "plan_idm":
    from wam_jax import plan_idm  # pylint: disable=g-import-not-at-top
    if not (_VIDEO_WORKDIR.value and _IDM_WORKDIR.value):
      raise app.UsageError("--policy=plan_idm needs --video_workdir and --idm_workdir")
    try:  # a one-line error now rather than one per worker later
      plan_idm.check_runs(_VIDEO_WORKDIR.value, _IDM_WORKDIR.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    return functools.partial(plan_idm.PlanWithVideoPolicy, _VIDEO_WORKDIR.value, _IDM_WORKDIR.value,
                             frames_from=_FRAMES_FROM.value)
  if not _WORKDIR.value:
    raise app.UsageError("--policy=checkpoint needs --workdir")
  from wam_jax.inference import load_policy  # pylint: disable=g-import-not-at-top
  if _SAMPLING_STEPS.value:  # a one-line error now rather than one per worker later
    from wam_jax.models import heads  # pylint: disable=g-import-not-at-top
    with open(os.path.join(_WORKDIR.value, "config.json")) as f:
      head_cfg = json.load(f)["model"]["head"]
    try:
      heads.set_sampling_steps(head_cfg, _SAMPLING_STEPS.value)
    except ValueError as e:
      raise app.UsageError(f"--sampling_steps={_SAMPLING_STEPS.value}: {e}") from None
  return functools.partial(load_policy, _WORKDIR.value, sampling_steps=_SAMPLING_STEPS.value or None,
                           skip_video={"": None, "true": True, "false": False}[_SKIP_VIDEO.value])


def _camera_settings() -> dict:
  """--resolution/--camera, defaulting to what a checkpoint was trained on."""
  settings = dict(resolution=_RESOLUTION.value, camera=_CAMERA.value)
  config_path = os.path.join(_IDM_WORKDIR.value if _POLICY.value == "plan_idm" else _WORKDIR.value, "config.json")
  if _POLICY.value in ("checkpoint", "plan_idm") and os.path.exists(config_path):  # plan_idm: both runs agree
    with open(config_path) as f:
      trained = evaluate_lib.render_settings(ml_collections.ConfigDict(json.load(f)["data"]))
  elif _POLICY.value in ("exported", "remote"):  # the recipe's render, recorded in the manifest
    from wam_jax.export import client  # pylint: disable=g-import-not-at-top
    trained = client.manifest_of(_EXPORT_DIR.value if _POLICY.value == "exported" else _ADDRESS.value)["render"]
  else:
    trained = None
  for name in ("resolution", "camera"):  # the training recipe's render, as train.py's eval uses
    if trained and not flags.FLAGS[name].present:
      settings[name] = trained[name]
  return settings


def _usage(message):
  raise app.UsageError(message)


# --as_trained: flag -> evaluate_lib.eval_kwargs_from_config key.
_AS_TRAINED_FLAGS = {"tasks": "tasks", "episodes": "episodes_per_task", "seed_offset": "seed_offset",
                     "max_steps": "max_steps", "execute_steps": "execute_steps",
                     "temporal_ensemble": "temporal_ensemble", "num_workers": "num_workers",
                     "num_videos": "num_videos"}


def _apply_as_trained():
  """Sets every --as_trained flag not given on the command line from the run's config."""
  if _POLICY.value != "checkpoint" or not _WORKDIR.value:
    raise app.UsageError("--as_trained needs --policy=checkpoint and --workdir")
  path = os.path.join(_WORKDIR.value, "config.json")
  if not os.path.exists(path):
    raise app.UsageError(f"--as_trained: {path} does not exist (not a training run directory?)")
  with open(path) as f:
    trained = evaluate_lib.eval_kwargs_from_config(ml_collections.ConfigDict(json.load(f)))
  for flag, key in _AS_TRAINED_FLAGS.items():
    if not flags.FLAGS[flag].present:
      flags.FLAGS[flag].value = list(trained[key]) if flag == "tasks" else trained[key]


def main(argv):
  del argv
  if _AS_TRAINED.value:
    _apply_as_trained()
  try:
    tasks = mw.parse_tasks(_TASKS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _POLICY.value == "plan_idm":
    out = _OUT.value or os.path.join(_IDM_WORKDIR.value or _usage("--policy=plan_idm needs --idm_workdir"),
                                     "eval_plan" if _FRAMES_FROM.value == "video" else "eval_plan_copy_last")
  else:
    out = _OUT.value or (os.path.join(_WORKDIR.value, "eval" if _INSTRUCTIONS.value == "train" else
                                      f"eval_{_INSTRUCTIONS.value}") if _WORKDIR.value else "eval_out")
  try:
    mw.check_instructions(tasks, _INSTRUCTIONS.value)
  except ValueError as e:
    raise app.UsageError(f"--instructions={_INSTRUCTIONS.value}: {e}") from None
  evaluate_lib.evaluate(
      policy_factory(), tasks, _EPISODES.value, seed_offset=_SEED_OFFSET.value,
      max_steps=_MAX_STEPS.value, execute_steps=_EXECUTE.value, temporal_ensemble=_ENSEMBLE.value,
      num_workers=_WORKERS.value, out_dir=out, num_videos=_VIDEOS.value,
      **_camera_settings(), policy_name=f"{_POLICY.value} {_source()}".strip(), consistency=_CONSISTENCY.value,
      instructions=_INSTRUCTIONS.value)


def _source() -> str:
  if _POLICY.value == "plan_idm":
    return f"{_VIDEO_WORKDIR.value} -> {_IDM_WORKDIR.value} (frames_from={_FRAMES_FROM.value})"
  return {"exported": _EXPORT_DIR.value, "remote": _ADDRESS.value}.get(_POLICY.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
