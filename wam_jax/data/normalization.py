"""Per-dataset statistics and the one normalization path.

``compute_stats`` scans a split (images skipped) for mean/std, min/max and
q01/q99 of actions and proprio. ``load_or_compute_stats`` caches the result as
JSON next to the dataset (or under the cache dir when the dataset directory is
read-only), keyed by a fingerprint of the split's *content* (a SHA-256 of the
shards' bytes, dataset_info.json and features.json), the split and the spec's
keys, so a changed dataset never reuses stale numbers, even one rewritten in
place with the same file sizes.

``Normalizer`` holds the stats of every dataset in a mixture plus the mode
(``zscore`` or ``quantile``: q01..q99 -> [-1, 1], clipped). The data pipeline
normalizes with it, and the exported policy de-normalizes with the same object
rebuilt from ``to_dict()`` (stored with checkpoints), so training and
inference cannot drift. Dims where ``action_normalize_mask`` is False (e.g.
grippers) pass through untouched. A constant dim (std, or q99 - q01, at most
1e-6) is only centred (scale 1, never clipped), with a warning naming it:
dividing by a zero spread would blow any deviation up by ~1e6.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import stat
import time
import warnings
from typing import Mapping, Optional

import numpy as np

from wam_jax.data import registry
from wam_jax.data import rlds

MODES = ("zscore", "quantile")
_EPS = 1e-6
_STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")


@dataclasses.dataclass(frozen=True)
class ArrayStats:
  """Per-dim statistics of a [N, D] array; every field float32 [D]."""
  mean: np.ndarray
  std: np.ndarray
  min: np.ndarray
  max: np.ndarray
  q01: np.ndarray
  q99: np.ndarray

  @classmethod
  def of(cls, x_ND: np.ndarray) -> "ArrayStats":
    x = np.asarray(x_ND, np.float64)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return cls(*(np.asarray(v, np.float32) for v in
                 (x.mean(0), x.std(0), x.min(0), x.max(0), q01, q99)))

  def to_dict(self) -> dict:
    return {k: getattr(self, k).tolist() for k in _STAT_NAMES}

  @classmethod
  def from_dict(cls, d: Mapping) -> "ArrayStats":
    return cls(*(np.asarray(d[k], np.float32) for k in _STAT_NAMES))


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Stats of one dataset's train split. ``action`` is None if action-free."""
  proprio: ArrayStats
  action: Optional[ArrayStats]
  action_normalize_mask: tuple[bool, ...]
  num_episodes: int = 0
  num_steps: int = 0

  def to_dict(self) -> dict:
    return dict(proprio=self.proprio.to_dict(),
                action=None if self.action is None else self.action.to_dict(),
                action_normalize_mask=list(self.action_normalize_mask),
                num_episodes=self.num_episodes, num_steps=self.num_steps)

  @classmethod
  def from_dict(cls, d: Mapping) -> "DatasetStats":
    return cls(proprio=ArrayStats.from_dict(d["proprio"]),
               action=None if d["action"] is None else ArrayStats.from_dict(d["action"]),
               action_normalize_mask=tuple(bool(b) for b in d["action_normalize_mask"]),
               num_episodes=int(d.get("num_episodes", 0)), num_steps=int(d.get("num_steps", 0)))


# --- Computing and caching ---------------------------------------------------

def compute_stats(reader) -> DatasetStats:
  """Scans every episode of ``reader`` (an ``rlds.RldsReader``), images skipped.

  Raises ValueError naming dataset/episode/step/key on NaN or inf.
  """
  proprio, actions = [], []
  for i in range(len(reader)):
    ep = reader.decode(i)
    proprio.append(ep.proprio)
    if ep.actions is not None:
      actions.append(ep.actions)
  if not proprio:
    raise ValueError(f"dataset {reader.spec.name!r} split {reader.split!r} has no episodes")
  proprio = np.concatenate(proprio)
  return DatasetStats(
      proprio=ArrayStats.of(proprio),
      action=ArrayStats.of(np.concatenate(actions)) if actions else None,
      action_normalize_mask=tuple(reader.spec.action_normalize_mask),
      num_episodes=len(reader), num_steps=len(proprio))


