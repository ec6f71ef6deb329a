"""Open-X standardization: how each dataset's RLDS keys map to canonical ones.

Data, not code paths. Each ``DatasetSpec`` says where a dataset lives under
``data_dir``, which image features are the canonical cameras
(``primary``/``secondary``/``wrist``), which step features make up proprio and
action, the language key, which action dims get normalized (grippers usually
not) and the action's kind (space, delta/absolute/velocity, rotation
encoding, gripper convention), so mixtures of conventions are visible.

Proprio and action are an ordered list of ``Part``s concatenated along the
last axis: a step key (optionally a ``dims`` slice of it, then per-dimension
``ops``: ``flip`` 1 - g, ``rescale`` from a range, ``binarize``, ``clip``) or a
constant ``fill`` (e.g. zeros where a dataset has no rotation). A plain key
string is a one-part list. Keys are paths inside one RLDS step,
"/"-separated (``action/world_vector``); a feature whose own name contains
"/" (kuka's ``clip_function_input/base_pose_tool_reached``) resolves too.

Entries live in registry files (JSON, YAML, or a Python file defining
``REGISTRY``; format in ``registry_files.py``): the built-in ones in
``wam_jax/data/registry/*.json``, a user's through ``data.registry_files``.
``validate_features`` checks a spec against a dataset's ``features.json``.
"""

import dataclasses
import pathlib
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from wam_jax.data import batch as batch_lib

BUILTIN_DIR = pathlib.Path(__file__).with_name("registry")

OPS = ("flip", "rescale", "binarize", "clip")
SPACES = ("eef", "joint")
MODES = ("delta", "absolute", "velocity")
ROTATIONS = ("euler", "axis_angle", "quaternion", "none")
# absolute: a position command, 1 = open, 0 = closed (after ops); relative: +/- change
# commands (RT-1 style); effort: signed torque (MetaWorld); none: no gripper dim.
GRIPPERS = ("absolute", "relative", "effort", "none")
LANGUAGE_ENCODINGS = ("text", "codepoints")  # codepoints: int32 unicode, 0-padded (language_table).


@dataclasses.dataclass(frozen=True)
class Op:
  """One per-dimension transform. ``args``: rescale (lo, hi, to_lo, to_hi),
  binarize (threshold,), clip (lo, hi), flip ()."""
  name: str
  args: tuple[float, ...] = ()

  def __post_init__(self):
    want = {"flip": 0, "rescale": 4, "binarize": 1, "clip": 2}
    if self.name not in want:
      raise ValueError(f"unknown op {self.name!r}; known: {OPS}")
    if len(self.args) != want[self.name]:
      raise ValueError(f"op {self.name!r} takes {want[self.name]} numbers, got {self.args}")
    if self.name == "rescale" and self.args[0] == self.args[1]:
      raise ValueError(f"op 'rescale' from an empty range {list(self.args[:2])}")

  def apply(self, x: np.ndarray) -> np.ndarray:
    if self.name == "flip":
      return 1.0 - x
    if self.name == "rescale":
      lo, hi, to_lo, to_hi = self.args
      return (x - lo) / (hi - lo) * (to_hi - to_lo) + to_lo
    if self.name == "binarize":
      return (x > self.args[0]).astype(np.float32)
    return np.clip(x, self.args[0], self.args[1])


@dataclasses.dataclass(frozen=True)
class Part:
  """A slice of proprio or action: ``key`` (optionally ``dims`` [start, stop)
  of it) with ``ops`` applied in order, or ``size`` constant ``fill`` dims."""
  key: str = ""
  dims: Optional[tuple[int, int]] = None
  ops: tuple[Op, ...] = ()
  fill: Optional[float] = None
  size: int = 0

  def __post_init__(self):
    if (self.fill is None) == (not self.key):
      raise ValueError(f"a part is either a step key or a fill, got key={self.key!r} fill={self.fill}")
    if self.fill is not None and self.size <= 0:
      raise ValueError(f"a fill part needs size > 0, got {self.size}")
    if self.dims is not None and not 0 <= self.dims[0] < self.dims[1]:
      raise ValueError(f"part {self.key!r}: dims {list(self.dims)} must be 0 <= start < stop")

  def describe(self) -> str:
    if self.fill is not None:
      return f"fill {self.fill:g} x{self.size}"
    return self.key + (f"[{self.dims[0]}:{self.dims[1]}]" if self.dims else "")

  def width(self, raw_width: int) -> int:
    if self.fill is not None:
      return self.size
    return (self.dims[1] - self.dims[0]) if self.dims else raw_width

  def apply(self, raw_TD: np.ndarray) -> np.ndarray:
    """float32 [T, raw] -> [T, width] (slice, then ops in order)."""
    x = raw_TD[:, self.dims[0]:self.dims[1]] if self.dims else raw_TD
    for op in self.ops:
      x = op.apply(x)
    return np.asarray(x, np.float32)


