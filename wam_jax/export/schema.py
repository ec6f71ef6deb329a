"""What an exported policy takes and gives: the observation schema, its checks,
and the host-side preprocessing, with numpy only (no jax, no model code).

An observation is one step's dict, as ``wam_jax.sim.metaworld.observe`` gives:
``image_<cam>`` uint8 [H, W, 3] for each camera the training dataset has, at the
resolution the dataset was recorded at, and ``proprio`` [P] in the dataset's
units. Other keys (``env_state``) are ignored. ``check_observation`` raises
``ObservationError`` naming the field and the expected dtype and shape.

The host side does only what cannot live in a StableHLO function or must
match training bit for bit: each frame is resized to ``image_size`` once, when
it enters the history, with the data path's own resize
(``wam_jax.data.rlds.resize_frames``, PIL bilinear); the history is padded like a
training window at an episode start (the oldest observation repeated,
``history_mask`` False); the instruction goes through the training tokenizer.
Normalization of proprio and de-normalization of actions are inside the
exported function (``policy_fn``), with the constants ``normalization_constants``
reads from the run's ``Normalizer``, so no consumer can skip or mismatch them.
"""

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from wam_jax.data import rlds
from wam_jax.data import tokenizer as tokenizer_lib

FORMAT = "wam_jax.policy"
FORMAT_VERSION = 1
IMAGE_PREFIX = "image_"