_HASH_CHUNK = 1 << 20
_SETTLED_NS = 2_000_000_000
_DIGESTS: dict = {}  # (path, size, mtime_ns, ctime_ns, inode) -> SHA-256 hex of the bytes.


def file_digest(path) -> str:
  """SHA-256 of a file's bytes, read in 1 MiB chunks.

  Memoised per process on (path, size, mtime_ns, ctime_ns, inode), so opening a
  dataset again does not rehash it. Any write changes ctime, which no tool can
  set back; a file changed less than 2 s before it is hashed is not memoised
  (a second write within the filesystem's timestamp granularity would leave
  every field equal: git's "racily clean" case).
  """
  path = pathlib.Path(path).resolve()
  st = path.stat()
  key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
  if key in _DIGESTS:
    return _DIGESTS[key]
  h = hashlib.sha256()  # OpenSSL's SHA-NI path: ~2x blake2b on this CPU (BUILD_NOTES).
  with open(path, "rb") as f:
    while chunk := f.read(_HASH_CHUNK):
      h.update(chunk)
  digest = h.hexdigest()
  if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS:
    _DIGESTS[key] = digest
  return digest


def fingerprint(directory, split: str, spec: registry.DatasetSpec) -> str:
  """Hash of what the split's statistics depend on: the bytes of its shards,
  dataset_info.json and features.json (names and contents), the split and the
  spec's keys."""
  directory = pathlib.Path(directory)
  h = hashlib.sha256()
  files = [directory / "dataset_info.json", directory / "features.json"]
  for f in [f for f in files if f.exists()] + rlds.shard_paths(directory, split):
    h.update(f"{f.name}:{file_digest(f)};".encode())
  h.update(repr((split, spec.stats_identity())).encode())
  return h.hexdigest()[:16]


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("WAM_CACHE_DIR", pathlib.Path.home() / ".cache" / "wam_jax"))


def stats_cache_path(directory, split, spec, cache_dir=None) -> pathlib.Path:
  """Next to the dataset if writable, else under ``cache_dir``/stats (default
  $WAM_CACHE_DIR or ~/.cache/wam_jax)."""
  directory = pathlib.Path(directory)
  name = f"wam_stats_{spec.name}_{split}_{fingerprint(directory, split, spec)}.json"
  if os.access(directory, os.W_OK) and directory.stat().st_mode & stat.S_IWUSR:
    return directory / name  # (The mode bit check: root may write anywhere.)
  return pathlib.Path(cache_dir or default_cache_dir()) / "stats" / name


def load_or_compute_stats(reader, cache_dir=None) -> DatasetStats:
  path = stats_cache_path(reader.directory, reader.split, reader.spec, cache_dir)
  if path.exists():
    return DatasetStats.from_dict(json.loads(path.read_text()))
  stats = compute_stats(reader)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(stats.to_dict(), indent=1))
  os.replace(tmp, path)  # Atomic: concurrent processes never read half a file.
  return stats


# --- Normalizer --------------------------------------------------------------

