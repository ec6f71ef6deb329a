"""Computes (and caches) per-dataset action/proprio statistics, once per dataset.

  .venv/bin/python scripts/compute_stats.py --data_dir wam_data \
      --datasets bridge,metaworld_demos [--registry_files my.json] [--workers 4] \
      [--split train] [--out stats.json]

--datasets takes registry names and named mixtures (``oxe_standard`` expands to
its datasets). Each dataset is scanned in its own process (--workers at a
time; images are skipped), and the result lands in the same cache the pipeline
reads (next to the dataset, or under --cache_dir / $WAM_CACHE_DIR when the
dataset dir is read-only), keyed by a fingerprint of the split's content and
the entry's keys: a dataset already done is only read back. The episode-length
index is cached too. --out also writes the Normalizer JSON for all datasets.
"""

import concurrent.futures
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # run from a checkout too

from experiments.configs import common
from wam_jax.data import normalization
from wam_jax.data import pipeline
from wam_jax.data import registry

_DATA_DIR = flags.DEFINE_string("data_dir", "", "Root of the datasets ('' -> $WAM_DATA_DIR or ./wam_data).")
_DATASETS = flags.DEFINE_list("datasets", ["bridge"], "Registry names or named mixtures.")
_REGISTRY_FILES = flags.DEFINE_string("registry_files", "", "Extra registry files, comma-separated.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Cache dir for read-only datasets ('' -> default).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to scan.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Datasets scanned in parallel (processes).")
_MODE = flags.DEFINE_enum("mode", "quantile", list(normalization.MODES), "Normalizer mode for --out.")
_OUT = flags.DEFINE_string("out", "", "Optional path for the Normalizer JSON.")


def data_cfg(data_dir, registry_files, cache_dir, names):
  cfg = common.data_config()
  cfg.update(data_dir=data_dir, registry_files=registry_files, cache_dir=cache_dir,
             mixture=tuple((n, 1.0) for n in names))
  return cfg


def stats_of(args) -> tuple[str, dict, float, str, bool]:
  """(name, stats dict, seconds, cache path, was cached) of one dataset; runs in a worker."""
  data_dir, registry_files, cache_dir, name, split = args
  cfg = data_cfg(data_dir, registry_files, cache_dir, [name])
  pipeline.resolve_mixture(cfg)  # Registry files loaded in this process too.
  reader = pipeline.open_reader(cfg, name, split)
  path = normalization.stats_cache_path(reader.directory, split, reader.spec, cache_dir or None)
  cached = path.exists()
  start = time.perf_counter()
  stats = normalization.load_or_compute_stats(reader, cache_dir or None)
  reader.episode_lengths()  # The window index, cached for the loader.
  return name, stats.to_dict(), time.perf_counter() - start, str(path), cached


def main(argv):
  del argv
  try:
    cfg = data_cfg(_DATA_DIR.value, _REGISTRY_FILES.value, _CACHE_DIR.value, _DATASETS.value)
    names = [item.name for item in pipeline.resolve_mixture(cfg)]
  except ValueError as e:
    sys.exit(f"compute_stats: {e}")
  jobs = [(_DATA_DIR.value, _REGISTRY_FILES.value, _CACHE_DIR.value, n, _SPLIT.value) for n in names]
  start = time.perf_counter()
  stats = {}
  np.set_printoptions(precision=4, suppress=True, linewidth=120)
  pool = (concurrent.futures.ProcessPoolExecutor(_WORKERS.value) if _WORKERS.value > 1 and len(jobs) > 1
          else None)
  results = pool.map(stats_of, jobs) if pool else map(stats_of, jobs)
  try:
    for name, d, seconds, path, cached in results:
      s = stats[name] = normalization.DatasetStats.from_dict(d)
      print(f"{name}: {s.num_episodes} episodes, {s.num_steps} steps, "
            f"{'cached' if cached else 'computed'} in {seconds:.2f} s -> {path}")
      for what, a in (("action", s.action), ("proprio", s.proprio)):
        if a is not None:
          print(f"  {what} mean {a.mean}\n  {what} std  {a.std}\n  {what} q01  {a.q01}\n  {what} q99  {a.q99}")
  except ValueError as e:
    sys.exit(f"compute_stats: {e}")
  finally:
    if pool:
      pool.shutdown()
  print(f"{len(names)} datasets in {time.perf_counter() - start:.2f} s ({_WORKERS.value} workers)")
  if _OUT.value:
    kinds = {n: registry.get_spec(n).describe_kind() for n in names}
    out = normalization.Normalizer(_MODE.value, stats, action_kinds=kinds).to_dict()
    pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
