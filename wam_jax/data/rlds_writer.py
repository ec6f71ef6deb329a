"""Writes a standard TFDS/RLDS dataset in ArrayRecord format, without TensorFlow.

Each episode is serialized with ``features.serialize_example`` (image leaves are
handed over as ``PIL.Image``: numpy images would go through a TF encoder), the
records go into ArrayRecord shards, and ``tfds.folder_dataset.write_metadata``
(``check_data=False``: checking needs TF) writes ``dataset_info.json`` and
``features.json``. The result opens with plain
``tfds.builder_from_directory(dir).as_data_source(split)``.

Writing is atomic: everything goes into a temporary sibling directory that is
renamed to ``out_dir`` only at the end, so a killed run never leaves a
half-written dataset that looks complete.
"""

import os
import pathlib
import shutil
import time
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from array_record.python import array_record_module

FILE_FORMAT = "array_record"


def write_rlds_dataset(
    out_dir,
    features: tfds.features.FeaturesDict,
    episodes_by_split: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    episodes_per_shard: int = 200,
    description: str = "",
    overwrite: bool = False,
    on_episode: Optional[Callable[[str, int], None]] = None,
) -> pathlib.Path:
  """Writes episodes into ``out_dir`` (``<root>/<name>/<version>``) and returns it.

  Args:
    out_dir: final directory; its parent's name is the dataset name and its own
      name the version (e.g. ``wam_data/metaworld_demos/1.0.0``).
    features: the episode FeaturesDict (RLDS: ``steps`` is a
      ``tfds.features.Dataset``).
    episodes_by_split: split name -> iterable of episode dicts matching
      ``features``. Image leaves may be uint8 numpy arrays or PIL images. The
      iterables are consumed lazily, one episode in memory at a time.
    episodes_per_shard: records per ArrayRecord file.
    overwrite: replace an existing ``out_dir`` (else FileExistsError).
    on_episode: optional callback ``(split, index)`` after each written episode.
  """
  out_dir = pathlib.Path(out_dir).absolute()
  name, version = out_dir.parent.name, out_dir.name
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp_dir = out_dir.parent / f".tmp-{version}-{os.getpid()}-{time.time_ns()}"
  tmp_dir.mkdir()
  try:
    split_infos = []
    for split, episodes in episodes_by_split.items():
      split_infos.append(_write_split(
          tmp_dir, name, split, features, episodes, episodes_per_shard, on_episode))
    tfds.folder_dataset.write_metadata(
        data_dir=tmp_dir, features=features, split_infos=split_infos, version=version,
        check_data=False, description=description)
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.rename(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return out_dir


def _write_split(tmp_dir, name, split, features, episodes, episodes_per_shard, on_episode):
  """Writes one split's shards (named once their count is known); returns a SplitInfo."""
  shard_lengths, paths, writer = [], [], None
  for i, episode in enumerate(episodes):
    if writer is None:
      paths.append(tmp_dir / f".shard-{split}-{len(paths)}")
      writer = array_record_module.ArrayRecordWriter(str(paths[-1]), "group_size:1")
      shard_lengths.append(0)
    writer.write(features.serialize_example(to_pil_images(features, episode)))
    shard_lengths[-1] += 1
    if on_episode is not None:
      on_episode(split, i)
    if shard_lengths[-1] == episodes_per_shard:
      writer.close()
      writer = None
  if writer is not None:
    writer.close()
  if not paths:
    raise ValueError(f"split {split!r} has no episodes")
  num_bytes = 0
  for k, path in enumerate(paths):
    final = tmp_dir / f"{name}-{split}.{FILE_FORMAT}-{k:05d}-of-{len(paths):05d}"
    path.rename(final)
    num_bytes += final.stat().st_size
  return tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=num_bytes)


def to_pil_images(feature, value):
  """Returns ``value`` with every leaf under a ``tfds.features.Image`` made a PIL image.

  Handles nested FeaturesDicts and ``Dataset`` (``steps``) given either as a list
  of step dicts or as a dict of per-step sequences.
  """
  if isinstance(feature, tfds.features.Image):
    if isinstance(value, np.ndarray):
      return PIL.Image.fromarray(value)
    return value
  if isinstance(feature, tfds.features.Dataset):
    inner = feature.feature
    if isinstance(value, Mapping):
      return {k: _map_sequence(inner[k], v) if k in inner else v for k, v in value.items()}
    return [to_pil_images(inner, step) for step in value]
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: to_pil_images(feature[k], v) if k in feature else v for k, v in value.items()}
  return value


def _map_sequence(feature, values):
  """Like ``to_pil_images`` for a stack of per-step values (array or dict of arrays)."""
  if isinstance(feature, tfds.features.Image):
    return [to_pil_images(feature, v) for v in values]
  if isinstance(feature, tfds.features.FeaturesDict) and isinstance(values, Mapping):
    return {k: _map_sequence(feature[k], v) if k in feature else v for k, v in values.items()}
  return values
