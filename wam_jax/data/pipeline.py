"""The Grain input pipeline the trainer calls: ``make_pipeline``.

Graph (train)::

  per dataset j:  range(num_windows)[process_index::process_count]
                  .shuffle(seed_j).repeat()          # reshuffled every epoch
                  .map(WindowSource_j)               # decode once, cut windows
  mix(datasets, weights)                             # exact proportions; a balanced named
                                                     # mixture weighs w_j x num_windows_j
  .random_map(Augment, per-process seed)             # train + augment.enabled only
  .to_iter_dataset().batch(B, drop_remainder=True)
  .mp_prefetch(num_workers)                          # if data.num_workers > 0

Before any work: ``data.registry_files`` are loaded and checked, the mixture
expanded (``resolve_mixture``), every dataset opened and checked against its
features (keys, widths vs data.action_dim/proprio_dim), and a mixture whose
action conventions differ is reported (one warning line naming the groups).
Memory per process/worker: the decoded-episode caches share
``data.episode_cache_mb``; window indices cost 8 bytes per episode.

Eval/val pipelines are the same graph without augmentation: deterministic
for a given seed (shuffled, so the first batches cover many episodes) and
infinite; take as many batches as you need. The iterator's
``get_state``/``set_state`` (or ``grain.checkpoint.CheckpointSave``) resume
exactly; the state depends on ``data.num_workers`` (part of a run's identity).
"""

import dataclasses
import os
import pathlib
from typing import Optional, Sequence

from absl import logging
import grain
import numpy as np

from wam_jax.data import augment as augment_lib
from wam_jax.data import batch as batch_lib
from wam_jax.data import normalization
from wam_jax.data import registry
from wam_jax.data import registry_files
from wam_jax.data import rlds
from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.data import windows


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """jax.ShapeDtypeStruct-like (shape, dtype) without importing jax here."""
  shape: tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass
class Pipeline:
  iterator: grain.DatasetIterator  # dict[str, np.ndarray] batches per batch.py.
  normalizer: Optional[normalization.Normalizer]  # None for text
  tokenizer: tokenizer_lib.ByteTokenizer  # or text.TextTokenizer
  dataset_names: tuple[str, ...]
  element_spec: dict  # key -> ArraySpec of one batch.


def resolve_data_dir(data_cfg) -> pathlib.Path:
  """data.data_dir, else $WAM_DATA_DIR, else ./wam_data."""
  return pathlib.Path(data_cfg.data_dir or os.environ.get("WAM_DATA_DIR") or "wam_data")


def dataset_dirs(data_cfg) -> dict[str, str]:
  """data.dataset_dirs as {registry name: directory}: where those datasets are read instead of
  their registry entry's directory (absolute, or under the data root), e.g. a per-run
  pseudo-labelled copy of a dataset with the entry's schema. ValueError for a malformed entry."""
  out = {}
  for entry in data_cfg.get("dataset_dirs", ()) or ():
    if isinstance(entry, str) or len(entry) != 2 or not all(isinstance(x, str) and x for x in entry):
      raise ValueError(f"data.dataset_dirs entry {entry!r} is not a (registry name, directory) pair")
    out[entry[0]] = entry[1]
  return out


def dataset_dir(data_cfg, name: str) -> pathlib.Path:
  directory = dataset_dirs(data_cfg).get(name) or registry.get_spec(name).directory
  return resolve_data_dir(data_cfg) / directory  # an absolute directory stays as is


def open_reader(data_cfg, name: str, split: str) -> rlds.RldsReader:
  spec = registry.get_spec(name)
  directory = dataset_dir(data_cfg, name)
  if not directory.exists():
    raise ValueError(f"dataset {name!r}: directory {directory} does not exist "
                     f"(data_dir={resolve_data_dir(data_cfg)}; entry from {spec.source})")
  reader = rlds.RldsReader(directory, split, spec)
  reader.cache_dir = data_cfg.get("cache_dir") or None  # Episode-length index cache.
  return reader


