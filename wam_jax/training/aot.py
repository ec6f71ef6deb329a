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
* Collectives (the ICI, not in the roofline above): ``collective_s`` =
  sum over the step's collectives of the bytes a chip must receive under ring
  algorithms (``collective_traffic_bytes``: all-gather (g-1)/g x result,
  reduce-scatter (g-1) x result, all-reduce twice the all-gather's) divided by
  the chip's ICI bandwidth (``GENERATIONS``: datasheet, all ports, one way);
  ``collective_s_one_ring`` the same over 2 links (one bidirectional ring).
  ``step_time_overlapped_s = max(compute_s, hbm_s, collective_s)`` (collectives
  hidden) and ``step_time_serial_s = max(compute_s, hbm_s) +
  collective_s_one_ring`` (none hidden) bracket the step;
  ``mfu_range = compute_s / (serial, overlapped)``. Multislice DCN is not modelled.

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
  ici_gbps: float           # datasheet ICI bandwidth per chip, Gbit/s, one direction, all ports
  ici_ports: int            # ICI links per chip (4 on a 2D torus, 6 on a 3D torus)


# ICI per chip (Gbit/s, summed over the chip's ports, one direction), from Google's datasheets:
# * v5e 1600 Gbps, 4 ports (cloud.google.com/tpu/docs/v5e; /tpu/docs/v6e compares v5e and v6e);
# * v6e 3200 Gbps, 4 ports (/tpu/docs/v6e: "bidirectional ICI bandwidth per chip 800 GBps";
#   another revision of the same page's v5e/v6e table says 3584 Gbps: 3200 is the conservative one);
# * v5p 4800 Gbps, 6 ports (/tpu/docs/v5p: "Interchip Interconnect BW 4800 Gbps"; newer revision
#   "bidirectional ICI bandwidth per chip 1200 GBps" = 2 x 600 GB/s, the same figure);
# * v4 2400 Gbps, 6 ports: the v4 doc gives no per-chip figure; the TPU v4 paper (Jouppi et al.
#   2023, arXiv 2304.01433) has 6 links of 400 Gbit/s in each direction per chip.
# The per-port figure (ici_gbps / ici_ports) is what one link carries one way.
GENERATIONS = {
    "v4": Generation("v4", 3, 2, "megacore", 4096, 30.75, 1228.0, 2400.0, 6),
    "v5e": Generation("v5e", 2, 1, "default", 256, 15.75, 819.0, 1600.0, 4),
    "v5p": Generation("v5p", 3, 2, "megacore", 8960, 95.74, 2765.0, 4800.0, 6),
    "v6e": Generation("v6e", 2, 1, "default", 256, 31.25, 1640.0, 3200.0, 4),
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


def compile_for_topology(config, topology, num_datasets: int = 1, unrolled_costs: bool = False,
                         hlo_path: str = None, compiler_options: dict = None) -> dict:
  """Compiles ``config``'s train step for ``topology`` (name or Topology); returns the report.

  The mesh is ``config.mesh.shape`` over the topology's devices (one -1 fills).
  Config errors (mesh, batch divisibility) raise ValueError naming the field;
  an over-HBM config returns ``status: "does not fit"`` instead of raising.

  Loops: XLA's ``cost_analysis()`` counts a while-loop body once (scanned
  layers, grad accumulation, and the TPU compiler's windowed-einsum loops of
  FSDP matmuls). When the compiled step has loops: FLOPs come from the step
  lowered with nothing scanned (``unrolled_step_flops``, the trainer's count);
  HBM bytes are XLA's x ``hbm_loop_scale`` (``hlo_traffic_bytes`` weighted by
  trip counts over unweighted: an estimate); collectives are weighted by the
  trip counts read from the HLO. ``unrolled_costs``: also compile the unrolled
  step (scanned layers / grad accumulation only) and take bytes and
  collectives from it (memory stays the real, scanned step's).
  ``hlo_path``: write the compiled HLO text there. ``compiler_options``: XLA/libtpu
  options (e.g. {"xla_tpu_enable_windowed_einsum_for_all_gather": False}) on top of the
  config's ``train.compiler_options.tpu`` (the trainer's jit passes the merged set).
  """
  if compiler_options:
    config = config.copy_and_resolve_references()
    with config.unlocked():  # a flag-parsed config is locked against new keys
      config.train.compiler_options.tpu.update(dict(compiler_options))
  compiler_options = dict(config.train.compiler_options.tpu)
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

  report = _describe(config, topo, devices, mesh, hosts, split, compiler_options)
  batch_spec = trainer.abstract_batch(config.data, tc.batch_size)
  start = time.perf_counter()
  # Flax applies nn.with_logical_constraint only under jax's global mesh (jax.set_mesh); with jax
  # 0.10 the trainer's `with mesh:` no longer sets it, and every activation constraint is then
  # silently dropped: the LM's [B, N, V] logits were left to the propagation, which replicated
  # them over the batch (1.75 TiB of temporaries per chip for lm.py:1b on v6e-8).
  # (Only around tracing: under set_mesh, eager ops such as setup_training's jnp.zeros would try to
  # run on the topology's devices, which cannot execute.)
  run = trainer.setup_training(config, mesh, batch_spec, num_datasets)
  report["params"] = int(sum(math.prod(x.shape) for x in jax.tree.leaves(run.abstract_state.params)))
  with jax.set_mesh(mesh):
    lowered = run.train_step.lower(run.abstract_state, batch_spec)
  report["lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  try:
    compiled = lowered.compile()  # the trainer's jit carries train.compiler_options.tpu
  except Exception as e:  # jax raises JaxRuntimeError; only the HBM check is an answer.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report.update(status="does not fit", compile_s=time.perf_counter() - start, **_oom_numbers(str(e)))
    return _finish(report)
  report["compile_s"] = time.perf_counter() - start
  report["status"] = "fits"
  report.update(_memory(compiled.memory_analysis(), topo))
  hlo = compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(hlo)
  report["loop_trip_counts"] = while_trip_counts(hlo)
  flops, bytes_xla = _xla_costs(compiled)
  report["flops_per_device_xla"] = flops  # XLA's counts: every loop body once
  if unrolled_costs and run.unaccumulated_step is not None:
    start = time.perf_counter()
    try:
      with jax.set_mesh(mesh):
        state = run.abstract_state if run.flops_state is None else run.flops_state
        unrolled = run.unaccumulated_step.lower(state, batch_spec).compile()
    except Exception as e:  # unrolled (or unaccumulated) may need more HBM than the real step
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      report["unrolled_error"] = _oom_numbers(str(e))["error"]
    else:
      report["unrolled_compile_s"] = time.perf_counter() - start
      hlo = unrolled.as_text()
      flops, bytes_xla = _xla_costs(unrolled)
      report["unrolled_loop_trip_counts"] = while_trip_counts(hlo)
  report["bytes_accessed_per_device_xla"] = bytes_xla
  looped = any(n and n > 1 for n in while_trip_counts(hlo))
  report["hbm_loop_scale"] = (hlo_traffic_bytes(hlo) / max(hlo_traffic_bytes(hlo, weighted=False), 1.0)
                              if looped else 1.0)
  if looped or run.unaccumulated_step is not None:
    # Scanned layers, grad accumulation and the TPU compiler's own windowed-einsum loops (FSDP
    # collective matmuls) are counted once by XLA: FLOPs from the step lowered with nothing scanned.
    flops = unrolled_step_flops(config, batch_spec, num_datasets) / len(devices)
  report["costs_from"] = (("unrolled compile" if "unrolled_compile_s" in report else "compiled step")
                          + ("; FLOPs lowered unrolled, HBM bytes x loop scale" if looped else ""))
  report.update(_costs(flops, bytes_xla * report["hbm_loop_scale"], len(devices), topo))
  ops = collective_ops(hlo, len(devices))
  report["collectives"] = _sum_collectives(ops)
  report.update(_collective_costs(ops, report, len(devices), topo))
  return _finish(report)


def unrolled_step_flops(config, batch_spec, num_datasets: int = 1) -> float:
  """FLOPs of one train step, all devices, counted as the trainer counts them (``step_flops``: XLA's
  count of the global program lowered with nothing scanned). Lowered for one CPU device: a
  lowering for topology devices has no cost analysis, and the global count does not depend on
  the mesh. Partitioning overheads (recomputed or padded shards) are not in it."""
  cfg = config.copy_and_resolve_references()
  cfg.mesh.shape = (1, 1, 1)
  cpu_mesh = sharding.make_mesh(cfg.mesh.shape, jax.devices("cpu")[:1])
  run = trainer.setup_training(cfg, cpu_mesh, batch_spec, num_datasets)
  if run.unaccumulated_step is None:  # nothing scanned: the step itself, not partitioned
    return metrics_lib.lowered_flops(run.train_step.lower(run.abstract_state, batch_spec))
  return run.step_flops(None, batch_spec)


def _describe(config, topo, devices, mesh, hosts, split, compiler_options=None) -> dict:
  return {
      "model": config.model.name, "topology": topo.name, "topology_name": topo.topology_name,
      "num_slices": topo.num_slices, "device_kind": devices[0].device_kind,
      "chips": topo.num_chips, "devices": len(devices), "hosts": hosts,
      "mesh": dict(mesh.shape), "rules": config.mesh.rules_name,
      "batch_size": int(config.train.batch_size), "batch_per_device": config.train.batch_size // split,
      "grad_accum_steps": int(config.train.grad_accum_steps),
      "compute_dtype": config.train.compute_dtype,
      "remat": ", ".join(f"{'.'.join(path)}={value}" for path, value in trainer.model_fields(config.model, "remat")),
      "compiler_options": dict(compiler_options or {}),
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


def _xla_costs(compiled) -> tuple:
  """(FLOPs, bytes accessed) of one device's program, as XLA counts them (loop bodies once)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def _costs(flops, bytes_accessed, num_devices, topo) -> dict:
  devices_per_chip = num_devices / topo.num_chips
  peak = dict(peak_lib.DATASHEET_BF16_GFLOPS)[topo.generation] * 1e9 / devices_per_chip
  bandwidth = topo.spec.hbm_gbps * 1e9 / devices_per_chip
  compute_s, hbm_s = flops / peak, bytes_accessed / bandwidth
  bound = max(compute_s, hbm_s)
  return {
      "flops_per_device": flops, "flops_total": flops * num_devices,
      "bytes_accessed_per_device": bytes_accessed,
      "peak_tflops_per_chip": peak * devices_per_chip / 1e12,
      "hbm_gbps_per_chip": topo.spec.hbm_gbps,
      "compute_s": compute_s, "hbm_s": hbm_s, "step_time_lower_bound_s": bound,
      "bound_by": "compute" if compute_s >= hbm_s else "HBM bandwidth",
      "mfu_upper_bound": compute_s / bound if bound else 0.0,
  }


# ----------------------------------------------------------------------------
# Collectives: what the compiled HLO moves, and how long ICI takes for it.
# ----------------------------------------------------------------------------
_COLLECTIVE = re.compile(r"=(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                         r"(-start)?\(")
_SHAPE = re.compile(r"\b(pred|[bsuf]\d+|bf16)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|"
                    r"branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _shape_bytes(dtype: str, dims: str) -> int:
  bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
  return math.prod(int(d) for d in dims.split(",") if d) * bits // 8


def _computations(hlo_text: str) -> list:
  """[(name, is_entry, [instruction lines])] in the order the HLO text defines them."""
  comps = []
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{") and not line.startswith("HloModule"):
      head = line.split()
      entry = head[0] == "ENTRY"
      comps.append((head[1 if entry else 0].lstrip("%"), entry, []))
    elif comps and line.startswith(" "):
      comps[-1][2].append(line)
  return comps


def loop_multipliers(hlo_text: str) -> dict:
  """{computation name: times it runs per call of the entry}: a while body runs its trip count
  (``_trip_count``; 1 if unreadable), nested loops multiply, fusions/calls inherit their caller's."""
  comps = _computations(hlo_text)
  by_name = {name: lines for name, _, lines in comps}
  mult = {name: (1 if entry else 0) for name, entry, _ in comps}
  # XLA prints callees before callers (the entry last): walk callers first.
  for name, _, lines in reversed(comps):
    for line in lines:
      trip = _trip_count(line, by_name) if " while(" in line else None
      for key, ref in _CALLS.findall(line.split(", metadata=")[0]):
        factor = trip if (trip and key in ("body", "condition")) else 1
        for callee in re.findall(r"%?([\w.\-]+)", ref):
          if callee in mult:
            mult[callee] += mult[name] * factor
  return {k: (v or 1) for k, v in mult.items()}  # unreachable (or unparsed): once


def _trip_count(line: str, conditions: dict):
  """A while instruction's trip count: XLA's ``known_trip_count`` if recorded, else read from its
  condition computation: ``i < N`` against one s32/u32 constant (the form of jax's scan and of the
  TPU compiler's windowed-einsum loops; counter from 0). None if neither is found."""
  known = _TRIP_COUNT.search(line)
  if known:
    return int(known.group(1))
  cond = re.search(r"condition=%?([\w.\-]+)", line)
  lines = conditions.get(cond.group(1), []) if cond else []
  limits = [int(n) for l in lines for n in re.findall(r"[su]32\[\]\S*\s+constant\((\d+)\)", l)]
  if len(limits) == 1 and any("direction=LT" in l for l in lines):
    return limits[0]
  return None


# Instructions that move no HBM bytes of their own (or whose callee computations are counted).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional",
               "call", "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def _parse(line: str):
  """(name, result bytes, opcode, [operand names]) of one HLO instruction line, or None."""
  match = _INSTRUCTION.match(line.split(", metadata=")[0])
  if not match:
    return None
  inst, shape, opcode, rest = match.groups()
  return (inst, sum(_shape_bytes(*m) for m in _SHAPE.findall(shape)), opcode,
          re.findall(r"%([\w.\-]+)", rest.split("), ")[0]))


def _fusion_traffic(lines) -> tuple:
  """What a fused computation really touches: ({parameter index: bytes read}, bytes written).

  A parameter read only through dynamic-slice reads the slices (a scanned layer's weights out of
  the stacked [depth, ...] array); one that is the in-place buffer of a dynamic-update-slice is
  not read; a dynamic-update-slice root writes only its update. Absent entries: the full size.
  """
  insts = [p for p in map(_parse, lines) if p]
  sizes = {name: size for name, size, _, _ in insts}
  params = {}
  for line, parsed in zip(lines, map(_parse, lines)):
    if parsed and parsed[2] == "parameter":
      params[parsed[0]] = int(re.search(r"parameter\((\d+)\)", line).group(1))
  reads = {}
  for pname, index in params.items():
    uses = [(op, operands) for _, _, op, operands in insts if pname in operands]
    if uses and all(op == "dynamic-slice" and operands[0] == pname for op, operands in uses):
      reads[index] = sum(size for _, size, op, operands in insts if op == "dynamic-slice" and operands[0] == pname)
    elif uses and all(op == "dynamic-update-slice" and operands[0] == pname for op, operands in uses):
      reads[index] = 0
  written = None
  root = next((_parse(l) for l in lines if l.lstrip().startswith("ROOT")), None)
  if root:
    by_name = {name: (op, operands) for name, _, op, operands in insts}
    parts = root[3] if root[2] == "tuple" else [root[0]]
    written = 0
    for part in parts:
      op, operands = by_name.get(part, ("", []))
      written += sizes.get(operands[1], 0) if op == "dynamic-update-slice" else sizes.get(part, 0)
  return reads, written


def hlo_traffic_bytes(hlo_text: str, weighted: bool = True) -> float:
  """A rough HBM-traffic count of compiled HLO: operand + result bytes of every instruction of the
  computations that run as such (entry, while bodies and conditions, branches; fusion bodies and
  reducers are inside their caller), each x its loop multiplier if ``weighted``. Dynamic slices
  and in-place dynamic-update-slices (also inside fusions) count the slice, not the buffer.

  Only the ratio weighted / unweighted is used (to scale XLA's own "bytes accessed", which
  counts a loop body once): the absolute count is cruder than XLA's.
  """
  comps = _computations(hlo_text)
  by_name = {name: lines for name, _, lines in comps}
  mult = loop_multipliers(hlo_text) if weighted else {}
  inner = set()  # fusion bodies, reducers, async-wrapped computations: counted through their caller
  for _, _, lines in comps:
    for line in lines:
      for key, ref in _CALLS.findall(line.split(", metadata=")[0]):
        if key in ("calls", "to_apply"):
          inner.update(re.findall(r"%?([\w.\-]+)", ref))
  fusions = {}
  total = 0.0
  for name, _, lines in comps:
    if name in inner:
      continue
    sizes = {}
    for line in lines:
      parsed = _parse(line)
      if not parsed:
        continue
      inst, size, opcode, operands = parsed
      sizes[inst] = size
      if opcode in _NO_TRAFFIC or opcode.endswith("-done"):
        continue
      if opcode == "dynamic-slice":
        moved = 2 * size
      elif opcode == "dynamic-update-slice":
        moved = 2 * sizes.get(operands[1], 0) if len(operands) > 1 else size
      else:
        reads, written = {}, None
        callee = re.search(r"calls=%?([\w.\-]+)", line) if opcode == "fusion" else None
        if callee and callee.group(1) in by_name:
          if callee.group(1) not in fusions:
            fusions[callee.group(1)] = _fusion_traffic(by_name[callee.group(1)])
          reads, written = fusions[callee.group(1)]
        moved = (size if written is None else written) + sum(
            reads.get(i, sizes.get(o, 0)) for i, o in enumerate(operands))
      total += moved * mult.get(name, 1)
  return total


def while_trip_counts(hlo_text: str) -> list:
  """Trip counts of the while loops in compiled HLO text (scanned layers, grad accumulation)."""
  comps = {name: lines for name, _, lines in _computations(hlo_text)}
  return [_trip_count(line, comps) for lines in comps.values() for line in lines if " while(" in line]


def _group_size(line: str, num_devices: int) -> int:
  """Devices in one replica group of a collective: {{0,1,2,3},...}, the iota form [G,S]<=[N], or {} (all)."""
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if iota:
    return int(iota.group(2))
  listed = re.search(r"replica_groups=\{\{([\d,\s]*)\}", line)
  if listed:
    return len([d for d in listed.group(1).split(",") if d.strip()])
  return num_devices


def collective_ops(hlo_text: str, num_devices: int = 1) -> list:
  """Collective ops in compiled HLO text, one dict each: kind, bytes (result bytes per device per
  execution), group (devices in its replica group), runs (executions per step: loop trip counts).

  Ops are counted after XLA's combiners (a tuple all-reduce of many gradients
  is one op) and include those inside async collective fusions. An async
  ``-start`` counts its largest buffer once; ``-done`` is not counted.
  """
  mult = loop_multipliers(hlo_text)
  ops = []
  for name, _, lines in _computations(hlo_text) or [("", True, hlo_text.splitlines())]:
    for line in lines:
      text = line.split(", metadata=")[0]
      match = _COLLECTIVE.search(text)
      if not match:
        continue
      sizes = [_shape_bytes(*m) for m in _SHAPE.findall(match.group(1))]
      ops.append({"kind": match.group(2), "bytes": max(sizes, default=0) if match.group(3) else sum(sizes),
                  "group": _group_size(text, num_devices), "runs": mult.get(name, 1)})
  return ops


def _sum_collectives(ops) -> dict:
  out = {}
  for op in ops:
    entry = out.setdefault(op["kind"], {"count": 0, "bytes": 0})
    entry["count"] += op["runs"]
    entry["bytes"] += op["bytes"] * op["runs"]
  return dict(sorted(out.items()))


def count_collectives(hlo_text: str, num_devices: int = 1) -> dict:
  """{kind: {"count", "bytes"}} per step and device: ops inside while loops count once per iteration."""
  return _sum_collectives(collective_ops(hlo_text, num_devices))


def collective_traffic_bytes(kind: str, result_bytes: float, group: int) -> float:
  """Bytes one device must receive over ICI for one collective, ring algorithms over ``group`` devices.

  all-gather (result = group x shard): (g-1)/g x result; reduce-scatter (input = g x result):
  (g-1) x result; all-reduce = reduce-scatter + all-gather: 2 (g-1)/g x result; all-to-all:
  (g-1)/g x result; collective-permute: the result (one hop).
  """
  if group <= 1:
    return 0.0
  frac = (group - 1) / group
  return {"all-gather": frac, "reduce-scatter": group - 1, "all-reduce": 2 * frac, "all-to-all": frac,
          "collective-permute": 1.0}[kind] * result_bytes


def ici_bandwidth(generation: str, links: int = None) -> float:
  """Bytes/s one chip receives over ICI: all its ports (``links=None``) or ``links`` of them."""
  spec = GENERATIONS[generation]
  per_link = spec.ici_gbps / spec.ici_ports * 1e9 / 8
  return per_link * (spec.ici_ports if links is None else links)


def collective_seconds(ops, bandwidth: float) -> float:
  """ICI time of ``collective_ops`` at ``bandwidth`` bytes/s per chip, collectives one after another."""
  return sum(collective_traffic_bytes(op["kind"], op["bytes"], op["group"]) * op["runs"]
             for op in ops) / bandwidth


def step_time_bounds(compute_s: float, hbm_s: float, collective_s: float) -> tuple:
  """(overlapped, serial) step-time estimates: collectives hidden under compute/HBM, or after them."""
  return max(compute_s, hbm_s, collective_s), max(compute_s, hbm_s) + collective_s


def _collective_costs(ops, report, num_devices, topo) -> dict:
  """ICI time of the step's collectives and the MFU range it implies (single slice: DCN not modelled).

  ``collective_s``: every port of the chip receiving at once (the best a 2D/3D torus algorithm can
  do); ``collective_s_one_ring``: one bidirectional ring (2 links per chip), the simple 1D case.
  ``mfu_range`` = compute_s / (serial step with one ring) .. compute_s / (overlapped step, all ports).
  """
  devices_per_chip = num_devices / topo.num_chips
  fast = collective_seconds(ops, ici_bandwidth(topo.generation) / devices_per_chip)
  ring = collective_seconds(ops, ici_bandwidth(topo.generation, links=2) / devices_per_chip)
  compute_s, hbm_s = report["compute_s"], report["hbm_s"]
  overlapped, _ = step_time_bounds(compute_s, hbm_s, fast)
  _, serial = step_time_bounds(compute_s, hbm_s, ring)
  return {
      "ici_gbps_per_chip": topo.spec.ici_gbps, "ici_ports": topo.spec.ici_ports,
      "collective_s": fast, "collective_s_one_ring": ring,
      "step_time_overlapped_s": overlapped, "step_time_serial_s": serial,
      "mfu_range": (compute_s / serial if serial else 0.0, compute_s / overlapped if overlapped else 0.0),
  }


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
    ("ICI time: all ports / one ring", None, None),
    ("step time: overlapped / serial", None, None),
    ("MFU range (with collectives)", None, None),
    ("loops (trip counts)", None, None),
    ("costs from", "costs_from", "{}"),
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
  if label.startswith("ICI time") and "collective_s" in r:
    return f"{r['collective_s']:.4g} s / {r['collective_s_one_ring']:.4g} s"
  if label.startswith("step time:") and "step_time_serial_s" in r:
    return f"{r['step_time_overlapped_s']:.4g} s / {r['step_time_serial_s']:.4g} s"
  if label.startswith("MFU range") and "mfu_range" in r:
    return f"{r['mfu_range'][0]:.1%} - {r['mfu_range'][1]:.1%}"
  if label.startswith("loops"):
    return ", ".join(map(str, r.get("loop_trip_counts", []))) or ("none" if "loop_trip_counts" in r else "")
  if label.startswith("lower"):
    return f"{r.get('lower_s', 0):.1f} s / {r.get('compile_s', 0):.1f} s"
  if key is None or r.get(key) is None:
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
