"""Compile the real train step for a TPU slice on a machine without a TPU.

``compile_for_topology(config, "v5e-16")`` builds the trainer's own step
(``trainer.setup_training``) on the devices of a TPU *topology description*
(libtpu, ``jax.experimental.topologies``), lowers it from abstract shapes and
compiles it with the TPU compiler. Nothing runs and no chip is opened, so this
works on a CPU-only host with ``JAX_PLATFORMS=cpu``. It needs libtpu (the
optional ``tpu`` extra: ``pip install -e .[tpu]``).

The report (a JSON-able dict) gives, per chip: HBM (arguments, outputs, temp,
peak, from ``memory_analysis()``), FLOPs and HBM bytes of one step (from
``cost_analysis()``, XLA's count of one device's program), the collectives in
the compiled program, and a roofline projection:

* ``compute_s = flops_per_chip / peak_flops_per_chip`` (datasheet dense bf16);
* ``hbm_s = bytes_accessed_per_chip / hbm_bandwidth_per_chip``;
* ``step_time_lower_bound_s = max(compute_s, hbm_s)``: a LOWER BOUND on the
  step time. It ignores collectives, host input, kernel launch gaps and
  imperfect overlap; a real step is slower. ``compute_s`` alone is a strict
  bound; ``hbm_s`` trusts XLA's "bytes accessed" (operands + results of each
  fused op), an estimate of HBM traffic that can overcount buffers kept on chip.
* ``mfu_upper_bound = compute_s / step_time_lower_bound_s``. MFU is
  ``total XLA FLOPs per step / (step time x chips x bf16 peak per chip)``,
  the definition of ``wam_jax.training.metrics``; at the lower-bound step time
  it is an upper bound. XLA's FLOPs include the optimizer and any remat
  recomputation, so this is closer to hardware-FLOPs utilization than to the
  6*N*tokens model-FLOPs convention.

A config over the chip's HBM fails to compile with RESOURCE_EXHAUSTED: the
report then says ``status: "does not fit"`` with the compiler's numbers.

TPU names: topology names as libtpu knows them (``v5e:4x4``, ``v5p:4x4x4``,
``v4:2x2x4``, ``v6e:8x8``) or Cloud accelerator names (``v5e-16``,
``v5litepod-16``, ``v6e-64``: the number counts chips; ``v4-32``,
``v5p-128``: the number counts TensorCores, two per chip).
"""

import contextlib
import dataclasses
import math
import os
import re
import resource
import time

import jax

from wam_jax.training import metrics as metrics_lib
from wam_jax.training import peak as peak_lib
from wam_jax.training import sharding, trainer

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
  """What a TPU generation needs for names, topology and the roofline."""
  topology_prefix: str      # libtpu's topology name prefix
  ndim: int                 # 2 (v5e, v6e) or 3 (v4, v5p: 3D torus)
  cores_in_name: int        # the Cloud name counts chips (1) or TensorCores (2)
  chip_config: str          # "megacore": one JAX device per chip
  max_chips: int
  hbm_gib: float            # HBM the compiler plans with (measured, FACTS.md)
  hbm_gbps: float           # datasheet HBM bandwidth per chip, GB/s