def _affine(stats: ArrayStats, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(center, scale, constant) with x_norm = (x - center) / scale; all [D].

  ``constant`` dims (spread <= 1e-6) get scale 1: centred, not blown up.
  """
  if mode == "zscore":
    center, spread = stats.mean, stats.std
  elif mode == "quantile":
    center, spread = (stats.q01 + stats.q99) / 2, (stats.q99 - stats.q01) / 2
  else:
    raise ValueError(f"unknown normalization mode {mode!r}; known: {MODES}")
  constant = spread <= _EPS
  return center, np.where(constant, np.float32(1), spread).astype(np.float32), constant


def _warn_constant_dims(mode: str, dataset: str, stats: "DatasetStats") -> None:
  """Warns once per dataset/key/dim that normalizes as a constant."""
  try:
    spec = registry.get_spec(dataset)
    key = lambda what, d: spec.key_of_dim(what, d)
  except ValueError:  # Stats of a dataset this process has no registry entry for.
    key = lambda what, d: what
  mask = np.asarray(stats.action_normalize_mask or (), bool)
  for what, s in (("proprio", stats.proprio), ("action", stats.action)):
    if s is None:
      continue
    center, _, constant = _affine(s, mode)
    for d in np.flatnonzero(constant):
      if what == "action" and d < len(mask) and not mask[d]:
        continue  # Not normalized anyway.
      warnings.warn(f"normalization ({mode}): dataset {dataset!r} key {key(what, d)!r} dim {d} is "
                    f"constant in the stats (centre {float(center[d]):.6g}, spread <= {_EPS}): "
                    "passed through unscaled, only centred")


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Normalizes actions/proprio of named datasets. Arrays are [..., D] with D
  at least the dataset's raw dim: dims past it (padding) pass through, as do
  action dims whose normalize mask is False. ``quantile`` clips to [-1, 1], so
  its round trip is exact only inside [q01, q99]; ``zscore`` does not clip.
  Constant dims are centred only (never scaled or clipped), warned about once.
  """
  mode: str
  stats: Mapping[str, DatasetStats]
  # Dataset -> what its actions mean (registry.ActionKind.describe()), kept with the
  # checkpoint so a policy's outputs can be read without the registry files.
  action_kinds: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown normalization mode {self.mode!r}; known: {MODES}")
    for name, stats in self.stats.items():
      _warn_constant_dims(self.mode, name, stats)

  def _get(self, dataset: str) -> DatasetStats:
    if dataset not in self.stats:
      raise ValueError(f"normalizer has no stats for dataset {dataset!r}; has {sorted(self.stats)}")
    return self.stats[dataset]

  def _apply(self, x, stats: ArrayStats, mask, inverse: bool) -> np.ndarray:
    x = np.array(x, np.float32)  # Copy: callers' arrays are never modified.
    d = len(stats.mean)
    if x.shape[-1] < d:
      raise ValueError(f"array has {x.shape[-1]} dims, stats have {d}")
    center, scale, constant = _affine(stats, self.mode)
    mask = np.ones(d, bool) if mask is None else np.asarray(mask, bool)
    v = x[..., :d]
    if inverse:
      y = v * scale + center
    else:
      y = (v - center) / scale
      if self.mode == "quantile":  # Constant dims are only centred: no clip, exact inverse.
        y = np.where(constant, y, np.clip(y, -1.0, 1.0))
    x[..., :d] = np.where(mask, y, v)
    return x

  def normalize_actions(self, actions, dataset: str) -> np.ndarray:
    s = self._get(dataset)
    if s.action is None:
      raise ValueError(f"dataset {dataset!r} is action-free: no action stats")
    return self._apply(actions, s.action, s.action_normalize_mask, inverse=False)

  def denormalize_actions(self, actions, dataset: str) -> np.ndarray:
    s = self._get(dataset)
    if s.action is None:
      raise ValueError(f"dataset {dataset!r} is action-free: no action stats")
    return self._apply(actions, s.action, s.action_normalize_mask, inverse=True)

  def normalize_proprio(self, proprio, dataset: str) -> np.ndarray:
    return self._apply(proprio, self._get(dataset).proprio, None, inverse=False)

  def denormalize_proprio(self, proprio, dataset: str) -> np.ndarray:
    return self._apply(proprio, self._get(dataset).proprio, None, inverse=True)

  def action_dim(self, dataset: str) -> int:
    s = self._get(dataset)
    return 0 if s.action is None else len(s.action.mean)

  def to_dict(self) -> dict:
    return {"mode": self.mode, "stats": {k: v.to_dict() for k, v in self.stats.items()},
            "action_kinds": dict(self.action_kinds)}

  @classmethod
  def from_dict(cls, d: Mapping) -> "Normalizer":
    return cls(mode=d["mode"], stats={k: DatasetStats.from_dict(v) for k, v in d["stats"].items()},
               action_kinds=dict(d.get("action_kinds", {})))
