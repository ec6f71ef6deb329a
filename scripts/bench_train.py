"""Train-step throughput and MFU of a config on CPU, inference latency, and the PyTorch yardstick.

  .venv/bin/python scripts/bench_train.py \
      --config=experiments/configs/vla_baseline.py:tiny --batch_size=64 --steps=20 \
      --compute_dtypes=float32,bfloat16 --torch=True --devices=1

* JAX: the trainer's own step (``trainer.setup_training``: forward + backward +
  clipping + AdamW), compiled ahead of time for a (devices, 1, 1) mesh, run on
  a synthetic batch (wam_jax/data/fake_batch.py). FLOPs/step from the compiled step's
  ``cost_analysis()`` (the trainer's MFU definition); MFU against the CPU fp32
  matmul peak (the cached one the trainer uses, and one re-measured now).
* Inference: jitted ``registry.predict_actions`` at batch 1, numpy inputs each
  call (as ``CheckpointPolicy`` does), median and p95 over --infer_calls.
* PyTorch (scripts/torch_vla.py, same architecture and parameter count):
  eager fp32, eager bf16 autocast, and torch.compile (--torch_compile).

The machine is shared: every case runs in --rounds interleaved rounds and the
best round's median is reported (a round is --steps timed steps); compare the
ratios printed. Load averages at start and end go into the JSON line.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/vla_baseline.py:tiny",
                                          "Config preset (file.py:preset).", lock_config=False)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size of the train step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per case and round.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per case before the first round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds over all cases; the best median is kept.")
_DTYPES = flags.DEFINE_list("compute_dtypes", ["float32", "bfloat16"], "config.train.compute_dtype values.")
_TORCH = flags.DEFINE_boolean("torch", True, "Also time the PyTorch replica (needs the torch extra).")
_TORCH_COMPILE = flags.DEFINE_list("torch_compile", ["float32", "bfloat16"],
                                   "torch.compile cases (dtypes); empty to skip.")
_TORCH_SDPA = flags.DEFINE_boolean("torch_sdpa", True, "PyTorch attention through scaled_dot_product_attention.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads; 0: the number of cores.")
_TORCH_FTZ = flags.DEFINE_boolean("torch_flush_denormal", True,
                                  "Flush denormals to zero in PyTorch, as XLA:CPU does.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Host CPU devices of the data-parallel mesh.")
_INFER_CALLS = flags.DEFINE_integer("infer_calls", 200, "Timed batch-1 predict_actions calls (0: skip).")
_PEAK_FLAG = flags.DEFINE_boolean("remeasure_peak", True, "Also measure the fp32/bf16 matmul peak now.")


def load_avg() -> list:
  return [round(x, 2) for x in os.getloadavg()]


def percentile(xs, q):
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


# ----------------------------------------------------------------------------
# Cases: each has .step() (one timed unit of work, synchronous) and a label.
# ----------------------------------------------------------------------------
class JaxTrainCase:
  """The trainer's compiled step on a fixed synthetic batch; the state is donated and carried."""

  def __init__(self, config, dtype, batch_np, devices):
    import jax
    from wam_jax.training import metrics, sharding, trainer
    config = config.copy_and_resolve_references()
    config.train.compute_dtype = dtype
    config.train.batch_size = _BATCH.value
    mesh = sharding.make_mesh((-1, 1, 1), devices)
    spec = trainer.abstract_batch(config.data, _BATCH.value)
    self.run = trainer.setup_training(config, mesh, spec, num_datasets=1)
    start = time.perf_counter()
    self.compiled = self.run.train_step.lower(self.run.abstract_state, spec).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = metrics.compiled_flops(self.compiled, len(devices))
    self.state = self.run.init_state(jax.random.key(0))
    self.batch = trainer._device_batch(batch_np, self.run.batch_shardings)
    self.params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.label = f"jax {dtype}"

  def step(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    metrics["loss"].block_until_ready()


class TorchTrainCase:
  def __init__(self, model, config, batch_t, dtype, compiled: bool):
    import torch
    import torch_vla
    self.model = model
    opt = torch_vla.make_optimizer(model, config.train)
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    loss_fn = torch.compile(model) if compiled else model
    self._step = torch_vla.make_train_step(model, opt, config.train.grad_clip_norm, autocast, loss_fn)
    self.batch = batch_t
    self.label = f"torch {'compile' if compiled else 'eager'} {dtype}"
    self.compile_s = 0.0
    if compiled:  # the first call compiles forward and backward graphs
      start = time.perf_counter()
      self.step()
      self.compile_s = time.perf_counter() - start

  def step(self):
    self._step(self.batch).item()


def time_rounds(cases, steps, rounds, warmup):
  """{label: [per-round median ms]}, all step times (ms) per label."""
  for case in cases:
    for _ in range(warmup):
      case.step()
  medians = {c.label: [] for c in cases}
  every = {c.label: [] for c in cases}
  for r in range(rounds):
    for case in cases:
      times = []
      for _ in range(steps):
        start = time.perf_counter()
        case.step()
        times.append(1e3 * (time.perf_counter() - start))
      medians[case.label].append(statistics.median(times))
      every[case.label] += times
    print(f"  round {r + 1}/{rounds} done, load {load_avg()}: "
          + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in medians.items()), flush=True)
  return medians, every