GENERATIONS = {
    "v4": Generation("v4", 3, 2, "megacore", 4096, 30.75, 1228.0),
    "v5e": Generation("v5e", 2, 1, "default", 256, 15.75, 819.0),
    "v5p": Generation("v5p", 3, 2, "megacore", 8960, 95.74, 2765.0),
    "v6e": Generation("v6e", 2, 1, "default", 256, 31.25, 1640.0),
}
# Other spellings of the generation in Cloud and libtpu names.
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6lite": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice (or several) as ``get_topology_desc`` wants it."""
  name: str                 # as the user wrote it
  generation: str           # key of GENERATIONS
  dims: tuple               # chips per axis, e.g. (4, 4) or (4, 4, 4)
  num_slices: int = 1

  @property
  def spec(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def topology_name(self) -> str:
    return f"{self.spec.topology_prefix}:{'x'.join(map(str, self.dims))}"

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims) * self.num_slices

  @property
  def chips_per_host_bounds(self) -> tuple:
    """4 chips (2x2) per host; a 2x4 v5e/v6e slice is one 8-chip host."""
    dims = tuple(self.dims) + (1,) * (3 - len(self.dims))
    host = (2, 4, 1) if self.dims == (2, 4) else (2, 2, 1)
    return tuple(min(h, d) for h, d in zip(host, dims))


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """``v5e-16`` / ``v5litepod-16`` / ``v5p-128`` / ``v4-32`` / ``v6e-64`` / ``v5e:4x4`` -> Topology."""
  text = name.strip().lower()
  known = ", ".join(sorted(GENERATIONS))
  if ":" in text:  # a libtpu topology name: v5e:4x4, v5p:2x2x2
    prefix, _, shape = text.partition(":")
    gen = ALIASES.get(prefix, prefix)
    if gen not in GENERATIONS or not re.fullmatch(r"\d+(x\d+)*", shape):
      raise ValueError(f"topology {name!r}: expected <generation>:<AxB[xC]> with generation in {known}")
    dims = tuple(int(d) for d in shape.split("x"))
    if len(dims) != GENERATIONS[gen].ndim:
      raise ValueError(f"topology {name!r}: {gen} slices have {GENERATIONS[gen].ndim} dimensions")
    return Topology(name, gen, dims, num_slices)
  match = re.fullmatch(r"([a-z0-9]+?)(?:pod)?-(\d+)", text)
  gen = ALIASES.get(match.group(1), match.group(1)) if match else None
  if gen not in GENERATIONS:
    raise ValueError(f"topology {name!r}: not a TPU name like v5e-16, v5litepod-16, v5p-128, v4-32, "
                     f"v6e-64 or v5e:4x4 (generations: {known})")
  spec = GENERATIONS[gen]
  count = int(match.group(2))
  chips = count // spec.cores_in_name
  valid = chips * spec.cores_in_name == count and chips >= 1 and chips & (chips - 1) == 0
  if spec.ndim == 3:
    valid = valid and chips >= 4
  if not valid or chips > spec.max_chips:
    unit = "TensorCores (2 per chip)" if spec.cores_in_name == 2 else "chips"
    raise ValueError(f"topology {name!r}: the number counts {unit}; expected a power of two "
                     f"{'>= 8 ' if spec.ndim == 3 else ''}up to {spec.max_chips * spec.cores_in_name}")
  return Topology(name, gen, _slice_dims(chips, spec.ndim), num_slices)


def _slice_dims(chips: int, ndim: int) -> tuple:
  """The usual slice shape: 16 -> 4x4 (2D); 64 -> 4x4x4, 128 -> 4x4x8 (3D)."""
  dims = [2, 2, 1] if ndim == 3 else [1, 1]
  while math.prod(dims) < chips:
    i = max(j for j, d in enumerate(dims) if d == min(dims))  # the last of the smallest
    dims[i] *= 2
  return tuple(dims)


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


@contextlib.contextmanager
def _quiet_libtpu_env():
  """For the topology call only: no TPU-VM detection noise, and no libtpu lockfile.

  ``ALLOW_MULTIPLE_LIBTPU_LOAD`` lets this process load libtpu while another
  process holds ``/tmp/libtpu_lockfile`` (any jax process in a venv with
  libtpu that did not set JAX_PLATFORMS=cpu). AOT compilation never opens a chip.
  """
  values = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
            "TPU_WORKER_HOSTNAMES": "localhost"}
  saved = {k: os.environ.get(k) for k in values}
  for k, v in values.items():
    os.environ.setdefault(k, v)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)


def topology_devices(topo: Topology) -> list:
  """The (unaddressable) TPU devices of ``topo``: enough to build a mesh and compile."""
  if not libtpu_available():
    raise RuntimeError("TPU AOT compilation needs libtpu: pip install -e '.[tpu]' (or 'jax[tpu]' "
                       "matching the installed jax)")
  from jax.experimental import topologies
  with _quiet_libtpu_env():
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topo.topology_name, chip_config_name=topo.spec.chip_config,
        chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=topo.num_slices,
        wrap=(False, False, False))
  return list(desc.devices)


