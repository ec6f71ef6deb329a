"""TPU ahead-of-time compilation: name mapping always; real compiles only where libtpu is installed."""

import pytest

from experiments.configs import vla_baseline
from wam_jax.training import aot


@pytest.mark.parametrize("name,topology_name,chips", [
    ("v5e-16", "v5e:4x4", 16),
    ("v5litepod-16", "v5e:4x4", 16),
    ("v5e-8", "v5e:2x4", 8),
    ("v5e-256", "v5e:16x16", 256),
    ("v6e-64", "v6e:8x8", 64),
    ("v4-32", "v4:2x2x4", 16),      # v4/v5p names count TensorCores: 2 per chip.
    ("v5p-8", "v5p:2x2x1", 4),
    ("v5p-128", "v5p:4x4x4", 64),
    ("v5p-256", "v5p:4x4x8", 128),
    ("v5e:2x2", "v5e:2x2", 4),
    ("v5:2x2x2", "v5p:2x2x2", 8),
])
def test_topology_names(name, topology_name, chips):
  topo = aot.parse_topology(name)
  assert (topo.topology_name, topo.num_chips) == (topology_name, chips)


@pytest.mark.parametrize("name", ["v5e-12", "v5p-6", "v4-31", "v3-8", "tpu", "v5e:4", "v5p:4x4"])
def test_bad_topology_names_are_one_line_errors(name):
  with pytest.raises(ValueError, match="topology"):
    aot.parse_topology(name)


def test_collectives_are_counted_once_per_op():
  hlo = "\n".join([
      "  %all-reduce.1 = (f32[8], f32[4]) all-reduce(%a, %b), replica_groups={}",
      "  %ags = (f32[8], f32[64]) all-gather-start(%c), dimensions={0}",
      "  %agd = f32[64] all-gather-done(%ags)",
      "  %gte = f32[8] get-tuple-element(%all-reduce.1), index=0",
      "  %f = f32[8] fusion(%gte), kind=kLoop, calls=%fused_reduce-scatter"])
  assert aot.count_collectives(hlo) == {"all-gather": {"count": 1, "bytes": 256},
                                       "all-reduce": {"count": 1, "bytes": 48}}


@pytest.fixture(scope="module")
def libtpu():
  if not aot.libtpu_available():
    pytest.skip("libtpu not installed (optional: pip install -e '.[tpu]')")


def tiny_config(batch_size):
  cfg = vla_baseline.get_config("tiny")
  cfg.train.batch_size = batch_size
  return cfg


def test_tiny_compiles_for_v5e_2x2(libtpu):
  report = aot.compile_for_topology(tiny_config(8), "v5e:2x2")
  assert report["status"] == "fits", report
  assert (report["chips"], report["devices"], report["mesh"]["data"]) == (4, 4, 4)
  assert report["flops_per_device"] > 0
  assert report["flops_total"] == pytest.approx(4 * report["flops_per_device"])
  assert 0 < report["argument_gib"] <= report["peak_gib"] < report["hbm_capacity_gib"]
  assert report["step_time_lower_bound_s"] >= report["compute_s"] > 0
  assert 0 < report["mfu_upper_bound"] <= 1
  assert report["collectives"]["all-reduce"]["bytes"] > 0  # data-parallel gradients


def test_batch_that_does_not_split_names_the_field(libtpu):
  with pytest.raises(ValueError, match="config.train.batch_size=6"):
    aot.compile_for_topology(tiny_config(6), "v5e:2x2")


@pytest.mark.parametrize("message,used,available", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
     "(19.13G) exceeds available HBM (15.75G).", 19.13, 15.75),
    ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 16.78G of 15.75G hbm.", 16.78, 15.75),
])
def test_over_hbm_message_gives_the_compiler_numbers(message, used, available):
  numbers = aot._oom_numbers(message)
  assert numbers["used_gib"] == pytest.approx(used) and numbers["available_gib"] == pytest.approx(available)
  assert numbers["error"].startswith("RESOURCE_EXHAUSTED")
