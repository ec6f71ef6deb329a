"""One transformer block's operations, JAX vs PyTorch, at a preset's shapes (issue 17, item 1).

  .venv/bin/python scripts/bench_ops.py --config=experiments/configs/vla_baseline.py:tiny --tokens=75

Where the whole-step ratio of ``bench_train.py`` comes from, kernel by kernel: every matmul of
one block's forward and backward (input and kernel gradients of the qkv, output and MLP
projections; the attention core's batched dots), and the elementwise/reduction ops (layer norm,
softmax, tanh GELU), each jitted alone in JAX (f32) and run eagerly in PyTorch (f32, the
bench's thread count), on the same arrays. Shapes: rows = batch x tokens, from the config's
width, heads and MLP size; ``--tokens`` is the preset's sequence length (the VLA tiny preset
has 75, the video WAM's pretrain_tiny 83).

Cases run in ``--rounds`` interleaved rounds (a round times every case ``--calls`` times) and
the best round median is kept, as in bench_train.py: on a shared machine read the ratios. The
last column is the block's per-step count of the op (x depth layers for the model), so
``count x ms`` estimates each op's share of a block.
"""

import json
import math
import os
import statistics
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/vla_baseline.py:tiny",
                                          "Config preset (file.py:preset): width, num_heads, mlp_dim.")
_TOKENS = flags.DEFINE_integer("tokens", 75, "Sequence length of the preset (VLA tiny 75, video WAM tiny 83).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_CALLS = flags.DEFINE_integer("calls", 20, "Timed calls per case and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the best round median is kept.")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads; 0: the number of cores.")
_BLOCKS = flags.DEFINE_boolean("blocks", True, "Also time a whole block and its parts, forward and "
                                "forward + backward (layers.TransformerBlock vs torch_vla.Block).")
_OUT = flags.DEFINE_string("out", "", "Also write the results as JSON here.")


def op_cases(batch: int, tokens: int, width: int, heads: int, mlp: int) -> list[dict]:
  """The ops of one pre-norm block's train step: name, einsum (matmuls) or kind, shapes, count.

  Matmul names: `fwd` y = x W, `dx` = dy W^T, `dW` = x^T dy. Attention: q, k, v [B*H, N, K].
  """
  rows, hd, bh = batch * tokens, width // heads, batch * heads
  mm = lambda name, eq, a, b, count=1: dict(name=name, eq=eq, a=a, b=b, count=count)
  cases = []
  for proj, (d_in, d_out) in {"qkv": (width, 3 * width), "out": (width, width),
                              "mlp up": (width, mlp), "mlp down": (mlp, width)}.items():
    cases += [mm(f"{proj} fwd", "mk,kn->mn", (rows, d_in), (d_in, d_out)),
              mm(f"{proj} dx", "mn,kn->mk", (rows, d_out), (d_in, d_out)),
              mm(f"{proj} dW", "mk,mn->kn", (rows, d_in), (rows, d_out))]
  n = tokens
  # The attention core's six batched dots (layers.attend and its hand-written backward) take three
  # forms: s = q k^T and dp = do v^T; o = p v and dq = ds k; dv = p^T do and dk = ds^T q.
  cases += [mm("attn q k^T, do v^T", "bqd,bkd->bqk", (bh, n, hd), (bh, n, hd), 2),
            mm("attn p v, ds k", "bqk,bkd->bqd", (bh, n, n), (bh, n, hd), 2),
            mm("attn p^T do, ds^T q", "bqk,bqd->bkd", (bh, n, n), (bh, n, hd), 2)]
  cases += [dict(name="layer norm fwd", kind="layer_norm", a=(rows, width), count=2),
            dict(name="softmax fwd", kind="softmax", a=(bh, n, n), count=1),
            dict(name="tanh GELU fwd", kind="gelu", a=(rows, mlp), count=1)]
  return cases


def flops(case: dict) -> float:
  if "eq" not in case:
    return 0.0
  dims = {}
  for letters, shape in zip(case["eq"].split("->")[0].split(","), (case["a"], case["b"])):
    dims.update(zip(letters, shape))
  return 2.0 * math.prod(dims.values())


def jax_fn(case):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if "eq" in case:
    return jax.jit(lambda a, b: jnp.einsum(case["eq"], a, b))
  if case["kind"] == "layer_norm":
    def ln(x):
      mean = x.mean(-1, keepdims=True)
      return (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    return jax.jit(ln)
  if case["kind"] == "softmax":
    return jax.jit(lambda s: jax.nn.softmax(s, axis=-1))
  return jax.jit(lambda x: jax.nn.gelu(x, approximate=True))


def torch_fn(case):
  import torch  # pylint: disable=g-import-not-at-top
  if "eq" in case:
    return lambda a, b: torch.einsum(case["eq"], a, b)
  if case["kind"] == "layer_norm":
    return lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)
  if case["kind"] == "softmax":
    return lambda s: torch.softmax(s, dim=-1)
  return lambda x: torch.nn.functional.gelu(x, approximate="tanh")


