"""Device mesh and logical-axis rules: parallelism is a table, not code.

Model code names parameter and activation axes logically (``embed``, ``mlp``,
``heads``, ``batch``...). A rule table maps each logical name to mesh axes of
the ``(data, fsdp, tensor)`` mesh. Switching strategy = choosing another table.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. First match wins (flax semantics).
RULES = {
    # FSDP + tensor parallelism: parameters split over fsdp on `embed` and over
    # tensor on the wide axes; the batch over data x fsdp.
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", None),
        ("patch", None),
        ("length", None),
        ("time", None),
        ("action", None),
        ("layers", None),  # the stacked axis of scanned layers (layers.Transformer(scan=True))
    ),
    # Pure data parallelism: parameters replicated.
    "data_parallel": (
        ("batch", ("data", "fsdp")),
        ("embed", None), ("mlp", None), ("heads", None), ("kv", None),
        ("vocab", None), ("patch", None), ("length", None), ("time", None), ("action", None),
        ("layers", None),
    ),
}


def axis_rules(name: str):
  if name not in RULES:
    raise ValueError(f"config.mesh.rules_name={name!r} is not a rule table; known: {sorted(RULES)}")
  return RULES[name]


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills a single -1 entry with the remaining devices; checks the product."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"config.mesh.shape={shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={shape}: at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh.shape={shape} does not divide {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape={shape} uses {math.prod(shape)} devices, have {num_devices}")
  return shape


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (linen needs them)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_shardings(boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly) LogicallyPartitioned leaves."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Leading axis over the mesh axes the rules give `batch`; the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def batch_shardings(batch_spec, mesh: Mesh, rules):
  return jax.tree.map(lambda x: batch_sharding(mesh, rules, len(x.shape)), batch_spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh, rules) -> int:
  """How many ways the batch axis is split: global batch sizes must divide by it."""
  axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return math.prod(mesh.shape[a] for a in axes)
