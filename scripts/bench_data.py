"""Loader throughput: windows/s from ArrayRecord (the Bridge sample, repeated).

  .venv/bin/python scripts/bench_data.py [--scratch DIR] \
      --workers 0,2 --augment false,true [--batches 60] [--datasets 1,5] [--episode_cache_mb 1024]

Converts the Bridge sample into a fresh directory of its own
(``<scratch>/wam_bench_XXXX``; --scratch defaults to the system temp dir) and
reports the conversion speed, then for each (datasets, workers, augment) builds a
train pipeline (batch 64, 64x64, h=2, H=8, F=1, cameras=primary), skips warm-up
batches (worker start-up, first decode of every episode) and times the rest,
then prints peak RSS (main process and largest worker). --batches 0 skips the
loader. --convert_replicas 100 also times the conversion of the sample
replicated to 100 shards per split (5,000 episodes) in-process and with Beam
(--convert_runners, --beam_options). --datasets 5 mixes 5
copies of the sample registered as 5 datasets (each decoded and cached on its
own; the cache budget is shared), to compare a mixture with one dataset.
It writes nothing outside that fresh directory and deletes it at the end: a
--scratch holding real datasets is never touched.
"""

import itertools
import json
import pathlib
import shlex
import shutil
import tempfile
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

_SCRATCH = flags.DEFINE_string("scratch", "", "Parent of the benchmark's own fresh directory "
                                "('' -> the system temp dir).")
