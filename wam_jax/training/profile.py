"""Where a compiled step spends its time: XLA:CPU thunk timings attributed to model parts.

``jax.profiler`` records one event per executed thunk (a fusion, a dot, a copy,
...) named after its HLO instruction. The compiled module's text maps each
instruction to what it contains (dot / reduce / elementwise / layout) and to the
``op_name`` metadata JAX wrote when tracing: the flax module path and whether the
op belongs to the forward pass, the backward pass (``transpose(jvp(...))``) or
neither (the optimizer update, clipping, metrics). ``attribute`` joins the two.

Times are summed per thunk over the profiled steps and divided by the number of
steps; the thread pool runs independent thunks concurrently, so the parts can add
up to more than the step's wall time ("thread ms").
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = .*? ([a-z][\w-]*)\(")
_CALLS = re.compile(r"calls=%([\w.-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.-]+) ")

_DOT_OPS = {"dot", "convolution", "custom-call"}
_LAYOUT_OPS = {"copy", "transpose", "bitcast", "broadcast", "reshape", "slice", "concatenate", "pad",
               "dynamic-slice", "dynamic-update-slice", "gather", "scatter", "parameter", "constant", "tuple",
               "get-tuple-element", "iota"}


@dataclasses.dataclass(frozen=True)
class Instruction:
  opcode: str
  kind: str      # dot | reduce | elementwise | layout | control
  part: str      # attention | mlp | norm | encoder | head | loss/other | optimizer
  direction: str  # fwd | bwd | update


def parse_hlo(hlo_text: str) -> dict[str, Instruction]:
  """Instruction name -> what it is, from ``compiled.as_text()``."""
  ops_in = collections.defaultdict(set)  # computation -> opcodes it contains (fusions' bodies)
  op_name_in = {}  # computation -> an op_name inside it (a fusion may carry none itself)
  raw = {}
  computation = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      computation = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    ops_in[computation].add(opcode)
    calls = _CALLS.search(line)
    op_name = _OP_NAME.search(line)
    raw[name] = (opcode, calls.group(1) if calls else None, op_name.group(1) if op_name else "")
    if op_name and (computation not in op_name_in or "jvp(" in op_name.group(1)):  # prefer a model op's
      op_name_in[computation] = op_name.group(1)
  out = {}
  for name, (opcode, calls, op_name) in raw.items():
    contents = ops_in.get(calls, set()) | {opcode} if calls else {opcode}
    op_name = op_name or op_name_in.get(calls, "")
    out[name] = Instruction(opcode, _kind(opcode, contents), _part(op_name), _direction(op_name))
  return out


def _kind(opcode: str, contents: set) -> str:
  if opcode in ("while", "conditional", "call"):
    return "control"
  if contents & _DOT_OPS:
    return "dot"
  if contents & {"reduce", "reduce-window"}:
    return "reduce"
  if contents - {"fusion"} <= _LAYOUT_OPS:
    return "layout"
  return "elementwise"


def _direction(op_name: str) -> str:
  if "transpose(jvp(" in op_name:
    return "bwd"
  return "fwd" if "jvp(" in op_name else "update"


def _part(op_name: str) -> str:
  if "jvp(" not in op_name:
    return "optimizer/other"
  path = op_name.split("/")
  for segment in reversed(path):  # the innermost recognizable flax module names the part
    if segment.startswith(("ln_", "norm")):
      return "norm"
    if segment in ("attn", "attention", "cross_attn"):
      return "attention"
    if segment in ("mlp",):
      return "mlp"
    if segment.startswith(("encoder", "patch_embed", "frame_encoder", "autoencoder", "decoder")):
      return "encoder/decoder"
    if segment.startswith(("head", "video_head", "frame_head")):
      return "head"
  return "loss/other"


def trace_thunks(run_steps: Callable[[], None], log_dir: str | None = None) -> dict[str, float]:
  """Runs ``run_steps`` under the profiler; total microseconds per thunk name."""
  if log_dir is None:
    with tempfile.TemporaryDirectory(prefix="wam_profile_") as tmp:
      return trace_thunks(run_steps, tmp)
  import jax  # pylint: disable=g-import-not-at-top
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
  try:
    run_steps()
  finally:
    jax.profiler.stop_trace()
  paths = sorted(glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {log_dir}")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(("end: ", "$")):
      totals[e["name"]] += float(e.get("dur", 0.0))
  return dict(totals)


def attribute(thunk_us: dict[str, float], instructions: dict[str, Instruction], steps: int) -> dict:
  """Thread-ms per step by (part, direction), by kind, and the top thunks."""
  by_part, by_kind, top = collections.Counter(), collections.Counter(), []
  for name, us in thunk_us.items():
    instr = instructions.get(name)
    if instr is None:  # runtime events (executable, buffers), not HLO thunks
      continue
    ms = us / 1e3 / steps
    by_part[(instr.part, instr.direction)] += ms
    by_kind[instr.kind] += ms
    top.append((ms, name, instr))
  top.sort(reverse=True, key=lambda t: t[0])
  return {"by_part": dict(by_part), "by_kind": dict(by_kind),
          "total_ms": sum(by_kind.values()),
          "top": [{"thunk": n, "ms": ms, "kind": i.kind, "part": i.part, "dir": i.direction}
                  for ms, n, i in top[:15]]}


def markdown(result: dict, wall_ms: float) -> str:
  """Tables: parts x direction, kinds (thread ms per step and share)."""
  total = result["total_ms"]
  lines = [f"thread ms/step {total:.1f} (wall {wall_ms:.1f} ms/step)", "",
           "| part | fwd ms | bwd ms | update ms | share |", "|---|---|---|---|---|"]
  parts = sorted({p for p, _ in result["by_part"]}, key=lambda p: -sum(
      v for (q, _), v in result["by_part"].items() if q == p))
  for p in parts:
    vals = [result["by_part"].get((p, d), 0.0) for d in ("fwd", "bwd", "update")]
    lines.append(f"| {p} | {vals[0]:.1f} | {vals[1]:.1f} | {vals[2]:.1f} | {100 * sum(vals) / total:.0f}% |")
  lines += ["", "| kind | ms | share |", "|---|---|---|"]
  for k, v in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]):
    lines.append(f"| {k} | {v:.1f} | {100 * v / total:.0f}% |")
  return "\n".join(lines)


def preset_config(spec: str):
  """``file.py:preset`` under ``experiments/configs`` -> its ConfigDict with ``train.init_from``
  cleared: a step on a synthetic batch restores no earlier stage (the scripts' shared loader)."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, preset = spec.split(":")
  config = importlib.import_module(f"experiments.configs.{module.removesuffix('.py')}").get_config(preset)
  config.train.init_from = ""
  return config


@dataclasses.dataclass
class CompiledStep:
  """The trainer's own train step for a config, compiled for one device, on a synthetic batch."""
  compiled: object
  state: object
  batch: dict
  flops: float

  def run(self, n: int = 1) -> None:
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.batch)
    metrics["loss"].block_until_ready()


def compile_step(config, batch_size: int) -> CompiledStep:
  import jax  # pylint: disable=g-import-not-at-top
  from wam_jax.data.fake_batch import make_batch  # pylint: disable=g-import-not-at-top
  from wam_jax.training import metrics, sharding, trainer  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch_size
  num_datasets = len(config.data.mixture)
  spec = trainer.abstract_batch(config.data, batch_size)
  run = trainer.setup_training(config, sharding.make_mesh((1, 1, 1), jax.devices()[:1]), spec,
                               num_datasets=num_datasets)
  compiled = run.train_step.lower(run.abstract_state, spec).compile()
  batch = make_batch(config, batch_size, num_datasets=num_datasets)
  return CompiledStep(compiled, run.init_state(jax.random.key(0)),
                      trainer._device_batch(batch, run.batch_shardings),  # pylint: disable=protected-access
                      metrics.compiled_flops(compiled, 1))