def time_calls(fn, args, calls: int, sync) -> float:
  ts = []
  for _ in range(calls):
    start = time.perf_counter()
    sync(fn(*args))
    ts.append(time.perf_counter() - start)
  return statistics.median(ts)


def run(cases, calls: int, rounds: int, torch_threads: int, seed: int = 0) -> list[dict]:
  """Times every case in JAX and PyTorch, interleaved; returns rows with ms and ratios."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(torch_threads or os.cpu_count())
  rng = np.random.default_rng(seed)
  prepared = []
  for case in cases:
    arrays = [rng.standard_normal(case[key], dtype=np.float32) for key in ("a", "b") if key in case]
    j, t = jax_fn(case), torch_fn(case)
    j_args, t_args = [jax.numpy.asarray(a) for a in arrays], [torch.from_numpy(a) for a in arrays]
    out_j, out_t = np.asarray(j(*j_args)), t(*t_args).numpy()  # warm-up (compiles) and a check
    if not np.allclose(out_j, out_t, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(out_t).max()))):
      raise AssertionError(f"bench_ops: JAX and PyTorch disagree on {case['name']!r}")
    prepared.append((j, j_args, t, t_args))
  best = [[math.inf, math.inf] for _ in cases]
  for _ in range(rounds):
    for i, (j, j_args, t, t_args) in enumerate(prepared):
      best[i][0] = min(best[i][0], time_calls(j, j_args, calls, jax.block_until_ready))
      best[i][1] = min(best[i][1], time_calls(t, t_args, calls, lambda x: x))
  rows = []
  for case, (jax_s, torch_s) in zip(cases, best):
    fl = flops(case)
    rows.append(dict(name=case["name"], count=case["count"], jax_ms=jax_s * 1e3, torch_ms=torch_s * 1e3,
                     jax_over_torch=jax_s / torch_s,
                     jax_gflops_s=fl / jax_s / 1e9 if fl else None,
                     torch_gflops_s=fl / torch_s / 1e9 if fl else None))
  return rows


def block_cases(batch: int, tokens: int, width: int, heads: int, mlp: int, seed: int = 0):
  """(name, jax forward, jax forward + backward, torch forward, torch forward + backward) per part.

  The parts are the project's own modules (layers.TransformerBlock and its Attention, MlpBlock,
  layer norm, f32) and the PyTorch replica's (scripts/torch_vla.py); backward = the gradient of
  sum(out * r) with respect to the parameters and the input. Keys 40..49 are padding.
  """
  import sys  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import torch_vla  # pylint: disable=g-import-not-at-top
  from wam_jax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, tokens, width), dtype=np.float32)
  r = rng.standard_normal((batch, tokens, width), dtype=np.float32)
  mask = np.ones((batch, tokens), bool)
  mask[:, 40:50] = False
  xj, rj, mj = jnp.asarray(x), jnp.asarray(r), jnp.asarray(mask)
  xt, rt = torch.from_numpy(x), torch.from_numpy(r)
  allowed = torch.from_numpy(mask)[:, None, None, :]

  class TorchMlp(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.wi, self.wo = torch_vla._dense(width, mlp), torch_vla._dense(mlp, width)  # pylint: disable=protected-access

    def forward(self, h):
      return self.wo(torch.nn.functional.gelu(self.wi(h), approximate="tanh"))

  block, attn = torch_vla.Block(width, heads, mlp, True), torch_vla.Attention(width, heads, True)
  parts = {  # name: (jax module, apply kwargs, torch module, torch call)
      "block": (layers.TransformerBlock(heads, mlp), dict(mask_BN=mj, train=False), block, lambda h: block(h, allowed)),
      "attention": (layers.Attention(heads), dict(mask_BN=mj), attn, lambda h: attn(h, allowed)),
      "mlp": (layers.MlpBlock(mlp), dict(train=False), TorchMlp(), None),
      "layer norm": (layers.layer_norm(), {}, torch.nn.LayerNorm(width, eps=1e-6), None),
  }
  out = []
  for name, (module, kwargs, t_module, t_call) in parts.items():
    params = module.init(jax.random.key(seed), xj, **kwargs)
    apply = lambda p, h, module=module, kwargs=kwargs: module.apply(p, h, **kwargs)
    j_fwd = jax.jit(apply)
    j_bwd = jax.jit(jax.grad(lambda p, h, apply=apply: jnp.sum(apply(p, h) * rj), argnums=(0, 1)))
    t_call = t_call or t_module
    xg = xt.clone().requires_grad_(True)

    def t_fwd(t_call=t_call):
      with torch.no_grad():
        return t_call(xt)

    def t_bwd(t_call=t_call, t_module=t_module, xg=xg):
      t_module.zero_grad(set_to_none=True)
      xg.grad = None
      (t_call(xg) * rt).sum().backward()
      return xg.grad

    out.append((name, lambda p=params, f=j_fwd: f(p, xj), lambda p=params, f=j_bwd: f(p, xj), t_fwd, t_bwd))
  return out


def run_blocks(cases, calls: int, rounds: int) -> list[dict]:
  """Times each part's forward and forward + backward, interleaved; best round medians, ms."""
  import jax  # pylint: disable=g-import-not-at-top
  best = {name: [math.inf] * 4 for name, *_ in cases}
  for name, *fns in cases:  # warm-up: compile
    for i, fn in enumerate(fns):
      jax.block_until_ready(fn()) if i < 2 else fn()
  for _ in range(rounds):
    for name, *fns in cases:
      for i, fn in enumerate(fns):
        sync = jax.block_until_ready if i < 2 else (lambda x: x)
        best[name][i] = min(best[name][i], time_calls(fn, (), calls, sync) * 1e3)
  return [dict(part=name, jax_fwd_ms=v[0], jax_fwd_bwd_ms=v[1], torch_fwd_ms=v[2], torch_fwd_bwd_ms=v[3],
               jax_over_torch_fwd_bwd=v[1] / v[3], jax_bwd_over_torch_bwd=(v[1] - v[0]) / (v[3] - v[2]))
          for name, v in best.items()]