@dataclasses.dataclass(frozen=True)
class ActionKind:
  """What an action vector means (recorded with the normalizer; mixtures of
  different kinds are reported when a pipeline starts)."""
  space: str = "eef"
  mode: str = "delta"
  rotation: str = "euler"
  gripper: str = "absolute"

  def __post_init__(self):
    for field, allowed in (("space", SPACES), ("mode", MODES), ("rotation", ROTATIONS),
                           ("gripper", GRIPPERS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"action_kind.{field}={getattr(self, field)!r}; known: {allowed}")

  def describe(self) -> str:
    return f"{self.space}/{self.mode}/rotation={self.rotation}/gripper={self.gripper}"


PartsLike = Union[str, Part, Sequence[Union[str, Part]]]


def to_parts(value: Optional[PartsLike]) -> Optional[tuple[Part, ...]]:
  """None -> None; "" -> (); "k" -> (Part("k"),); a sequence of keys/Parts -> tuple."""
  if value is None:
    return None
  if isinstance(value, (str, Part)):
    value = (value,) if value else ()
  return tuple(p if isinstance(p, Part) else Part(key=str(p)) for p in value)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Canonical view of one RLDS dataset.

  Attributes:
    name: registry name (what ``data.mixture`` refers to).
    directory: TFDS version directory relative to ``data_dir``.
    cameras: canonical camera -> step image key. Cameras not listed are
      absent in this dataset (windows get zero frames for them).
    proprio_key: the proprio step key, or an ordered list of keys/``Part``s
      concatenated (() for a dataset without proprio). Stored as a tuple of Parts.
    action_key: the same for the action; None for action-free video.
    action_normalize_mask: one bool per action dim; False dims pass through.
    proprio_dims: optional (start, stop) slice of the concatenated proprio.
    language_key: step key of the instruction ('' for none).
    language_encoding: "text" (a string feature) or "codepoints" (int unicode, 0-padded).
    action_kind: what the action means; None if unstated.
    source: the registry file that defined it (for error messages).
  """
  name: str
  directory: str
  cameras: Mapping[str, str]
  proprio_key: PartsLike
  action_key: Optional[PartsLike]
  action_normalize_mask: tuple[bool, ...] = ()
  proprio_dims: Optional[tuple[int, int]] = None
  language_key: str = "language_instruction"
  language_encoding: str = "text"
  action_kind: Optional[ActionKind] = None
  source: str = "python"

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("proprio_key", to_parts(self.proprio_key) or ())
    set_("action_key", to_parts(self.action_key))
    set_("action_normalize_mask", tuple(bool(b) for b in self.action_normalize_mask))
    set_("cameras", dict(self.cameras))
    if self.language_encoding not in LANGUAGE_ENCODINGS:
      raise ValueError(f"dataset {self.name!r}: language_encoding {self.language_encoding!r}; "
                       f"known: {LANGUAGE_ENCODINGS}")
    if self.action_key is not None and not self.action_key:
      raise ValueError(f"dataset {self.name!r}: action has no parts (use None for action-free data)")

  @property
  def action_free(self) -> bool:
    return self.action_key is None

  @property
  def proprio_parts(self) -> tuple[Part, ...]:
    return self.proprio_key

  @property
  def action_parts(self) -> tuple[Part, ...]:
    return self.action_key or ()

  def describe_kind(self) -> str:
    if self.action_free:
      return "action-free"
    return self.action_kind.describe() if self.action_kind else "unspecified"

  def step_keys(self) -> dict[str, str]:
    """Role -> step key for every feature this spec reads."""
    keys = {f"camera {cam}": key for cam, key in self.cameras.items()}
    for role, parts in (("proprio", self.proprio_parts), ("action", self.action_parts)):
      for i, p in enumerate(parts):
        if p.key:
          keys[f"{role}[{i}]" if len(parts) > 1 else role] = p.key
    if self.language_key:
      keys["language"] = self.language_key
    return keys

  def read_keys(self) -> list[str]:
    """Step keys decode must keep (cameras excluded)."""
    keys = [p.key for p in self.proprio_parts + self.action_parts if p.key]
    return keys + ([self.language_key] if self.language_key else [])

  def stats_identity(self) -> str:
    """What the statistics depend on, besides the data (for cache fingerprints)."""
    return repr((self.proprio_key, self.proprio_dims, self.action_key, self.action_normalize_mask))

  def key_of_dim(self, role: str, dim: int, widths: Sequence[int] = ()) -> str:
    """The step key behind dim ``dim`` of proprio/action (best effort for messages)."""
    parts = self.proprio_parts if role == "proprio" else self.action_parts
    if len(parts) == 1 or not widths:
      return ", ".join(p.describe() for p in parts) or role
    start = 0
    for p, w in zip(parts, widths):
      if dim < start + w:
        return p.describe()
      start += w
    return role

  def proprio_from_vector(self, proprio_TP: np.ndarray) -> np.ndarray:
    """A live proprio vector (the dataset's single proprio key) -> the training proprio."""
    parts = self.proprio_parts
    if len(parts) > 1 or any(p.ops or p.fill is not None for p in parts):
      raise ValueError(f"dataset {self.name!r}: proprio {[p.describe() for p in parts]} is composite; "
                       "live inputs take a single untransformed proprio key")
    x = parts[0].apply(proprio_TP) if parts else proprio_TP[:, :0]
    return x[:, slice(*self.proprio_dims)] if self.proprio_dims else x


@dataclasses.dataclass(frozen=True)
class Mixture:
  """A named mixture: (dataset, weight) pairs. ``balance``: weights are per
  step, i.e. multiplied by each dataset's number of windows (the Octo/OpenVLA
  convention for the Open-X weights), else they are stream proportions."""
  name: str
  datasets: tuple[tuple[str, float], ...]
  balance: bool = False
  source: str = "python"


_REGISTRY: dict[str, DatasetSpec] = {}
_MIXTURES: dict[str, Mixture] = {}


def check_new(entry: Union[DatasetSpec, "Mixture"]) -> None:
  """Raises ValueError if ``entry`` clashes with a registered dataset or mixture:
  the same name with other fields (naming both sources), or a name used by the
  other kind. Registering the same entry again is fine."""
  kind = "dataset" if isinstance(entry, DatasetSpec) else "mixture"
  same, other = (_REGISTRY, _MIXTURES) if kind == "dataset" else (_MIXTURES, _REGISTRY)
  old = same.get(entry.name)
  if old is not None and old != entry:
    raise ValueError(f"{kind} {entry.name!r} from {entry.source} is already registered from "
                     f"{old.source} with different fields; pick another name")
  if entry.name in other:
    raise ValueError(f"{kind} {entry.name!r} from {entry.source}: the name is already a "
                     f"{'mixture' if kind == 'dataset' else 'dataset'} (from {other[entry.name].source})")
  if kind == "dataset":
    for cam in entry.cameras:
      if cam not in batch_lib.CAMERAS:
        raise ValueError(f"dataset {entry.name!r} ({entry.source}): unknown camera {cam!r}; "
                         f"known {batch_lib.CAMERAS}")


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds ``spec`` (``check_new`` first: the same entry again is a no-op)."""
  check_new(spec)
  _REGISTRY[spec.name] = spec
  return spec


def register_mixture(mixture: "Mixture") -> "Mixture":
  check_new(mixture)
  _MIXTURES[mixture.name] = mixture
  return mixture


def is_registered(entry: Union[DatasetSpec, "Mixture"]) -> bool:
  table = _REGISTRY if isinstance(entry, DatasetSpec) else _MIXTURES
  return table.get(entry.name) == entry


def unregister(name: str) -> None:
  """Removes a dataset or mixture (tests)."""
  _REGISTRY.pop(name, None)
  _MIXTURES.pop(name, None)


def get_spec(name: str) -> DatasetSpec:
  if name not in _REGISTRY:
    hint = f" ({name!r} is a mixture)" if name in _MIXTURES else ""
    raise ValueError(f"unknown dataset {name!r}{hint}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def get_mixture(name: str) -> Mixture:
  if name not in _MIXTURES:
    raise ValueError(f"unknown mixture {name!r}; registered: {sorted(_MIXTURES)}")
  return _MIXTURES[name]


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def mixture_names() -> tuple[str, ...]:
  return tuple(sorted(_MIXTURES))


@dataclasses.dataclass(frozen=True)
class MixtureItem:
  name: str
  weight: float
  balance: bool = False
  via: str = ""  # The named mixture it came from ('' if listed directly).


def expand_mixture(entries) -> tuple[MixtureItem, ...]:
  """``data.mixture`` -> one item per dataset.

  Each entry is (name, weight) or a bare name (weight 1). A mixture name
  expands to its datasets, weights multiplied. Unknown names, weights <= 0 and
  a dataset listed twice raise ValueError naming them.
  """
  items: list[MixtureItem] = []
  for entry in entries:
    if isinstance(entry, str):
      name, weight = entry, 1.0
    else:
      try:
        name, weight = entry
      except (TypeError, ValueError):
        raise ValueError(f"data.mixture entry {entry!r} is not a name or (name, weight)") from None
    name, weight = str(name), float(weight)
    if not weight > 0:
      raise ValueError(f"data.mixture weight of {name!r} must be > 0, got {weight}")
    if name in _MIXTURES:
      m = _MIXTURES[name]
      for ds, w in m.datasets:
        if ds not in _REGISTRY:
          raise ValueError(f"mixture {name!r} ({m.source}) names unknown dataset {ds!r}; "
                           f"registered: {sorted(_REGISTRY)}")
        items.append(MixtureItem(ds, weight * w, m.balance, via=name))
    else:
      get_spec(name)
      items.append(MixtureItem(name, weight))
  if not items:
    raise ValueError("data.mixture is empty")
  seen = {}
  for it in items:
    if it.name in seen:
      a, b = seen[it.name].via or "directly", it.via or "directly"
      raise ValueError(f"data.mixture lists dataset {it.name!r} twice ({a} and {b})")
    seen[it.name] = it
  return tuple(items)


# --- Features ------------------------------------------------------------------

def _resolve(node, key: str, has: Callable, get: Callable):
  """Walks a "/"-separated key; a child whose own name contains "/" matches
  too (longest name first). Raises KeyError if absent."""
  parts = key.split("/")
  i = 0
  while i < len(parts):
    for j in range(len(parts), i, -1):
      name = "/".join(parts[i:j])
      if has(node, name):
        node, i = get(node, name), j
        break
    else:
      raise KeyError(key)
  return node


def _has(node, name) -> bool:
  keys = getattr(node, "keys", None)
  return keys is not None and name in keys()


def get_feature(step_features, key: str):
  return _resolve(step_features, key, _has, lambda n, k: n[k])


def get_step_value(step: Mapping, key: str):
  """Reads a "/"-separated key from one decoded step dict."""
  return _resolve(step, key, _has, lambda n, k: n[k])


def step_features(features):
  """The per-step FeaturesDict of an RLDS episode FeaturesDict."""
  return features["steps"].feature


def _flat_keys(node, prefix=""):
  sub = getattr(node, "keys", None)
  if sub is None:
    return [prefix[:-1]]
  out = []
  for k in node.keys():
    out += _flat_keys(node[k], prefix + k + "/")
  return out


def _vector_width(feature, where: str) -> int:
  """Width of a numeric per-step tensor feature: () -> 1, (n,) -> n."""
  import tensorflow_datasets as tfds
  dtype = np.dtype(getattr(feature, "np_dtype", np.float32))
  numeric = isinstance(feature, tfds.features.Tensor) and not isinstance(
      feature, (tfds.features.Image, tfds.features.Text)) and dtype.kind in "biuf"
  shape = tuple(getattr(feature, "shape", ()) or ())
  if not numeric or len(shape) > 1 or any(d is None for d in shape):
    raise ValueError(f"{where}: expected a numeric scalar or vector per step, got "
                     f"{type(feature).__name__} {dtype}{list(shape)}")
  return shape[0] if shape else 1


@dataclasses.dataclass(frozen=True)
class Widths:
  """Dims of each part (and their sum) once checked against features."""
  proprio: tuple[int, ...]
  action: tuple[int, ...]

  @property
  def proprio_dim(self) -> int:
    return sum(self.proprio)

  @property
  def action_dim(self) -> int:
    return sum(self.action)


def validate_features(spec: DatasetSpec, features) -> Widths:
  """Checks a spec against a dataset's features; returns the part widths.

  Raises ValueError naming the dataset, role and key: a key the features lack
  (listing the step features), a camera that is not an RGB image, a
  proprio/action part that is not a numeric vector or whose dims fall
  outside it, an action width that does not match ``action_normalize_mask``.
  """
  import tensorflow_datasets as tfds
  steps = step_features(features)
  where = f"dataset {spec.name!r} ({spec.source})"

  def feature(role, key):
    try:
      return get_feature(steps, key)
    except (KeyError, TypeError):
      raise ValueError(f"{where}: {role} key {key!r} is not a step feature; "
                       f"step features: {sorted(_flat_keys(steps))}") from None

  for cam, key in spec.cameras.items():
    f = feature(f"camera {cam}", key)
    if not isinstance(f, tfds.features.Image) or (f.shape and f.shape[-1] != 3):
      raise ValueError(f"{where}: camera {cam} key {key!r} is not an RGB image feature "
                       f"({type(f).__name__} {list(getattr(f, 'shape', ()) or ())})")
  widths = {}
  for role, parts in (("proprio", spec.proprio_parts), ("action", spec.action_parts)):
    out = []
    for i, p in enumerate(parts):
      if p.fill is not None:
        out.append(p.size)
        continue
      label = f"{role}[{i}]" if len(parts) > 1 else role
      raw = _vector_width(feature(label, p.key), f"{where}: {label} key {p.key!r}")
      if p.dims and p.dims[1] > raw:
        raise ValueError(f"{where}: {label} key {p.key!r} has {raw} dims; dims {list(p.dims)} "
                         "fall outside it")
      out.append(p.width(raw))
    widths[role] = tuple(out)
  w = Widths(**widths)
  if spec.proprio_dims and spec.proprio_dims[1] > w.proprio_dim:
    raise ValueError(f"{where}: proprio has {w.proprio_dim} dims; proprio_dims "
                     f"{list(spec.proprio_dims)} fall outside it")
  if not spec.action_free and len(spec.action_normalize_mask) != w.action_dim:
    raise ValueError(f"{where}: action {[p.describe() for p in spec.action_parts]} has "
                     f"{w.action_dim} dims but action_normalize_mask has "
                     f"{len(spec.action_normalize_mask)}")
  if spec.language_key:
    f = feature("language", spec.language_key)
    dtype = np.dtype(getattr(f, "np_dtype", np.float32))
    text = isinstance(f, tfds.features.Text) or dtype.kind in "SUO"
    if (spec.language_encoding == "text") != text or (not text and dtype.kind not in "iu"):
      raise ValueError(f"{where}: language key {spec.language_key!r} is {dtype}, which does not "
                       f"fit language_encoding {spec.language_encoding!r}")
  return w


def assemble(parts: Sequence[Part], raw: Callable[[str], np.ndarray], length: int,
             where: str, check: Optional[Callable[[np.ndarray, str], None]] = None) -> np.ndarray:
  """Concatenates ``parts`` into float32 [T, D].

  ``raw(key)`` gives a key's per-step values stacked [T] or [T, n] (any numeric
  or bool dtype). ``check(x, key)`` (e.g. a NaN check) sees each raw part.
  """
  out = []
  for p in parts:
    if p.fill is not None:
      out.append(np.full((length, p.size), p.fill, np.float32))
      continue
    x = np.asarray(raw(p.key))
    if x.ndim == 1:
      x = x[:, None]
    if x.ndim != 2 or len(x) != length:
      raise ValueError(f"{where} key {p.key!r}: expected a vector per step, got shape {list(x.shape[1:])}")
    x = x.astype(np.float32)
    if check is not None:
      check(x, p.key)
    out.append(p.apply(x))
  return np.concatenate(out, axis=1) if out else np.zeros((length, 0), np.float32)


def decode_language(value, encoding: str) -> str:
  """One step's instruction as text ("codepoints": int unicode up to the first 0)."""
  if encoding == "codepoints":
    codes = np.asarray(value).reshape(-1)
    end = np.flatnonzero(codes == 0)
    codes = codes[:end[0]] if len(end) else codes
    return "".join(map(chr, codes.tolist()))
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_builtin() -> None:
  """Registers every file in ``wam_jax/data/registry/`` (sorted by name)."""
  from wam_jax.data import registry_files
  for path in sorted(BUILTIN_DIR.glob("*.json")):
    registry_files.load(path)


load_builtin()
