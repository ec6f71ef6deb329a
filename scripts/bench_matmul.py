"""CPU matmul paths, GF/s: f32, bf16->bf16 (slow), bf16->f32 (AMX), plus a Dense step.

  .venv/bin/python scripts/bench_matmul.py --sizes=1024,2048 --repeats=5

Timings are best-of-repeats after a warm-up; on a shared machine compare the
ratios printed, not the absolute numbers.
"""

import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # run from a checkout too

from wam_jax.models.matmul import make_dot_general
from wam_jax.training import peak

_SIZES = flags.DEFINE_list("sizes", ["1024", "2048"], "Square matmul sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per case (best kept).")
_DENSE = flags.DEFINE_list("dense", ["8192", "512", "2048"],
                           "Dense micro-benchmark [M, K] x [K, N] as M,K,N.")


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_table(sizes, repeats):
  paths = {
      "f32": (jnp.float32, None),
      "bf16->bf16": (jnp.bfloat16, None),
      "bf16->f32": (jnp.bfloat16, jnp.float32),
  }
  print(f"{'n':>6} " + " ".join(f"{p:>12}" for p in paths) + "   (GF/s)  amx/f32")
  best = {"float32": 0.0, "bfloat16": 0.0}
  for n in sizes:
    row = {}
    for name, (dtype, out) in paths.items():
      a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
      b = jax.random.normal(jax.random.key(1), (n, n)).astype(dtype)
      dot = jax.jit(lambda a, b, out=out: jnp.dot(a, b, preferred_element_type=out))
      row[name] = 2 * n**3 / best_seconds(dot, a, b, repeats=repeats) / 1e9
    print(f"{n:>6} " + " ".join(f"{v:>12.0f}" for v in row.values())
          + f"   {row['bf16->f32'] / row['f32']:12.2f}x")
    best = {"float32": max(best["float32"], row["f32"]), "bfloat16": max(best["bfloat16"], row["bf16->f32"])}
  # The MFU denominator's cache keeps the best measurement it has seen (wam_jax.training.peak).
  cached = {kind: round(peak.record_peak(kind, gflops)) for kind, gflops in best.items()}
  print(f"cached matmul peak (the best seen on this machine), GF/s: {cached}")


def dense_step(m, k, n, repeats):
  """Forward + backward of one Dense layer (loss = sum of squares)."""
  x = jax.random.normal(jax.random.key(0), (m, k))
  times = {}
  for compute in ("float32", "bfloat16"):
    layer = nn.Dense(n, dot_general=make_dot_general(compute))
    params = layer.init(jax.random.key(1), x[:1])

    def loss(params, x, layer=layer):
      return jnp.sum(jnp.square(layer.apply(params, x)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    times[compute] = best_seconds(step, params, x, repeats=repeats)
  flops = 3 * 2 * m * k * n
  for compute, t in times.items():
    print(f"Dense [{m},{k}]x[{k},{n}] fwd+bwd {compute:>9}: {t * 1e3:7.1f} ms"
          f"  {flops / t / 1e9:6.0f} GF/s")
  print(f"speed-up bf16 custom_vjp / f32: {times['float32'] / times['bfloat16']:.2f}x")


def main(argv):
  del argv
  print(f"jax {jax.__version__}, devices {jax.devices()}")
  matmul_table([int(s) for s in _SIZES.value], _REPEATS.value)
  m, k, n = (int(s) for s in _DENSE.value)
  dense_step(m, k, n, _REPEATS.value)


if __name__ == "__main__":
  app.run(main)
