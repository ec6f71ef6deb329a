"""MetaWorld v3 environments: creation, seeding and observation.

The one implementation shared by dataset generation and closed-loop evaluation,
so the frames a policy is trained on and the frames it sees at test time come
from the same camera, resolution and renderer settings.

Rendering is headless: ``MUJOCO_GL`` defaults to ``egl`` (set here before
mujoco is imported; needs the apt packages libegl1 libopengl0 libgl1-mesa-dri).

Camera: ``corner4`` by default. It shows the arm and the objects large; the
corner cameras render upside down, so frames are rotated by 180 degrees
(``np.rot90(img, 2)``, not a flip, which would mirror the scene).

Fast render: 4x multisampling, shadows and reflections off (~15x faster in
software GL, frames otherwise the same).

Seeding: one env per (task, process) is made once; each episode's start state
comes from ``reset(env, seed)``, which draws the task's random vector (object
and goal positions) from a generator seeded with the episode seed. Same seed,
same start, bitwise identical rollouts; more than the 50 starts ``MT1`` fixes.

Never ``env.close()`` an env: with this renderer set-up it freezes the frames
of every env created later in the process. Drop the reference instead.
"""

import os
import sys
import warnings

if "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ:
  warnings.warn("mujoco was imported before MUJOCO_GL was set; headless rendering may fail")
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402,F401  (registers the Meta-World/* gym ids)
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402

DEFAULT_CAMERA = "corner4"
# The project's own cameras: a MetaWorld camera's pose with a narrower vertical field of view
# (degrees; MetaWorld's are 60). ``corner4_zoom``: corner4 magnified 1.5x about the image centre;
# every hand, object and goal position of the MT10 experts' episodes stays >= 4 px inside a 64 px
# frame (BUILD_NOTES, "How large the goal is in the frame").
ZOOMED_CAMERAS = {"corner4_zoom": ("corner4", 42.1)}
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV") + tuple(ZOOMED_CAMERAS)
_ROTATED_CAMERAS = ("corner", "corner2", "corner3", "corner4")
_ROTATED_CAMERAS += tuple(name for name, (base, _) in ZOOMED_CAMERAS.items() if base in _ROTATED_CAMERAS)
STATE_DIM = 4         # hand xyz + gripper opening (raw_obs[:4]).
ENV_STATE_DIM = 39    # the full MetaWorld observation (expert policies need it).
ACTION_DIM = 4        # hand dxyz + gripper, in [-1, 1].
MAX_ENV_STEPS = 500   # MetaWorld truncates here; stepping past it raises.

TASK_INSTRUCTIONS = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the basketball into the hoop",
    "bin-picking-v3": "move the cube from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hand-insert-v3": "put the hand into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grab the stick and push the box with it",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "put the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
INSTRUCTION_TO_TASK = {text: task for task, text in TASK_INSTRUCTIONS.items()}

# Unseen paraphrases of the MT10 instructions (shared/PROTOCOL.md, claim 4): evaluation only, never in
# any dataset the project generates. Each keeps the task's object and goal but changes the verbs and
# wording; episode ``seed`` picks one (``instruction(task, "paraphrase", seed)``).
PARAPHRASES = {
    "reach-v3": ("move the gripper to the target position", "bring the hand over to the goal spot"),
    "push-v3": ("slide the puck over to the target", "shove the puck until it reaches the goal"),
    "pick-place-v3": ("grab the puck and put it down at the target", "lift the puck and set it on the goal spot"),
    "door-open-v3": ("swing the door open", "pull the door so that it opens"),
    "drawer-open-v3": ("pull the drawer out", "draw the drawer outwards"),
    "drawer-close-v3": ("push the drawer shut", "shove the drawer back in"),
    "button-press-topdown-v3": ("push the button down from above", "press down on the button from overhead"),
    "peg-insert-side-v3": ("slide the peg sideways into the hole", "put the peg in the hole from the side"),
    "window-open-v3": ("open the window by sliding it", "push the window open"),
    "window-close-v3": ("close the window by sliding it", "push the window shut"),
}
INSTRUCTION_SETS = ("train", "paraphrase")


def valid_tasks() -> list[str]:
  return list(ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
  """Returns ``task`` or raises ValueError listing every valid MetaWorld v3 name."""
  if task not in ALL_V3_ENVIRONMENTS:
    raise ValueError(f"unknown MetaWorld task {task!r}; valid v3 tasks: {', '.join(valid_tasks())}")
  return task


def parse_tasks(tasks) -> tuple[str, ...]:
  """Accepts "a,b" or a sequence; checks every name; keeps order, drops duplicates.

  The name "all" stands for every v3 task.
  """
  if isinstance(tasks, str):
    tasks = [t for t in tasks.split(",") if t.strip()]
  tasks = [n for t in tasks for n in (valid_tasks() if t.strip() == "all" else [t])]
  names = tuple(dict.fromkeys(check_task(t.strip()) for t in tasks))
  if not names:
    raise ValueError("no MetaWorld task given")
  return names


def instruction(task: str, instructions: str = "train", seed: int = 0) -> str:
  """The instruction of ``task``: its training one, or (``instructions="paraphrase"``) one of its
  unseen ``PARAPHRASES``, chosen by the episode ``seed``."""
  check_task(task)
  if instructions == "train":
    return TASK_INSTRUCTIONS[task]
  if instructions != "paraphrase":
    raise ValueError(f"instructions={instructions!r}: expected one of {INSTRUCTION_SETS}")
  if task not in PARAPHRASES:
    raise ValueError(f"instructions='paraphrase': task {task!r} has no paraphrases (the MT10 tasks do: "
                     f"{', '.join(PARAPHRASES)})")
  options = PARAPHRASES[task]
  return options[seed % len(options)]


def check_instructions(tasks, instructions: str) -> None:
  """ValueError unless every task has an instruction in the set ``instructions`` (before any episode)."""
  for task in tasks:
    instruction(task, instructions)


def make_env(task: str, seed: int = 0, resolution: int = 64, camera: str = DEFAULT_CAMERA):
  """Makes a rendering MetaWorld env for ``task`` with the fast-render settings.

  ``seed`` seeds the env itself (and its action space); the start state of each
  episode is chosen by ``reset(env, episode_seed)``.
  """
  check_task(task)
  if camera not in CAMERAS:
    raise ValueError(f"unknown camera {camera!r}; valid: {', '.join(CAMERAS)}")
  base_camera, fovy = ZOOMED_CAMERAS.get(camera, (camera, None))
  env = gym.make("Meta-World/MT1", env_name=task, seed=seed, render_mode="rgb_array",
                 camera_name=base_camera, width=resolution, height=resolution,
                 disable_env_checker=True)
  raw = env.unwrapped
  if fovy is not None:  # the renderer reads the model's camera at every frame
    raw.model.cam_fovy[mujoco.mj_name2id(raw.model, mujoco.mjtObj.mjOBJ_CAMERA, base_camera)] = fovy
  raw.model.vis.quality.offsamples = 0  # Before the first render creates the context.
  viewer = raw.mujoco_renderer._get_viewer("rgb_array")
  viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
  viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
  env.reset()  # Sets an MT1 task once (the env refuses to run without one).
  _task_sampler(env).toggle_sample_tasks_on_reset(False)
  env.wam_camera = camera
  env.wam_viewer = viewer
  return env


def _task_sampler(env):
  wrapper = env
  while not hasattr(wrapper, "toggle_sample_tasks_on_reset"):
    wrapper = wrapper.env
  return wrapper


def reset(env, seed: int) -> np.ndarray:
  """Starts an episode whose object/goal positions depend only on ``seed``.

  Returns the raw float64 [39] observation.
  """
  raw = env.unwrapped
  raw._freeze_rand_vec = False
  raw.seeded_rand_vec = True
  raw.seed(int(seed))
  raw_obs, _ = env.reset()
  # MetaWorld moves the goal marker by writing model.site_pos; the marker's world position (what
  # the renderer draws) is only recomputed by the next forward pass, so without this the first
  # frame of an episode drew the marker where the reset's first random draw had put it, not at
  # the episode's goal. Kinematics only: the simulation state is unchanged.
  mujoco.mj_forward(raw.model, raw.data)
  return raw_obs


def render(env) -> np.ndarray:
  """Returns the camera frame, uint8 [H, W, 3], upright.

  Each env owns a GL context, and mujoco renders into whichever context is
  current: with several live envs in one process (the per-process env cache),
  rendering without making this env's context current reads another env's
  framebuffer, i.e. stale frames. So: make it current on every render.
  """
  env.wam_viewer.make_context_current()
  frame = env.render()
  if env.wam_camera in _ROTATED_CAMERAS:
    frame = np.rot90(frame, 2)
  return np.ascontiguousarray(frame, dtype=np.uint8)


def observe(env, raw_obs) -> dict:
  """The observation every policy and dataset sees.

  Returns {"image_primary": uint8 [H, W, 3], "proprio": float32 [4] (hand xyz +
  gripper opening), "env_state": float32 [39] (the full MetaWorld state vector)}.
  """
  raw_obs = np.asarray(raw_obs)
  return {
      "image_primary": render(env),
      "proprio": raw_obs[:STATE_DIM].astype(np.float32),
      "env_state": raw_obs.astype(np.float32),
  }


def step(env, action) -> tuple[np.ndarray, float, bool]:
  """Applies one action (clipped to [-1, 1]); returns (raw_obs, reward, success)."""
  action = np.clip(np.asarray(action, np.float64).reshape(ACTION_DIM), -1.0, 1.0)
  raw_obs, reward, _, _, info = env.step(action)
  return raw_obs, float(reward), bool(info["success"])


class FrozenFramesError(RuntimeError):
  """The renderer returns the same picture while the scene moves."""


def check_frames_live(frames, states, *, min_motion: float = 5e-3, max_frozen_fraction: float = 0.1):
  """Raises FrozenFramesError if frames stop changing while the scene moves.

  Args:
    frames: uint8 [T, H, W, 3] consecutive frames.
    states: float [T, S] the matching env states (positions in metres).
    min_motion: a step "moves" when some state coordinate changes by more than this.
    max_frozen_fraction: fail when more than this fraction of moving steps have
      pixel-identical consecutive frames.
  Returns the fraction of moving steps with identical frames.
  """
  frames, states = np.asarray(frames), np.asarray(states)
  moved = np.abs(np.diff(states, axis=0)).max(axis=-1) > min_motion
  same = np.all(frames[1:] == frames[:-1], axis=(1, 2, 3))
  if moved.sum() < 3:
    return 0.0
  frozen = float((same & moved).sum() / moved.sum())
  if frozen > max_frozen_fraction:
    raise FrozenFramesError(
        f"{frozen:.0%} of {int(moved.sum())} steps where the scene moved rendered an identical "
        "frame: the renderer is frozen (was env.close() called in this process?)")
  return frozen


_ENV_CACHE = {}


def cached_env(task: str, resolution: int = 64, camera: str = DEFAULT_CAMERA):
  """One env per (task, resolution, camera) per process, made on first use.

  Making an env costs ~1 s; envs are reset per episode instead, and never closed.
  """
  key = (task, resolution, camera)
  if key not in _ENV_CACHE:
    _ENV_CACHE[key] = make_env(task, seed=0, resolution=resolution, camera=camera)
  return _ENV_CACHE[key]
