"""Loader throughput: windows/s from ArrayRecord (the Bridge sample, repeated).

  .venv/bin/python scripts/bench_data.py --data_dir /tmp/wam_bench \
      --workers 0,2 --augment false,true [--batches 60]

Converts the Bridge sample into --data_dir if absent (and reports the
conversion speed), then for each (workers, augment) pair builds a train
pipeline (batch 64, 64x64, h=2, H=8, F=1, cameras=primary), skips warm-up
batches (worker start-up, first decode of every episode) and times the rest.
"""

import itertools
import pathlib
import time

from absl import app
from absl import flags

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # run from a checkout too

from experiments.configs import common
from wam_jax.data import pipeline
from wam_jax.data import rlds

BRIDGE_SRC = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/bridge_debug/bridge_dataset/1.0.0"

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/wam_bench", "Where the converted Bridge sample lives.")
_SRC = flags.DEFINE_string("src", str(BRIDGE_SRC), "TFRecord Bridge sample.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker counts to try.")
_AUGMENT = flags.DEFINE_list("augment", ["false", "true"], "Augmentation settings to try.")
_BATCHES = flags.DEFINE_integer("batches", 60, "Timed batches per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches first.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_THREADS = flags.DEFINE_integer("read_threads", -1, "data.read_threads (-1: auto).")


def main(argv):
  del argv
  dst = pathlib.Path(_DATA_DIR.value) / "bridge_dataset" / "1.0.0"
  r = rlds.convert_to_array_record(_SRC.value, dst, overwrite=True)
  print(f"conversion: {r['episodes']} episodes, {r['bytes'] / 2**20:.1f} MiB, {r['seconds']:.3f} s "
        f"= {r['episodes'] / r['seconds']:.0f} episodes/s, {r['bytes'] / 2**20 / r['seconds']:.0f} MiB/s")
  cfg = common.data_config()
  cfg.update(data_dir=_DATA_DIR.value, mixture=(("bridge", 1.0),), cameras=("primary",),
             image_size=64, history=2, action_horizon=8, num_future=1,
             read_threads=_THREADS.value)
  for workers, aug in itertools.product(_WORKERS.value, _AUGMENT.value):
    cfg.num_workers = int(workers)
    cfg.augment.enabled = aug.lower() == "true"
    start = time.perf_counter()
    p = pipeline.make_pipeline(cfg, split="train", batch_size=_BATCH.value, seed=0, train=True)
    for _ in range(_WARMUP.value):
      next(p.iterator)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(p.iterator)
    dt = time.perf_counter() - start
    print(f"workers={workers} augment={cfg.augment.enabled}: "
          f"{_BATCHES.value * _BATCH.value / dt:,.0f} windows/s "
          f"({dt / _BATCHES.value * 1e3:.1f} ms/batch; start-up + {_WARMUP.value} warm-up batches {warm:.1f} s)")
    del p


if __name__ == "__main__":
  app.run(main)