_SRC = flags.DEFINE_string("src", str(BRIDGE_SRC), "TFRecord Bridge sample.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker counts to try.")
_AUGMENT = flags.DEFINE_list("augment", ["false", "true"], "Augmentation settings to try.")
_BATCHES = flags.DEFINE_integer("batches", 60, "Timed batches per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches first.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_THREADS = flags.DEFINE_integer("read_threads", -1, "data.read_threads (-1: auto).")
_DATASETS = flags.DEFINE_list("datasets", ["1"], "Mixture sizes to try: 1 = Bridge alone, n > 1 = n "
                              "copies registered as separate datasets (equal weights).")
_CACHE_MB = flags.DEFINE_integer("episode_cache_mb", 1024, "data.episode_cache_mb (per process/worker).")
_REPLICAS = flags.DEFINE_integer("convert_replicas", 0, "> 0: also time converting the sample with each "
                                 "split replicated into this many shards (100 -> 5,000 episodes).")
_RUNNERS = flags.DEFINE_list("convert_runners", ["inprocess", "direct"], "inprocess and/or Beam runners.")
_BEAM_OPTIONS = flags.DEFINE_string("beam_options", "", "Extra Beam options for --convert_runners.")


def prepare_data(src, scratch=None) -> tuple[pathlib.Path, dict]:
  """Converts the TFRecord Bridge sample ``src`` into a new directory
  ``<scratch or tempdir>/wam_bench_XXXX`` (a data_dir holding
  bridge_dataset/1.0.0). Returns (that data_dir, the conversion report)."""
  data_dir = pathlib.Path(tempfile.mkdtemp(prefix="wam_bench_", dir=scratch or None))
  try:
    report = rlds.convert_to_array_record(src, data_dir / "bridge_dataset" / "1.0.0")
  except BaseException:
    cleanup(data_dir)
    raise
  return data_dir, report


def cleanup(data_dir) -> None:
  shutil.rmtree(data_dir, ignore_errors=True)


def replicate_source(src, out: pathlib.Path, copies: int) -> int:
  """A TFRecord dataset at ``out`` whose every split has ``copies`` shards, each a byte
  copy of the source split's shard (TFRecord frames are self-contained, so copies
  stay valid). Returns the number of episodes."""
  src = pathlib.Path(src)
  info = rlds.read_dataset_info(src)
  out.mkdir(parents=True)
  episodes = 0
  for split in info["splits"]:
    (shard,) = rlds.shard_paths(src, split["name"])  # The Bridge sample: one shard per split.
    n = int(split["shardLengths"][0])
    split.update(shardLengths=[str(n)] * copies, numBytes=str(int(split.get("numBytes", 0)) * copies))
    for i in range(copies):
      name = f"{info['name']}-{split['name']}.tfrecord-{i:05d}-of-{copies:05d}"
      shutil.copyfile(shard, out / name)
    episodes += n * copies
  shutil.copyfile(src / "features.json", out / "features.json")
  (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
  return episodes


def bench_conversion(data_dir: pathlib.Path) -> None:
  """In-process vs Beam conversion of the sample replicated --convert_replicas times."""
  src = data_dir / "replicated_src" / "1.0.0"
  episodes = replicate_source(_SRC.value, src, _REPLICAS.value)
  for runner in _RUNNERS.value:
    dst = data_dir / f"replicated_{runner}" / "1.0.0"
    if runner == "inprocess":
      r = rlds.convert_to_array_record(src, dst)
    else:
      from wam_jax.data import convert_beam
      r = convert_beam.convert(src, dst, runner=runner, beam_args=shlex.split(_BEAM_OPTIONS.value))
    print(f"convert {runner}: {r['episodes']} episodes ({episodes} planned), {r['bytes'] / 2**20:.0f} MiB "
          f"in {r['seconds']:.2f} s = {r['episodes'] / r['seconds']:,.0f} episodes/s, "
          f"{r['bytes'] / 2**20 / r['seconds']:.0f} MiB/s")
    shutil.rmtree(dst.parent)


def main(argv):
  del argv
  data_dir, r = prepare_data(_SRC.value, _SCRATCH.value)
  try:
    print(f"conversion: {r['episodes']} episodes, {r['bytes'] / 2**20:.1f} MiB, {r['seconds']:.3f} s "
          f"= {r['episodes'] / r['seconds']:.0f} episodes/s, {r['bytes'] / 2**20 / r['seconds']:.0f} MiB/s")
    if _REPLICAS.value:
      bench_conversion(data_dir)
    if _BATCHES.value:
      run_benchmarks(data_dir)
  finally:
    cleanup(data_dir)


def mixture_of_copies(data_dir: pathlib.Path, n: int) -> tuple:
  """``n`` == 1: the Bridge entry. Else n copies of the converted sample under
  <data_dir>/bench_bridge_<i>, registered from a registry file written there,
  each decoded and cached on its own like n real datasets."""
  if n == 1:
    return (("bridge", 1.0),), ""
  src = data_dir / "bridge_dataset" / "1.0.0"
  entry = {"cameras": {"primary": "observation/image_0"}, "proprio": "observation/state",
           "action": "action", "action_normalize_mask": [True] * 6 + [False]}
  datasets = {}
  for i in range(n):
    name = f"bench_bridge_{i}"
    dst = data_dir / name / "1.0.0"
    if not dst.exists():
      shutil.copytree(src, dst, ignore=shutil.ignore_patterns("wam_*"))
    datasets[name] = dict(entry, directory=f"{name}/1.0.0")
  path = data_dir / "bench_registry.json"
  path.write_text(json.dumps({"datasets": datasets}))
  return tuple((name, 1.0) for name in datasets), str(path)


def peak_rss_mib() -> tuple[float, float]:
  """(this process's peak RSS, the largest peak RSS among its live children) in MiB."""
  def hwm(pid):
    try:
      for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
    except OSError:
      pass
    return 0.0
  children = [int(c) for t in pathlib.Path(f"/proc/{_os.getpid()}/task").iterdir()
              for c in (t / "children").read_text().split()]
  return hwm(_os.getpid()), max([hwm(c) for c in children] or [0.0])


def run_benchmarks(data_dir: pathlib.Path) -> None:
  cfg = common.data_config()
  cfg.update(data_dir=str(data_dir), mixture=(("bridge", 1.0),), cameras=("primary",),
             image_size=64, history=2, action_horizon=8, num_future=1,
             read_threads=_THREADS.value, cache_dir=str(data_dir / "_cache"),
             episode_cache_mb=_CACHE_MB.value)
  for n, workers, aug in itertools.product(_DATASETS.value, _WORKERS.value, _AUGMENT.value):
    cfg.mixture, cfg.registry_files = mixture_of_copies(data_dir, int(n))
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
    main_mib, worker_mib = peak_rss_mib()
    print(f"datasets={n} workers={workers} augment={cfg.augment.enabled}: "
          f"{_BATCHES.value * _BATCH.value / dt:,.0f} windows/s "
          f"({dt / _BATCHES.value * 1e3:.1f} ms/batch; start-up + {_WARMUP.value} warm-up batches {warm:.1f} s); "
          f"peak RSS main {main_mib:.0f} MiB, largest worker {worker_mib:.0f} MiB "
          f"(episode_cache_mb={cfg.episode_cache_mb})")
    del p


if __name__ == "__main__":
  app.run(main)