class ObservationError(ValueError):
  """An observation or instruction that breaks the schema; ``field`` names it."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field


def _describe(x) -> str:
  if isinstance(x, np.ndarray):
    return f"{x.dtype}{list(x.shape)}"
  text = repr(x)
  return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _shape_text(dtype: str, shape) -> str:
  return f"{dtype} [{', '.join('any' if d is None else str(d) for d in shape)}]"


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
  """The observation side of a manifest.

  cameras: {obs key "image_<cam>": (H, W) as recorded, or (None, None) if unknown:
    any size, resized like training}. proprio_dim: the observation's proprio
    length (None: at least ``proprio_min_dim``). proprio_slice: the dataset's
    (start, stop) of the proprio vector, or None.
  """
  cameras: Mapping[str, tuple]
  image_size: int
  history: int
  proprio_dim: Optional[int]
  proprio_min_dim: int
  proprio_slice: Optional[tuple[int, int]]
  max_text_len: int

  @classmethod
  def from_manifest(cls, manifest: Mapping) -> "ObservationSpec":
    obs, pre = manifest["observation"], manifest["preprocessing"]
    cams = {k: tuple(v["shape"][:2]) for k, v in obs.items() if k.startswith(IMAGE_PREFIX)}
    p = obs["proprio"]
    return cls(cameras=cams, image_size=int(pre["image_size"]), history=int(pre["history"]),
               proprio_dim=p["shape"][0],
               proprio_min_dim=int(p["min_dim"] if p.get("min_dim") is not None else p["shape"][0]),
               proprio_slice=tuple(p["slice"]) if p.get("slice") else None,
               max_text_len=int(pre["tokenizer"]["max_len"]))

  def image_text(self, key: str) -> str:
    return _shape_text("uint8", self.cameras[key] + (3,))

  def proprio_text(self) -> str:
    if self.proprio_dim is not None:
      return _shape_text("float32", (self.proprio_dim,))
    return f"float32 [P >= {self.proprio_min_dim}]"


@dataclasses.dataclass
class Step:
  """One checked observation, ready for the history: frames uint8 [S, S, 3]
  by obs key, proprio float32 [P_dataset] (the dataset's slice, env units)."""
  frames: dict
  proprio: np.ndarray


def check_observation(obs, spec: ObservationSpec) -> Step:
  """Validates one observation and returns it resized/sliced (copies: the
  caller's buffers are never kept)."""
  if not isinstance(obs, Mapping):
    raise ObservationError("observation", f"expected a dict of arrays, got {_describe(obs)}")
  frames = {}
  for key, hw in spec.cameras.items():
    if key not in obs:
      raise ObservationError(key, f"missing: expected {spec.image_text(key)} (got fields "
                                  f"{sorted(map(str, obs))[:10]})")
    x = obs[key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or \
        any(want is not None and got != want for got, want in zip(x.shape, hw)) or min(x.shape) < 1:
      raise ObservationError(key, f"expected {spec.image_text(key)}, got {_describe(x)}")
    # The data path's resize (a no-op at image_size); then a C-contiguous copy.
    frames[key] = np.array(rlds.resize_frames(x[None], spec.image_size)[0], np.uint8)
  if "proprio" not in obs:
    raise ObservationError("proprio", f"missing: expected {spec.proprio_text()}")
  p = obs["proprio"]
  try:
    p = np.asarray(p)
  except Exception:  # noqa: BLE001 (ragged lists and the like)
    raise ObservationError("proprio", f"expected {spec.proprio_text()}, got {_describe(p)}") from None
  if p.dtype.kind not in "fiu" or p.ndim != 1 or \
      (spec.proprio_dim is not None and len(p) != spec.proprio_dim) or len(p) < spec.proprio_min_dim:
    raise ObservationError("proprio", f"expected {spec.proprio_text()}, got {_describe(p)}")
  p = p.astype(np.float32)
  if not np.isfinite(p).all():
    raise ObservationError("proprio", f"non-finite values {p.tolist()}")
  if spec.proprio_slice:
    p = p[slice(*spec.proprio_slice)]
  return Step(frames, np.array(p, np.float32))


def check_instruction(instruction) -> str:
  if not isinstance(instruction, str) or not instruction.strip():
    raise ObservationError("instruction", f"expected a non-empty string, got {_describe(instruction)}")
  return instruction


def function_inputs(history: Sequence[Step], instruction: str, spec: ObservationSpec,
                    tokenizer: tokenizer_lib.ByteTokenizer) -> dict:
  """The last ``spec.history`` steps (oldest first) + instruction -> the exported
  function's unbatched inputs: image_<cam> uint8 [T, S, S, 3], proprio float32
  [T, P_dataset], history_mask bool [T], language_tokens int32 [L],
  language_mask bool [L]. Fewer steps are padded by repeating the oldest, with
  history_mask False, exactly as ``windows.history_inputs`` pads."""
  t = spec.history
  past = list(history)[-t:]
  if not past:
    raise ValueError("function_inputs needs at least one observation")
  pad = t - len(past)
  past = [past[0]] * pad + past
  tokens, mask = tokenizer.encode(instruction)
  out = {key: np.stack([s.frames[key] for s in past]) for key in spec.cameras}
  out.update(proprio=np.stack([s.proprio for s in past]), history_mask=np.arange(t) >= pad,
             language_tokens=tokens, language_mask=mask)
  return out


def normalization_constants(normalizer, dataset: str) -> dict:
  """{"proprio"|"action": {"center", "scale", "constant", "mask", "clip"}} (float32/bool
  [D]) of ``normalizer`` for ``dataset``: x_norm = (x - center) / scale where mask,
  clipped to [-1, 1] where ``clip`` (quantile mode, non-constant dims). The very
  numbers ``Normalizer`` uses (its own ``_affine``), so the exported function
  cannot drift from the data pipeline."""
  from wam_jax.data import normalization  # pylint: disable=g-import-not-at-top
  stats = normalizer.stats[dataset]
  out = {}
  for what, s, mask in (("proprio", stats.proprio, None),
                        ("action", stats.action, stats.action_normalize_mask)):
    if s is None:
      raise ValueError(f"dataset {dataset!r} has no {what} statistics (action-free?): it cannot be "
                       "the dataset a policy acts in")
    center, scale, constant = normalization._affine(s, normalizer.mode)  # pylint: disable=protected-access
    d = len(center)
    mask = np.ones(d, bool) if mask is None else np.asarray(mask, bool)
    out[what] = dict(center=np.asarray(center, np.float32), scale=np.asarray(scale, np.float32),
                     constant=np.asarray(constant, bool), mask=mask,
                     clip=(~np.asarray(constant, bool)) & (normalizer.mode == "quantile"))
  return out


def example_observation(manifest: Mapping, rng: np.random.Generator) -> dict:
  """A schema-valid observation with random content (image dims the manifest leaves open: image_size)."""
  obs = {}
  size = int(manifest["preprocessing"]["image_size"])
  for key, field in manifest["observation"].items():
    if key.startswith(IMAGE_PREFIX):
      h, w = (d or size for d in field["shape"][:2])
      obs[key] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  p = manifest["observation"]["proprio"]
  obs["proprio"] = rng.normal(size=(p["shape"][0] or p["min_dim"],)).astype(np.float32)
  return obs
