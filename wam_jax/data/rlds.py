"""Reading TFDS-layout RLDS datasets without TensorFlow.

A dataset directory holds ``dataset_info.json``, ``features.json`` and record
shards. TFRecord shards are converted once to ArrayRecord
(``convert_to_array_record``, or ``scripts/convert_rlds.py``): the serialized
records are copied byte for byte, only the container changes, so every
episode decodes to the same values. ArrayRecord gives the random access a
Grain ``MapDataset`` needs.

``RldsReader`` opens one split and decodes an episode into an ``Episode`` of
canonical numpy arrays (only the features a ``DatasetSpec`` reads are decoded;
other cameras and embeddings are skipped).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import stat
import time
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from wam_jax.data import registry

ARRAY_RECORD = "array_record"
TFRECORD = "tfrecord"


def _tfds():
  import tensorflow_datasets as tfds  # Heavy import; only where needed.
  return tfds


def read_dataset_info(directory) -> dict:
  path = pathlib.Path(directory) / "dataset_info.json"
  if not path.exists():
    raise ValueError(f"{directory} is not a TFDS dataset directory (no dataset_info.json)")
  return json.loads(path.read_text())


def shard_paths(directory, split: str) -> list[pathlib.Path]:
  """Shard files of one split, in order, from dataset_info.json."""
  directory = pathlib.Path(directory)
  info = read_dataset_info(directory)
  fmt = info.get("fileFormat", TFRECORD)
  for s in info["splits"]:
    if s["name"] == split:
      n = len(s.get("shardLengths", ())) or 1
      template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
      return [directory / template.format(
          DATASET=info["name"], SPLIT=split, FILEFORMAT=fmt,
          SHARD_X_OF_Y=f"{i:05d}-of-{n:05d}", SHARD_INDEX=i, NUM_SHARDS=n)
              for i in range(n)]
  raise ValueError(f"dataset {directory} has no split {split!r}; "
                   f"splits: {[s['name'] for s in info['splits']]}")


def iter_tfrecord(path) -> Iterator[bytes]:
  """Raw records of one TFRecord file (framing only, CRCs not checked)."""
  import grain
  yield from grain.experimental.TFRecordIterDataset(str(path))


# --- Conversion --------------------------------------------------------------

def check_disjoint(src, dst) -> None:
  """Raises ValueError if ``dst`` is ``src``, contains it or lies inside it
  (symlinks resolved): replacing ``dst`` would then delete or pollute the source."""
  a, b = pathlib.Path(src).resolve(), pathlib.Path(dst).resolve()
  if a == b or a in b.parents or b in a.parents:
    how = "is" if a == b else ("contains" if b in a.parents else "is inside")
    raise ValueError(f"dst {dst} overlaps src {src}: it {how} the source ({b} vs {a}); "
                     "write the output outside the source tree")


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """One TFRecord shard to copy: ``src`` -> ``name`` (an ArrayRecord file name)."""
  split: str
  index: int
  src: str
  name: str
  expected: int  # Records dataset_info.json promises (-1: not stated).


def plan_conversion(src, dst, *, overwrite: bool = False) -> tuple[dict, list[ShardJob]]:
  """Checks a conversion before anything is written: (dataset_info, one job per shard).

  Refuses a ``dst`` that overlaps ``src``, a source that is not TFRecord, and
  an existing ``dst`` unless ``overwrite``.
  """
  check_disjoint(src, dst)
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  info = read_dataset_info(src)
  if info.get("fileFormat", TFRECORD) != TFRECORD:
    raise ValueError(f"{src} is already {info.get('fileFormat')!r}, not tfrecord")
  if dst.exists() and not overwrite:
    raise ValueError(f"{dst} exists (pass overwrite=True / --overwrite)")
  jobs = []
  for split in info["splits"]:
    lengths = [int(x) for x in split.get("shardLengths", ())]
    for i, path in enumerate(shard_paths(src, split["name"])):
      jobs.append(ShardJob(split["name"], i, str(path),
                           path.name.replace(f".{TFRECORD}-", f".{ARRAY_RECORD}-"),
                           lengths[i] if lengths else -1))
  return info, jobs


def convert_shard(job: ShardJob, out_path) -> tuple[int, int]:
  """Copies one shard's records in order into ArrayRecord ``out_path`` (group_size:1).
  Returns (records, bytes); a count that differs from dataset_info raises ValueError."""
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(out_path), "group_size:1")
  count = nbytes = 0
  try:
    for record in iter_tfrecord(job.src):
      writer.write(record)
      count += 1
      nbytes += len(record)
  finally:
    writer.close()
  if job.expected >= 0 and job.expected != count:
    raise ValueError(f"{job.src}: {count} records, dataset_info says {job.expected}")
  return count, nbytes


def finish_conversion(src, info: dict, tmp, dst) -> None:
  """Copies the non-shard files (features.json, labels...), writes dataset_info.json
  marked array_record, and renames the complete ``tmp`` to ``dst`` (replacing it)."""
  src, tmp, dst = pathlib.Path(src), pathlib.Path(tmp), pathlib.Path(dst)
  for f in src.iterdir():
    if f.is_file() and f.name != "dataset_info.json" and f".{TFRECORD}-" not in f.name:
      shutil.copyfile(f, tmp / f.name)
  info = dict(info, fileFormat=ARRAY_RECORD)
  (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))
  dst.parent.mkdir(parents=True, exist_ok=True)
  if dst.exists():
    shutil.rmtree(dst)
  os.rename(tmp, dst)


def convert_to_array_record(src, dst, *, overwrite: bool = False) -> dict:
  """Copies a TFRecord RLDS dataset to ArrayRecord, record for record, in this process.

  Refuses a ``dst`` that overlaps ``src`` before touching anything. Writes
  into ``<dst>.tmp-<pid>`` and renames, so ``dst`` is either absent or
  complete. Returns {"episodes", "bytes", "seconds"}. (``convert_beam`` runs
  the same per-shard copy as an Apache Beam pipeline, resumable by shard.)
  """
  info, jobs = plan_conversion(src, dst, overwrite=overwrite)
  dst = pathlib.Path(dst)
  tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  start, episodes, nbytes = time.perf_counter(), 0, 0
  try:
    for job in jobs:
      count, size = convert_shard(job, tmp / job.name)
      episodes, nbytes = episodes + count, nbytes + size
    finish_conversion(src, info, tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dict(episodes=episodes, bytes=nbytes, seconds=time.perf_counter() - start)


# --- Episodes ----------------------------------------------------------------

@dataclasses.dataclass
class Episode:
  """One decoded episode in canonical form. T = number of steps.

  frames: camera -> uint8 [T, S, S, 3] (resized to image_size; only cameras
    the dataset has). proprio: float32 [T, P_raw]. actions: float32 [T, A_raw]
    or None (action-free). instruction: str.
  """
  frames: dict
  proprio: np.ndarray
  actions: Optional[np.ndarray]
  instruction: str

  @property
  def length(self) -> int:
    return len(self.proprio)

  @property
  def nbytes(self) -> int:
    return episode_nbytes(self)


def episode_nbytes(ep) -> int:
  """Bytes held by an episode's frames, proprio and actions (for cache budgets)."""
  n = ep.proprio.nbytes + sum(f.nbytes for f in ep.frames.values())
  return n + (0 if ep.actions is None else ep.actions.nbytes)


