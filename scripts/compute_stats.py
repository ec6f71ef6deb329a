"""Computes (and caches) per-dataset action/proprio statistics.

  .venv/bin/python scripts/compute_stats.py --data_dir wam_data \
      --datasets bridge,metaworld_demos [--split train] [--out stats.json]

Writes the same cache files the pipeline reads on first use (next to each
dataset, or under $WAM_CACHE_DIR when the dataset dir is read-only) and prints
a summary; --out also writes the Normalizer JSON for all datasets.
"""

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

_DATA_DIR = flags.DEFINE_string("data_dir", "", "Root of the datasets ('' -> $WAM_DATA_DIR or ./wam_data).")
_DATASETS = flags.DEFINE_list("datasets", ["bridge"], "Registry names.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to scan.")
_MODE = flags.DEFINE_enum("mode", "quantile", list(normalization.MODES), "Normalizer mode for --out.")
_OUT = flags.DEFINE_string("out", "", "Optional path for the Normalizer JSON.")


def main(argv):
  del argv
  cfg = common.data_config()
  cfg.data_dir = _DATA_DIR.value
  stats = {}
  np.set_printoptions(precision=4, suppress=True, linewidth=120)
  for name in _DATASETS.value:
    try:
      reader = pipeline.open_reader(cfg, name, _SPLIT.value)
      start = time.perf_counter()
      stats[name] = normalization.load_or_compute_stats(reader)
    except ValueError as e:
      sys.exit(f"compute_stats: {e}")
    s = stats[name]
    print(f"{name}: {s.num_episodes} episodes, {s.num_steps} steps, "
          f"{time.perf_counter() - start:.2f} s -> "
          f"{normalization.stats_cache_path(reader.directory, _SPLIT.value, reader.spec)}")
    for what, a in (("action", s.action), ("proprio", s.proprio)):
      if a is not None:
        print(f"  {what} mean {a.mean}\n  {what} std  {a.std}\n  {what} q01  {a.q01}\n  {what} q99  {a.q99}")
  if _OUT.value:
    out = normalization.Normalizer(_MODE.value, stats).to_dict()
    pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