# ----------------------------------------------------------------------------
# Inference latency
# ----------------------------------------------------------------------------
def jax_inference(config, dtype, batch_np, calls):
  import jax
  import numpy as np
  from wam_jax.models import registry
  from wam_jax.training import sharding, trainer
  config = config.copy_and_resolve_references()
  config.train.compute_dtype = dtype
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  run = trainer.setup_training(config, mesh, trainer.abstract_batch(config.data, 1), num_datasets=1)
  params = run.init_state(jax.random.key(0)).params
  predict = jax.jit(lambda p, b, r: registry.predict_actions(run.model, p, b, r))
  rng = jax.random.key(1)
  batch = {k: v[:1] for k, v in batch_np.items()}
  for _ in range(10):
    np.asarray(predict(params, batch, rng))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    np.asarray(predict(params, batch, rng))   # numpy in, numpy out: transfers included
    times.append(1e3 * (time.perf_counter() - start))
  return times


def torch_inference(model, batch_t, calls, autocast=None):
  import torch
  batch = {k: v[:1] for k, v in batch_t.items()}
  model.eval()

  def call():
    if autocast is None:
      return model.predict_actions(batch).numpy()
    with torch.autocast("cpu", dtype=autocast):
      return model.predict_actions(batch).float().numpy()

  for _ in range(10):
    call()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append(1e3 * (time.perf_counter() - start))
  model.train()
  return times


