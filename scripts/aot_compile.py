r"""Compile the train step for a TPU slice on this CPU: per-chip HBM, FLOPs, roofline.

  JAX_PLATFORMS=cpu python scripts/aot_compile.py \
      --config=experiments/configs/vla_baseline.py:base --topology=v5e-16,v5p-128 \
      [--config.train.batch_size=512] [--mesh_shape=1,-1,1] [--out=aot.json] \
      [--dump_hlo=/tmp/step] [--compiler_option=KEY=VALUE ...] [--unrolled_costs]

``--topology`` takes Cloud names (v5e-16, v5litepod-16, v6e-64; v4-32 and
v5p-128 count TensorCores) or libtpu names (v5e:4x4, v5p:4x4x4), comma-separated
for several columns. The mesh is ``config.mesh.shape`` (or ``--mesh_shape``)
over the slice's chips, one -1 filling. Needs libtpu: ``pip install -e '.[tpu]'``.
A config over HBM is reported as "does not fit" with the compiler's numbers.
See ``wam_jax/training/aot.py`` for what each number means.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; never look for one here.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wam_jax import main_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path:preset).", lock_config=True)
_TOPOLOGY = flags.DEFINE_list("topology", None, "TPU slice(s): v5e-16, v5p-128, v5e:4x4, ...", required=True)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices connected over DCN (multislice).")
_MESH_SHAPE = flags.DEFINE_list("mesh_shape", None, "data,fsdp,tensor (one -1 fills); default config.mesh.shape.")
_NUM_DATASETS = flags.DEFINE_integer("num_datasets", 1, "Datasets in the mixture (per-dataset embeddings).")
_OUT = flags.DEFINE_string("out", None, "Write the reports as a JSON list here.")
_DUMP_HLO = flags.DEFINE_string("dump_hlo", None, "Write each compiled step's HLO text to <this>_<topology>.hlo.")
_COMPILER_OPTION = flags.DEFINE_multi_string(
    "compiler_option", [], "XLA/libtpu compile option key=value (repeatable), e.g. "
    "xla_tpu_enable_windowed_einsum_for_all_gather=false.")
_UNROLLED_COSTS = flags.DEFINE_bool(
    "unrolled_costs", False, "Scanned layers / grad accumulation: also compile the unrolled step and take "
    "HBM bytes and collectives from it (XLA counts a loop body once; slower, may not fit).")


def main(argv):
  del argv
  from wam_jax.training import aot
  config = _CONFIG.value
  if _MESH_SHAPE.value:
    config.mesh.shape = tuple(int(s) for s in _MESH_SHAPE.value)
  if not aot.libtpu_available():
    sys.exit("error: libtpu is not installed: pip install -e '.[tpu]' (the optional tpu extra)")
  options = {}
  for item in _COMPILER_OPTION.value:
    key, _, value = item.partition("=")
    options[key] = {"true": True, "false": False}.get(value.lower(), value)
  reports = []
  for name in _TOPOLOGY.value:
    try:
      topo = aot.parse_topology(name, _NUM_SLICES.value)
      print(f"compiling {config.model.name} for {name} ({topo.topology_name}, {topo.num_chips} chips)...",
            flush=True)
      hlo_path = f"{_DUMP_HLO.value}_{name.replace(':', '_')}.hlo" if _DUMP_HLO.value else None
      reports.append(aot.compile_for_topology(config, topo, _NUM_DATASETS.value, _UNROLLED_COSTS.value,
                                              hlo_path, options))
    except ValueError as e:  # bad topology name, mesh or batch: one line, not a traceback.
      sys.exit(f"error: {e}")
  print(aot.format_table(reports))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(reports, f, indent=1)
    print(f"wrote {_OUT.value}")
  if any(r["status"] != "fits" for r in reports):
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  main_lib.run(main)