def compile_for_topology(config, topology, num_datasets: int = 1) -> dict:
  """Compiles ``config``'s train step for ``topology`` (name or Topology); returns the report.

  The mesh is ``config.mesh.shape`` over the topology's devices (one -1 fills).
  Config errors (mesh, batch divisibility) raise ValueError naming the field;
  an over-HBM config returns ``status: "does not fit"`` instead of raising.
  """
  topo = parse_topology(topology) if isinstance(topology, str) else topology
  devices = topology_devices(topo)
  tc = config.train
  trainer.check_config(config, len(devices))
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  rules = sharding.axis_rules(config.mesh.rules_name)
  hosts = len({d.process_index for d in devices})
  split = sharding.batch_divisor(mesh, rules)
  for ways, what in ((split, "the batch mesh axes"), (hosts, "the hosts")):
    if tc.batch_size % (ways * tc.grad_accum_steps):
      raise ValueError(f"config.train.batch_size={tc.batch_size} must divide by {what} ({ways}) "
                       f"x grad_accum_steps ({tc.grad_accum_steps}) on {topo.name}")

  report = _describe(config, topo, devices, mesh, hosts, split)
  batch_spec = trainer.abstract_batch(config.data, tc.batch_size)
  start = time.perf_counter()
  run = trainer.setup_training(config, mesh, batch_spec, num_datasets)
  report["params"] = int(sum(math.prod(x.shape) for x in jax.tree.leaves(run.abstract_state.params)))
  lowered = run.train_step.lower(run.abstract_state, batch_spec)
  report["lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # jax raises JaxRuntimeError; only the HBM check is an answer.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report.update(status="does not fit", compile_s=time.perf_counter() - start, **_oom_numbers(str(e)))
    return _finish(report)
  report["compile_s"] = time.perf_counter() - start
  report["status"] = "fits"
  report.update(_memory(compiled.memory_analysis(), topo))
  report.update(_costs(compiled, len(devices), topo))
  report["collectives"] = count_collectives(compiled.as_text())
  return _finish(report)


def _describe(config, topo, devices, mesh, hosts, split) -> dict:
  return {
      "model": config.model.name, "topology": topo.name, "topology_name": topo.topology_name,
      "num_slices": topo.num_slices, "device_kind": devices[0].device_kind,
      "chips": topo.num_chips, "devices": len(devices), "hosts": hosts,
      "mesh": dict(mesh.shape), "rules": config.mesh.rules_name,
      "batch_size": int(config.train.batch_size), "batch_per_device": config.train.batch_size // split,
      "grad_accum_steps": int(config.train.grad_accum_steps),
      "compute_dtype": config.train.compute_dtype,
      "hbm_capacity_gib": topo.spec.hbm_gib,
  }


def _memory(stats, topo) -> dict:
  """Per-device bytes of the compiled step (TPU tile padding included)."""
  out = {f"{k}_gib": getattr(stats, f"{k}_size_in_bytes") / GIB
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  # peak_memory_in_bytes is XLA's own peak; the sum is the classic estimate.
  out["peak_gib"] = getattr(stats, "peak_memory_in_bytes", 0) / GIB or (
      out["argument_gib"] + out["output_gib"] - out["alias_gib"] + out["temp_gib"])
  out["hbm_headroom_gib"] = topo.spec.hbm_gib - out["peak_gib"]
  return out


def _costs(compiled, num_devices, topo) -> dict:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = float(analysis.get("flops", 0.0))
  bytes_accessed = float(analysis.get("bytes accessed", 0.0))
  devices_per_chip = num_devices / topo.num_chips
  peak = dict(peak_lib.DATASHEET_BF16_GFLOPS)[topo.generation] * 1e9 / devices_per_chip
  bandwidth = topo.spec.hbm_gbps * 1e9 / devices_per_chip
  compute_s, hbm_s = flops / peak, bytes_accessed / bandwidth
  bound = max(compute_s, hbm_s)
  return {
      "flops_per_device": flops, "flops_total": metrics_lib.compiled_flops(compiled, num_devices),
      "bytes_accessed_per_device": bytes_accessed,
      "peak_tflops_per_chip": peak * devices_per_chip / 1e12,
      "hbm_gbps_per_chip": topo.spec.hbm_gbps,
      "compute_s": compute_s, "hbm_s": hbm_s, "step_time_lower_bound_s": bound,
      "bound_by": "compute" if compute_s >= hbm_s else "HBM bandwidth",
      "mfu_upper_bound": compute_s / bound if bound else 0.0,
  }


_COLLECTIVE = re.compile(r"=(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                         r"(-start)?\(")
_SHAPE = re.compile(r"\b(pred|[bsuf]\d+|bf16)\[([\d,]*)\]")


def _shape_bytes(dtype: str, dims: str) -> int:
  bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
  return math.prod(int(d) for d in dims.split(",") if d) * bits // 8


def count_collectives(hlo_text: str) -> dict:
  """Collective ops in compiled HLO text: {kind: {"count", "bytes"}} (result bytes per device).

  Ops are counted after XLA's combiners (a tuple all-reduce of many gradients
  is one op) and include those inside async collective fusions. An async
  ``-start`` counts its largest buffer once; ``-done`` is not counted.
  """
  out = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line.split(", metadata=")[0])
    if not match:
      continue
    sizes = [_shape_bytes(*m) for m in _SHAPE.findall(match.group(1))]
    entry = out.setdefault(match.group(2), {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += (max(sizes, default=0) if match.group(3) else sum(sizes))
  return dict(sorted(out.items()))


def _oom_numbers(message: str) -> dict:
  """The compiler's required/available HBM from a RESOURCE_EXHAUSTED message, plus its first lines.

  libtpu 0.0.42 says: "the total memory required for HLO temporaries (19.13G)
  exceeds available HBM (15.75G)"; older ones "Used 16.78G of 15.75G hbm".
  """
  out = {"error": "\n".join(message.strip().splitlines()[:6])}
  size = r"([\d.]+)([KMGT])?"
  match = (re.search(rf"required for (.+?) \({size}\) exceeds available HBM \({size}\)", message)
           or re.search(rf"()Used {size} of {size} hbm", message))
  if match:
    scale = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10, None: 2**-30}
    out["used_gib"] = float(match.group(2)) * scale[match.group(3)]
    out["available_gib"] = float(match.group(4)) * scale[match.group(5)]
    out["used_for"] = match.group(1) or "total"
  return out


def _finish(report: dict) -> dict:
  report["host_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return report


# ----------------------------------------------------------------------------
# A readable table of one or more reports (one column each).
# ----------------------------------------------------------------------------
def _bytes(gib: float) -> str:
  return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"


_ROWS = (
    ("status", "status", "{}"),
    ("topology", "topology_name", "{}"),
    ("device kind", "device_kind", "{}"),
    ("chips / devices / hosts", None, None),
    ("mesh (data, fsdp, tensor)", None, None),
    ("params", "params", "{:,}"),
    ("batch (global / per device)", None, None),
    ("HBM arguments / chip", "argument_gib", _bytes),
    ("HBM outputs / chip", "output_gib", _bytes),
    ("HBM temp / chip", "temp_gib", _bytes),
    ("HBM peak / chip", "peak_gib", _bytes),
    ("HBM needed (compiler) / chip", "used_gib", _bytes),
    ("  needed for", "used_for", "{}"),
    ("HBM capacity / chip", "hbm_capacity_gib", "{:.2f} GiB"),
    ("FLOPs / step / chip", "flops_per_device", "{:.4g}"),
    ("FLOPs / step, total", "flops_total", "{:.4g}"),
    ("HBM bytes / step / chip", "bytes_accessed_per_device", "{:.4g}"),
    ("collectives / chip (ops, result bytes)", None, None),
    ("compute time (FLOPs/peak)", "compute_s", "{:.4g} s"),
    ("HBM time (bytes/bandwidth)", "hbm_s", "{:.4g} s"),
    ("step time LOWER bound", "step_time_lower_bound_s", "{:.4g} s"),
    ("bound by", "bound_by", "{}"),
    ("MFU upper bound", "mfu_upper_bound", "{:.1%}"),
    ("lower / compile time", None, None),
    ("host RSS (process max)", "host_rss_gib", "{:.2f} GiB"),
)


def _cell(report: dict, label: str, key, fmt) -> str:
  r = report
  if label.startswith("chips"):
    return f"{r['chips']} / {r['devices']} / {r['hosts']}"
  if label.startswith("mesh"):
    return "x".join(str(v) for v in r["mesh"].values()) + f" ({r['rules']})"
  if label.startswith("batch"):
    return f"{r['batch_size']} / {r['batch_per_device']}"
  if label.startswith("collectives"):
    if "collectives" not in r:
      return ""
    return ", ".join(f"{k} {v['count']} ({_bytes(v['bytes'] / GIB)})"
                     for k, v in r["collectives"].items()) or "none"
  if label.startswith("lower"):
    return f"{r.get('lower_s', 0):.1f} s / {r.get('compile_s', 0):.1f} s"
  if r.get(key) is None:
    return ""
  return fmt(r[key]) if callable(fmt) else fmt.format(r[key])


def format_table(reports) -> str:
  """Markdown table: one row per quantity, one column per report."""
  heads = [f"{r['model']} @ {r['topology']}" for r in reports]
  lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(reports) + 1) + "|"]
  for label, key, fmt in _ROWS:
    cells = [_cell(r, label, key, fmt) for r in reports]
    if any(cells):
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