def resolve_mixture(data_cfg) -> tuple[registry.MixtureItem, ...]:
  """data.registry_files loaded (checked whole, one-line errors naming file
  and field), then data.mixture expanded: one item per dataset (named
  mixtures expand, weights multiply); unknown names, weights <= 0 and a
  dataset listed twice raise ValueError, as does a data.dataset_dirs name outside the mixture."""
  registry_files.load_all(data_cfg.get("registry_files", ""))
  items = registry.expand_mixture(data_cfg.mixture)
  names = [item.name for item in items]
  for name in dataset_dirs(data_cfg):
    if name not in names:
      raise ValueError(f"data.dataset_dirs names {name!r}, which is not a dataset of data.mixture {names}")
  return items


def parse_mixture(data_cfg) -> tuple[tuple[str, float], ...]:
  """data.mixture as ((registry name, weight), ...) after ``resolve_mixture``."""
  return tuple((item.name, item.weight) for item in resolve_mixture(data_cfg))


def make_normalizer(data_cfg, *, split: Optional[str] = None) -> normalization.Normalizer:
  """Stats of every mixture dataset's train split (cached), in data.normalization
  mode, with each dataset's action kind recorded."""
  split = split or data_cfg.train_split
  names = [item.name for item in resolve_mixture(data_cfg)]
  stats = {name: normalization.load_or_compute_stats(open_reader(data_cfg, name, split),
                                                     data_cfg.get("cache_dir") or None)
           for name in names}
  kinds = {name: registry.get_spec(name).describe_kind() for name in names}
  return normalization.Normalizer(mode=data_cfg.normalization, stats=stats, action_kinds=kinds)