def resize_frames(frames_THWC: np.ndarray, size: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3] (bilinear; no-op if equal)."""
  if frames_THWC.shape[1:3] == (size, size):
    return frames_THWC
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                   for f in frames_THWC])


def _check_finite(x: np.ndarray, dataset: str, episode, key: str) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    step = int(np.argwhere(bad)[0][0])
    raise ValueError(f"dataset {dataset!r} episode {episode} step {step} key {key!r}: "
                     f"non-finite value {x[step].tolist()}")


class RldsReader:
  """Random access to the raw and decoded episodes of one split.

  Picklable (Grain workers re-open the files lazily).
  """

  def __init__(self, directory, split: str, spec: registry.DatasetSpec):
    self.directory = pathlib.Path(directory)
    self.split = split
    self.spec = spec
    info = read_dataset_info(self.directory)
    self.file_format = info.get("fileFormat", TFRECORD)
    self.paths = shard_paths(self.directory, split)
    self.shard_lengths = _shard_lengths(info, split)
    for p in self.paths:
      if not p.exists():
        raise ValueError(f"dataset {spec.name!r}: missing shard {p}")
    self.widths = registry.validate_features(spec, self.features)  # Part dims [proprio, action].
    self.cache_dir = None  # Where episode_lengths caches when the dataset dir is read-only.
    self._source = None
    self._records = None

  @property
  def features(self):
    if not hasattr(self, "_features") or self._features is None:
      self._features = _tfds().features.FeaturesDict.from_config(str(self.directory))
    return self._features

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_source=None, _records=None, _features=None)
    return state

  def _raw_records(self):
    if self.file_format == ARRAY_RECORD:
      if self._source is None:
        import grain
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])
      return self._source
    if self._records is None:  # TFRecord: sequential container, read into memory.
      self._records = [r for p in self.paths for r in iter_tfrecord(p)]
    return self._records

  def __len__(self) -> int:
    return len(self._raw_records())

  def raw(self, index: int) -> bytes:
    return self._raw_records()[index]

  def _decoders(self, keep: Sequence[str]):
    """Nested SkipDecoding for every step leaf not in ``keep``."""
    skip = _tfds().decode.SkipDecoding()
    def walk(node, prefix):
      out = {}
      for k in node.keys():
        key = prefix + k
        child = node[k]
        if hasattr(child, "keys"):
          sub = walk(child, key + "/")
          if sub:
            out[k] = sub
        elif key not in keep:
          out[k] = skip
      return out
    return {"steps": walk(registry.step_features(self.features), "")}

  def decode(self, index: int, *, cameras: Sequence[str] = (), image_size: int = 0) -> Episode:
    """Decodes episode ``index``: requested cameras (that the dataset has),
    proprio and actions (parts concatenated, ops applied) and instruction.
    Raises ValueError naming dataset/episode/step/key on NaN/inf or bad shapes."""
    spec = self.spec
    cams = {c: spec.cameras[c] for c in cameras if c in spec.cameras}
    example = self.features.deserialize_example_np(
        self.raw(index), decoders=self._decoders(list(cams.values()) + spec.read_keys()))
    steps = list(example["steps"])
    if not steps:
      raise ValueError(f"dataset {spec.name!r} episode {index}: no steps")
    where = f"dataset {spec.name!r} episode {index}"
    get = registry.get_step_value
    raw = lambda key: np.stack([np.asarray(get(s, key)) for s in steps])
    check = lambda x, key: _check_finite(x, spec.name, index, key)
    proprio = registry.assemble(spec.proprio_parts, raw, len(steps), where, check)
    if spec.proprio_dims:
      proprio = proprio[:, slice(*spec.proprio_dims)]
    actions = None
    if not spec.action_free:
      actions = registry.assemble(spec.action_parts, raw, len(steps), where, check)
      if actions.shape[1] != len(spec.action_normalize_mask):
        raise ValueError(f"{where}: action {[p.describe() for p in spec.action_parts]} has "
                         f"{actions.shape[1]} dims, expected {len(spec.action_normalize_mask)}")
      _check_finite(actions, spec.name, index, "action (after ops)")
    frames = {}
    for cam, key in cams.items():
      x = raw(key)
      if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{where} key {key!r}: expected uint8 [H, W, 3] frames, "
                         f"got {x.dtype}{list(x.shape[1:])}")
      frames[cam] = resize_frames(x, image_size) if image_size else x
    instruction = ""
    if spec.language_key:
      for s in steps:
        text = registry.decode_language(get(s, spec.language_key), spec.language_encoding)
        if text:
          instruction = text
          break
    return Episode(frames=frames, proprio=proprio, actions=actions, instruction=instruction)

  def episode_lengths(self) -> np.ndarray:
    """int64 [num_episodes] steps per episode.

    Counting needs one pass over every record (no tensor is decoded), so the
    result is cached like the statistics: ``wam_lengths_<split>_<digest>.npy``
    next to the dataset (or under ``self.cache_dir`` if it is read-only), keyed by
    the shards' content digests. A mixture of large datasets reads each once.
    """
    path = lengths_cache_path(self.directory, self.split, self.paths, self.cache_dir)
    if path.exists():
      lengths = np.load(path)
      if len(lengths) == len(self):
        return lengths
    skip_all = self._decoders(keep=())
    lengths = np.array([len(self.features.deserialize_example_np(self.raw(i), decoders=skip_all)
                            ["steps"]) for i in range(len(self))], np.int64)
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npy")
      np.save(tmp, lengths)
      os.replace(tmp, path)
    except OSError:
      pass  # A cache that cannot be written only costs the pass next time.
    return lengths


def _shard_lengths(info: dict, split: str) -> list[int]:
  for s in info["splits"]:
    if s["name"] == split:
      return [int(x) for x in s.get("shardLengths", ())]
  return []


def lengths_cache_path(directory, split: str, paths, cache_dir=None) -> pathlib.Path:
  """Where ``episode_lengths`` caches (same place rules as the stats cache)."""
  from wam_jax.data import normalization  # (Imports rlds: a module-level import would cycle.)
  h = hashlib.sha256(split.encode())
  for p in paths:
    h.update(f"{p.name}:{normalization.file_digest(p)};".encode())
  directory = pathlib.Path(directory)
  name = f"wam_lengths_{split}_{h.hexdigest()[:16]}.npy"
  if os.access(directory, os.W_OK) and directory.stat().st_mode & stat.S_IWUSR:
    return directory / name
  return pathlib.Path(cache_dir or normalization.default_cache_dir()) / "lengths" / name
