"""Matmul peak throughput: the denominator of MFU.

On TPU/GPU the peak is a datasheet number per chip. On CPU there is no
datasheet worth trusting (it depends on cores, AMX, and which XLA path a dot
takes), so it is measured once with square jitted dots and cached in
`~/.cache/wam_jax/matmul_peak.json`, keyed by CPU model, device count and jax
version. `WAM_JAX_CACHE_DIR` redirects the cache (tests use it).

Kinds: "float32" (f32 x f32 -> f32) and "bfloat16" (bf16 x bf16 -> f32, the
AMX path `wam_jax.models.matmul` uses).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp

CACHE_ENV = "WAM_JAX_CACHE_DIR"
CACHE_FILE = "matmul_peak.json"

# Dense bf16 peak per chip, GFLOP/s, by lower-cased device_kind substring.
# Order matters: more specific names first.
DATASHEET_BF16_GFLOPS = (
    ("v6e", 918e3),
    ("v6 lite", 918e3),
    ("v5p", 459e3),
    ("v5e", 197e3),
    ("v5 lite", 197e3),
    ("tpu v5", 459e3),  # a v5p reports device_kind "TPU v5" (after the lite rows on purpose)
    ("v4", 275e3),
    ("h100", 989e3),
    ("a100", 312e3),
)


def measure_matmul_peak(dtype: str = "float32",
                        sizes: Sequence[int] = (1024, 2048),
                        repeats: int = 5, budget_s: float = 3.0) -> float:
  """Best GFLOP/s of jitted square [n, n] x [n, n] dots on the default device.

  Args:
    dtype: "float32" for f32 dots; "bfloat16" for bf16 operands with f32
      accumulation (`preferred_element_type=float32`).
    sizes: the n values tried; the best over all of them is returned.
    repeats: timed runs per size, after one untimed warm-up (compile).
    budget_s: stop timing once this many seconds have passed (a busy machine
      would otherwise stretch the measurement); at least one run per size.

  Returns:
    Best observed GFLOP/s (2 n^3 flops per dot).
  """
  name = jnp.dtype(dtype).name
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  best, deadline = 0.0, time.perf_counter() + budget_s
  for n in sizes:
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(name)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(name)
    dot(a, b).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      dot(a, b).block_until_ready()
      best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
      if time.perf_counter() > deadline:
        break
  return best


def matmul_peak_gflops(kind: str = "float32",
                       cache_dir: str | os.PathLike | None = None) -> float:
  """Peak matmul GFLOP/s of one chip (TPU/GPU) or of the whole host (CPU).

  Args:
    kind: "float32" or "bfloat16" (operand dtype; accumulation is f32).
    cache_dir: where the CPU measurement is cached; default
      `$WAM_JAX_CACHE_DIR` or `~/.cache/wam_jax`.

  Returns:
    TPU/GPU: the datasheet dense bf16 peak per chip (for "float32" too: MFU
    is quoted against it). CPU: measured once per machine key, then cached.
  """
  device = jax.devices()[0]
  if device.platform != "cpu":
    return datasheet_peak_gflops(device.device_kind)

  cached = _read_json(_cache_path(cache_dir)).get(_cache_key(kind))
  if cached is None:
    return record_peak(kind, _measure_host_peak(kind), cache_dir)
  return float(cached)


def record_peak(kind: str, gflops: float, cache_dir: str | os.PathLike | None = None) -> float:
  """Offers a CPU measurement of the ``kind`` peak to the cache; returns the cached value.

  The cache keeps the highest measurement it has seen: a measurement taken while other jobs
  share the cores is low (session 4 cached 22 GF/s for an idle 139), and an idle one is the
  peak. The benchmarks (``scripts/bench_train.py``, ``bench_matmul.py``) offer theirs, so one run
  on an idle machine corrects a cache written on a busy one.
  """
  path = _cache_path(cache_dir)
  table = _read_json(path)
  key = _cache_key(kind)
  if gflops > table.get(key, 0.0):
    table[key] = float(gflops)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(path)  # Atomic: concurrent runs never see half a file.
  return float(table[key])


def _cache_key(kind: str) -> str:
  return f"{_cpu_model()}|jax={jax.__version__}|{kind}"


def datasheet_peak_gflops(device_kind: str) -> float:
  """Dense bf16 GFLOP/s per chip for a TPU/GPU ``device_kind`` (e.g. "TPU v5 lite")."""
  for key, gflops in DATASHEET_BF16_GFLOPS:
    if key in device_kind.lower():
      return gflops
  raise ValueError(f"no datasheet peak for device_kind {device_kind!r}")


def hardware_peak_flops(devices, kind: str = "float32") -> float:
  """The peak FLOP/s that MFU is quoted against, for a run on ``devices``.

  CPU: the measured matmul peak of the whole host (all cores), times the
  number of hosts; virtual host devices (--xla_force_host_platform_device_count)
  share the same cores, so they do not multiply it. TPU/GPU: per-chip datasheet
  peak times the number of chips.
  """
  devices = list(devices)
  if devices[0].platform == "cpu":
    hosts = len({d.process_index for d in devices})
    return matmul_peak_gflops(kind) * 1e9 * hosts
  return matmul_peak_gflops(kind) * 1e9 * len(devices)


def _measure_host_peak(kind: str) -> float:
  """The host's peak: in this process if it has one CPU device, else in a 1-device subprocess
  (with N virtual devices, one device's matmul only gets a share of the cores)."""
  if jax.local_device_count() == 1:
    return measure_matmul_peak(kind)
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "xla_force_host_platform_device_count" not in f)
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  code = f"from wam_jax.training import peak; print(peak.measure_matmul_peak({kind!r}))"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, timeout=300)
  return float(out.stdout.strip().splitlines()[-1])


def _cache_path(cache_dir) -> pathlib.Path:
  root = cache_dir or os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "wam_jax"
  return pathlib.Path(root) / CACHE_FILE


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def _cpu_model() -> str:
  """CPU model name plus whether AMX/AVX512-BF16 are present (same name, different speed)."""
  try:
    info = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor() or platform.machine()
  model, flags = platform.machine(), set()
  for line in info.splitlines():
    if line.startswith("model name"):
      model = line.split(":", 1)[1].strip()
    elif line.startswith("flags"):
      flags = set(line.split(":", 1)[1].split())
  if model and flags:
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({os.cpu_count()} cpus, {'+'.join(extras) or 'no-avx512'})"
  return model