# ----------------------------------------------------------------------------
def main(argv):
  del argv
  if _DEVICES.value > 1:  # before the first jax call initializes the backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_DEVICES.value}").strip()
  import jax
  from wam_jax.data.fake_batch import make_batch
  from wam_jax.training import peak

  config = _CONFIG.value
  result = {"argv": sys.argv[1:], "batch_size": _BATCH.value, "devices": _DEVICES.value,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
            "load_start": load_avg(), "cores": os.cpu_count()}
  devices = jax.devices()[:_DEVICES.value]
  batch_np = make_batch(config, _BATCH.value, seed=0)

  peak_cached = peak.matmul_peak_gflops("float32")
  result["peak_gflops"] = {"float32_cached": round(peak_cached, 1)}
  if _PEAK_FLAG.value:
    result["peak_gflops"]["float32_now"] = round(peak.measure_matmul_peak("float32"), 1)
    result["peak_gflops"]["bfloat16_now"] = round(peak.measure_matmul_peak("bfloat16"), 1)
    for kind in ("float32", "bfloat16"):  # the cache keeps the best it has seen (an idle machine's)
      peak.record_peak(kind, result["peak_gflops"][f"{kind}_now"])
  print(f"matmul peak GF/s: {result['peak_gflops']} (load {load_avg()})", flush=True)

  cases = []
  for dtype in _DTYPES.value:
    case = JaxTrainCase(config, dtype, batch_np, devices)
    print(f"{case.label}: compiled in {case.compile_s:.1f}s, {case.flops / 1e9:.2f} GFLOPs/step, "
          f"{case.params:,} params", flush=True)
    cases.append(case)

  torch_model = None
  if _TORCH.value:
    try:
      import torch
    except ImportError:
      print("torch not installed (pip install -e '.[torch]'): skipping the PyTorch yardstick")
    else:
      sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
      import torch_vla
      torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
      torch.set_flush_denormal(_TORCH_FTZ.value)
      torch.manual_seed(0)
      batch_t = torch_vla.to_torch(batch_np)
      torch_model = torch_vla.TorchVLA(config, num_datasets=1, sdpa=_TORCH_SDPA.value)
      n_torch = torch_vla.num_params(torch_model)
      counter_model = torch_vla.TorchVLA(config, num_datasets=1, sdpa=False)  # counts attention too
      result["torch_params"] = n_torch
      result["torch_matmul_flops"] = torch_vla.train_step_flops(counter_model, batch_t)
      del counter_model
      if cases and n_torch != cases[0].params:
        raise SystemExit(f"parameter counts differ: jax {cases[0].params:,} torch {n_torch:,}")
      print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {n_torch:,} params (match), "
            f"{result['torch_matmul_flops'] / 1e9:.2f} matmul GFLOPs/step (FlopCounterMode)", flush=True)
      for dtype in ("float32", "bfloat16"):
        cases.append(TorchTrainCase(torch_vla.TorchVLA(config, sdpa=_TORCH_SDPA.value), config, batch_t,
                                    dtype, compiled=False))
      for dtype in _TORCH_COMPILE.value:
        try:
          case = TorchTrainCase(torch_vla.TorchVLA(config, sdpa=_TORCH_SDPA.value), config, batch_t,
                                dtype, compiled=True)
        except Exception as e:  # noqa: BLE001  a yardstick, not a requirement
          print(f"torch.compile {dtype} failed: {type(e).__name__}: {e}"[:300])
          continue
        print(f"{case.label}: compiled in {case.compile_s:.1f}s", flush=True)
        cases.append(case)

  print(f"timing {len(cases)} cases x {_ROUNDS.value} rounds x {_STEPS.value} steps, batch {_BATCH.value}, "
        f"load {load_avg()}", flush=True)
  medians, every = time_rounds(cases, _STEPS.value, _ROUNDS.value, _WARMUP.value)

  jax_flops = cases[0].flops if cases and isinstance(cases[0], JaxTrainCase) else 0.0
  rows, ref = {}, {}
  for case in cases:
    ms = min(medians[case.label])
    flops = getattr(case, "flops", jax_flops)  # torch: the JAX count of the same model
    gfs = flops / ms / 1e6
    row = {"ms": round(ms, 1), "ms_all_median": round(statistics.median(every[case.label]), 1),
           "round_medians": [round(x, 1) for x in medians[case.label]],
           "examples_per_s": round(1e3 * _BATCH.value / ms, 1), "gflops_per_step": round(flops / 1e9, 2),
           "gflops_per_s": round(gfs, 1), "mfu_cached_peak": round(gfs / peak_cached, 3),
           "compile_s": round(case.compile_s, 1)}
    if "float32_now" in result["peak_gflops"]:
      row["mfu_peak_now"] = round(gfs / result["peak_gflops"]["float32_now"], 3)
    rows[case.label] = row
    ref.setdefault(case.label.split()[0], ms)
  for label, row in rows.items():
    if label.startswith("jax") and "torch eager float32" in rows:
      row["vs_torch_eager_fp32"] = round(row["ms"] / rows["torch eager float32"]["ms"], 2)
      best_torch = min(r["ms"] for k, r in rows.items() if k.startswith("torch"))
      row["vs_best_torch"] = round(row["ms"] / best_torch, 2)
  result["train"] = rows

  if _INFER_CALLS.value:
    result["inference"] = {}
    for dtype in _DTYPES.value:
      t = jax_inference(config, dtype, batch_np, _INFER_CALLS.value)
      result["inference"][f"jax {dtype}"] = {"median_ms": round(statistics.median(t), 2),
                                             "p95_ms": round(percentile(t, 95), 2)}
    if torch_model is not None:
      t = torch_inference(torch_model, batch_t, _INFER_CALLS.value)
      result["inference"]["torch eager float32"] = {"median_ms": round(statistics.median(t), 2),
                                                    "p95_ms": round(percentile(t, 95), 2)}
  result["load_end"] = load_avg()

  print(f"\nTrain step, batch {_BATCH.value}, {_DEVICES.value} device(s); best of {_ROUNDS.value} round medians "
        f"({_STEPS.value} steps each); peak fp32 cached {peak_cached:.0f} GF/s"
        + (f", now {result['peak_gflops']['float32_now']:.0f}" if "float32_now" in result["peak_gflops"] else ""))
  print(f"{'case':<24}{'ms/step':>9}{'ex/s':>8}{'GF/step':>9}{'GF/s':>8}{'MFU':>7}{'MFU now':>9}"
        f"{'/torch32':>9}{'compile s':>11}")
  for label, r in rows.items():
    print(f"{label:<24}{r['ms']:>9.1f}{r['examples_per_s']:>8.0f}{r['gflops_per_step']:>9.2f}"
          f"{r['gflops_per_s']:>8.0f}{100 * r['mfu_cached_peak']:>6.1f}%"
          f"{100 * r.get('mfu_peak_now', float('nan')):>8.1f}%"
          f"{rows[label]['ms'] / rows['torch eager float32']['ms'] if 'torch eager float32' in rows else float('nan'):>9.2f}"
          f"{r['compile_s']:>11.1f}")
  for label, r in result.get("inference", {}).items():
    print(f"inference batch 1, {label:<22} median {r['median_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms")
  print(f"load average: start {result['load_start']}, end {result['load_end']}")
  print("JSON " + json.dumps(result))


if __name__ == "__main__":
  app.run(main)