def conventions_report(names) -> Optional[str]:
  """One line if the datasets' actions mean different things (kinds differ), else None."""
  groups: dict[str, list[str]] = {}
  for name in names:
    spec = registry.get_spec(name)
    if not spec.action_free:
      groups.setdefault(spec.describe_kind(), []).append(name)
  if len(groups) < 2:
    return None
  return ("data.mixture mixes action conventions (action dims mean different things across "
          "datasets): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()))


def _check_widths(reader: rlds.RldsReader, wspec: windows.WindowSpec) -> None:
  """A dataset wider than data.action_dim/proprio_dim fails here, not in a worker."""
  for what, have, room in (("action", reader.widths.action_dim, wspec.action_dim),
                           ("proprio", reader.widths.proprio_dim, wspec.proprio_dim)):
    if have > room:
      raise ValueError(f"dataset {reader.spec.name!r}: {what} has {have} dims, more than "
                       f"data.{what}_dim={room}; raise data.{what}_dim")


DATA_KINDS = ("windows", "text", "image_text")


def data_kind(data_cfg) -> str:
  """config.data.kind: "windows" (robot episodes, this module; the default), "text"
  (packed token sequences for the language model: ``wam_jax.data.text``) or "image_text"
  (image + question/answer tokens for the VLM: ``wam_jax.data.image_text``)."""
  kind = data_cfg.get("kind", "windows")
  if kind not in DATA_KINDS:
    raise ValueError(f"config.data.kind={kind!r}; known: {DATA_KINDS}")
  return kind


def prepared_data_module(data_cfg):
  """The module that reads a prepared (non-robot) data kind: ``load_meta``, ``make_pipeline``,
  ``abstract_batch_shapes``. None for robot windows."""
  kind = data_kind(data_cfg)
  if kind == "text":
    from wam_jax.data import text
    return text
  if kind == "image_text":
    from wam_jax.data import image_text
    return image_text
  return None


def derive_seeds(seed: int, offset: int, num_datasets: int,
                 process_index: int) -> tuple[np.ndarray, int]:
  """(shuffle seed per dataset [num_datasets], this process's augmentation seed).

  One stream of words from SeedSequence([seed, offset]): words 0..n-1 shuffle
  the n datasets (each process shuffles its own disjoint shard), word n + p
  seeds process p's augmentation, so hosts draw independent crops and
  jitter for their k-th samples. Process 0 keeps word n: a single-process run
  augments exactly as before processes were told apart.
  """
  words = np.random.SeedSequence([seed, offset]).generate_state(num_datasets + 1 + process_index)
  return words[:num_datasets], int(words[num_datasets + process_index])


def cache_shares(cache_bytes: int, steps: Sequence[int]) -> list[int]:
  """The decoded-episode cache budget split over a mixture's datasets in proportion to their steps
  (decoded size is frames): an even split left a small demo set with room it never used while the
  video pool beside it was re-decoded on every visit."""
  total = sum(steps)
  if total <= 0:
    return [cache_bytes // max(len(steps), 1)] * len(steps)
  return [cache_bytes * n // total for n in steps]


def make_pipeline(data_cfg, *, split: str, batch_size: int, seed: int, train: bool,
                  process_index: int = 0, process_count: int = 1,
                  normalizer: Optional[normalization.Normalizer] = None) -> Pipeline:
  """Batches of windows from the weighted mixture ``data.mixture``.

  Args:
    data_cfg: the ``config.data`` section (experiments/configs/common.py).
    split: e.g. data.train_split or data.val_split.
    batch_size: per-process batch size (drop_remainder).
    seed: run seed; shuffling, mixing and augmentation derive from it
      (augmentation also from process_index: ``derive_seeds``).
    train: augmentation on (if data.augment.enabled); off for eval.
    process_index, process_count: this host's disjoint shard of windows.
    normalizer: None computes/loads train-split stats; pass the train
      pipeline's normalizer to val pipelines.

  With ``data.kind`` "text" or "image_text" the batches come from that prepared
  data's module instead (``prepared_data_module``, same arguments).
  """
  prepared = prepared_data_module(data_cfg)
  if prepared is not None:
    return prepared.make_pipeline(data_cfg, split=split, batch_size=batch_size, seed=seed, train=train,
                              process_index=process_index, process_count=process_count)
  mixture = resolve_mixture(data_cfg)
  names = tuple(item.name for item in mixture)
  wspec = windows.WindowSpec.from_config(data_cfg)
  for cam in wspec.cameras:
    if cam not in batch_lib.CAMERAS:
      raise ValueError(f"data.cameras has unknown camera {cam!r}; known: {batch_lib.CAMERAS}")
  readers = [open_reader(data_cfg, name, split) for name in names]
  for reader in readers:
    _check_widths(reader, wspec)
  report = conventions_report(names)
  if report:
    logging.warning(report)
  if normalizer is None:
    normalizer = make_normalizer(data_cfg)
  cache_bytes = int(data_cfg.get("episode_cache_mb", 1024)) << 20
  shuffle_seeds, aug_seed = derive_seeds(seed, int(data_cfg.get("shuffle_seed_offset", 0)),
                                         len(names), process_index)
  parts, weights = [], []
  sources = [windows.WindowSource(reader, wspec, normalizer, j) for j, reader in enumerate(readers)]
  for source, share in zip(sources, cache_shares(cache_bytes, [len(s) for s in sources])):
    source.cache_bytes = share  # a window per step: the split follows the decoded frames
  for j, (item, source) in enumerate(zip(mixture, sources)):
    idx = grain.MapDataset.range(len(source))[process_index::process_count]
    if len(idx) == 0:
      raise ValueError(f"dataset {item.name!r} split {split!r}: no windows for process "
                       f"{process_index}/{process_count}")
    parts.append(idx.shuffle(seed=int(shuffle_seeds[j])).repeat().map(source))
    # Balanced weights are per step (the same on every process: the whole split's count).
    weights.append(item.weight * len(source) if item.balance else item.weight)
  ds = grain.MapDataset.mix(parts, weights) if len(parts) > 1 else parts[0]
  if train and data_cfg.augment.enabled:
    ds = ds.random_map(augment_lib.Augment(data_cfg.augment, wspec.cameras), seed=int(aug_seed))
  threads = int(data_cfg.get("read_threads", -1))
  if threads < 0:  # Auto: threads only pay off inside worker processes (BUILD_NOTES).
    threads = 2 if int(data_cfg.num_workers) > 0 else 0
  read = grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=2 * batch_size)
  ds = ds.to_iter_dataset(read).batch(batch_size, drop_remainder=True)
  if int(data_cfg.num_workers) > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_cfg.num_workers)))
  element_spec = {k: ArraySpec(shape, dtype)
                  for k, (shape, dtype) in wspec.element_spec(batch_size).items()}
  return Pipeline(iterator=iter(ds), normalizer=normalizer,
                  tokenizer=tokenizer_lib.for_spec(wspec),
                  dataset_names=names, element_spec=element_spec)