def blocks_markdown(rows) -> str:
  lines = ["| part | JAX fwd ms | JAX fwd+bwd ms | PyTorch fwd ms | PyTorch fwd+bwd ms | JAX / PyTorch (fwd+bwd) | "
           "backward alone |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['part']} | {r['jax_fwd_ms']:.2f} | {r['jax_fwd_bwd_ms']:.2f} | {r['torch_fwd_ms']:.2f} | "
                 f"{r['torch_fwd_bwd_ms']:.2f} | {r['jax_over_torch_fwd_bwd']:.2f} | {r['jax_bwd_over_torch_bwd']:.2f} |")
  parts = {r["part"]: r for r in rows}
  if {"block", "attention", "mlp", "layer norm"} <= set(parts):
    for key, label in (("jax_fwd_bwd_ms", "JAX"), ("torch_fwd_bwd_ms", "PyTorch")):
      summed = parts["attention"][key] + parts["mlp"][key] + 2 * parts["layer norm"][key]
      lines.append(f"\n{label}: block fwd+bwd {parts['block'][key]:.1f} ms vs its parts timed alone "
                   f"{summed:.1f} ms (block / parts {parts['block'][key] / summed:.2f})")
  return "\n".join(lines)


def markdown(rows) -> str:
  lines = ["| op | x/block | JAX ms | PyTorch ms | JAX / PyTorch | JAX GF/s | PyTorch GF/s |",
           "|---|---|---|---|---|---|---|"]
  gf = lambda v: f"{v:.0f}" if v else "-"
  for r in rows:
    lines.append(f"| {r['name']} | {r['count']} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | "
                 f"{r['jax_over_torch']:.2f} | {gf(r['jax_gflops_s'])} | {gf(r['torch_gflops_s'])} |")
  jax_total = sum(r["count"] * r["jax_ms"] for r in rows)
  torch_total = sum(r["count"] * r["torch_ms"] for r in rows)
  lines.append(f"| **sum x count (one block)** | | **{jax_total:.1f}** | **{torch_total:.1f}** | "
               f"**{jax_total / torch_total:.2f}** | | |")
  return "\n".join(lines)


def main(argv):
  del argv
  model = _CONFIG.value.model
  cases = op_cases(_BATCH.value, _TOKENS.value, model.width, model.num_heads, model.mlp_dim)
  load_start = [round(x, 2) for x in os.getloadavg()]
  rows = run(cases, _CALLS.value, _ROUNDS.value, _THREADS.value)
  print(f"batch {_BATCH.value}, tokens {_TOKENS.value}, width {model.width}, heads {model.num_heads}, "
        f"mlp {model.mlp_dim}; f32; best of {_ROUNDS.value} round medians ({_CALLS.value} calls); "
        f"load {load_start} -> {[round(x, 2) for x in os.getloadavg()]}")
  print(markdown(rows))
  block_rows = []
  if _BLOCKS.value:
    block_rows = run_blocks(block_cases(_BATCH.value, _TOKENS.value, model.width, model.num_heads, model.mlp_dim),
                            max(2, _CALLS.value // 2), _ROUNDS.value)
    print(blocks_markdown(block_rows))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(dict(batch_size=_BATCH.value, tokens=_TOKENS.value, width=model.width,
                     heads=model.num_heads, mlp_dim=model.mlp_dim, load_start=load_start,
                     load_end=[round(x, 2) for x in os.getloadavg()], rows=rows, blocks=block_rows), f, indent=1)


if __name__ == "__main__":
  app.run(main)
