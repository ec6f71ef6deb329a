"""TPU ahead-of-time compilation: name mapping always; real compiles only where libtpu is installed."""

import pytest

from experiments.configs import lm, vla_baseline
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


# A scanned layer stack as the TPU compiler prints it: the trip count only in the condition
# (i < 24), a collective in the loop body and one inside a fusion the body calls.
LOOP_HLO = """HloModule m, entry_computation_layout={()->f32[8]}

%fused_gather (p: f32[2]) -> f32[8] {
  %p = f32[2]{0} parameter(0)
  ROOT %ag.2 = f32[8]{0} all-gather(%p), replica_groups=[2,4]<=[8], dimensions={0}
}

%cond (c: (s32[], f32[8])) -> pred[] {
  %c = (s32[], f32[8]) parameter(0)
  %limit = s32[]{:T(128)} constant(24)
  %i = s32[] get-tuple-element(%c), index=0
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}

%body (b: (s32[], f32[8])) -> (s32[], f32[8]) {
  %b = (s32[], f32[8]) parameter(0)
  %i.1 = s32[] get-tuple-element(%b), index=0
  %x = f32[8]{0} get-tuple-element(%b), index=1
  %ar = f32[8]{0} all-reduce(%x), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %f = f32[8]{0} fusion(%ar), kind=kLoop, calls=%fused_gather
  ROOT %t = (s32[], f32[8]) tuple(%i.1, %f)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]) tuple(%zero, %a)
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  %y = f32[8]{0} get-tuple-element(%w), index=1
  ROOT %rs = f32[1]{0} reduce-scatter(%y), replica_groups={}, dimensions={0}, to_apply=%add
}
"""


def test_loop_trip_counts_weight_the_collectives():
  assert aot.while_trip_counts(LOOP_HLO) == [24]
  mult = aot.loop_multipliers(LOOP_HLO)
  assert (mult["main"], mult["body"], mult["fused_gather"]) == (1, 24, 24)
  assert aot.count_collectives(LOOP_HLO, 8) == {"all-gather": {"count": 24, "bytes": 24 * 32},
                                                "all-reduce": {"count": 24, "bytes": 24 * 32},
                                                "reduce-scatter": {"count": 1, "bytes": 4}}
  groups = {op["kind"]: op["group"] for op in aot.collective_ops(LOOP_HLO, 8)}
  assert groups == {"all-gather": 4, "all-reduce": 8, "reduce-scatter": 8}  # iota, listed, {} = all


def test_known_trip_count_backend_config_is_used():
  hlo = LOOP_HLO.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"3"}}')
  assert aot.while_trip_counts(hlo) == [3] and aot.loop_multipliers(hlo)["body"] == 3


def test_loop_traffic_scale_counts_the_body_per_iteration():
  weighted, once = aot.hlo_traffic_bytes(LOOP_HLO), aot.hlo_traffic_bytes(LOOP_HLO, weighted=False)
  # per iteration: all-reduce 32 + 32, fusion 32 + 32, the condition's compare 1 + 4 + 4;
  # once: the entry's reduce-scatter 4 + 32.
  assert (weighted, once) == (24 * 137 + 36, 137 + 36)


def test_dynamic_slices_count_the_slice_not_the_stacked_buffer():
  # One scanned layer's step: read layer i's weights [8] out of the stacked [24, 8], write its
  # output into row i of a stacked [24, 8] buffer in place.
  fused = """%fused_layer (p0: f32[24,8], p1: s32[], p2: f32[24,8]) -> f32[24,8] {
  %p0 = f32[24,8]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = f32[24,8]{1,0} parameter(2)
  %z = s32[] constant(0)
  %w = f32[1,8]{1,0} dynamic-slice(%p0, %p1, %z), dynamic_slice_sizes={1,8}
  %y = f32[1,8]{1,0} multiply(%w, %w)
  ROOT %out = f32[24,8]{1,0} dynamic-update-slice(%p2, %y, %p1, %z)
}
"""
  assert aot._fusion_traffic(fused.splitlines()[1:-1]) == ({0: 32, 2: 0}, 32)
  entry = fused + """
ENTRY %main (a: f32[24,8], i: s32[], b: f32[24,8]) -> f32[24,8] {
  %a = f32[24,8]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %b = f32[24,8]{1,0} parameter(2)
  ROOT %f = f32[24,8]{1,0} fusion(%a, %i, %b), kind=kLoop, calls=%fused_layer
}
"""
  assert aot.hlo_traffic_bytes(entry) == 32 + 4 + 0 + 32  # not 3 x 768


@pytest.mark.parametrize("kind,factor", [("all-gather", 3 / 4), ("reduce-scatter", 3), ("all-reduce", 3 / 2),
                                         ("all-to-all", 3 / 4), ("collective-permute", 1)])
def test_ring_traffic_per_chip(kind, factor):
  assert aot.collective_traffic_bytes(kind, 1000, 4) == pytest.approx(1000 * factor)
  assert aot.collective_traffic_bytes(kind, 1000, 1) == 0  # a group of one moves nothing


def test_ici_bandwidth_table():
  assert aot.ici_bandwidth("v5e") == pytest.approx(1600e9 / 8)  # datasheet Gbit/s, all 4 ports
  assert aot.ici_bandwidth("v6e") == pytest.approx(3200e9 / 8)
  assert aot.ici_bandwidth("v5p") == pytest.approx(4800e9 / 8)
  assert aot.ici_bandwidth("v5p", links=2) == pytest.approx(4800e9 / 8 / 3)  # 2 of 6 ports
  assert aot.ici_bandwidth("v4", links=2) == pytest.approx(2 * 400e9 / 8)
  assert all(g.ici_gbps > 0 and g.ici_ports == 2 * g.ndim for g in aot.GENERATIONS.values())


def test_collective_time_and_step_bounds():
  ops = [{"kind": "all-gather", "bytes": 8e9, "group": 8, "runs": 24},
         {"kind": "all-reduce", "bytes": 1e9, "group": 2, "runs": 1}]
  traffic = 24 * 8e9 * 7 / 8 + 1e9
  assert aot.collective_seconds(ops, 1e11) == pytest.approx(traffic / 1e11)
  assert aot.step_time_bounds(3.0, 1.0, 0.5) == (3.0, 3.5)   # hidden under compute / after it
  assert aot.step_time_bounds(1.0, 2.0, 4.0) == (4.0, 6.0)   # collective-bound either way


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


def test_config_compiler_options_reach_the_tpu_compile(libtpu):
  """train.compiler_options.tpu (and --compiler_option on top) are what the TPU step compiles with:
  a misspelled option fails the compile, naming it; the report lists the merged set."""
  cfg = tiny_config(8)
  cfg.train.compiler_options.tpu.xla_tpu_no_such_option = True
  with pytest.raises(Exception, match="xla_tpu_no_such_option"):
    aot.compile_for_topology(cfg, "v5e:2x2")
  cfg = tiny_config(8)
  cfg.train.compiler_options.tpu.xla_tpu_enable_windowed_einsum_for_all_gather = False
  cfg.lock()  # as scripts/aot_compile.py's flag-parsed config
  report = aot.compile_for_topology(cfg, "v5e:2x2", compiler_options={
      "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False})
  assert report["status"] == "fits"
  assert report["compiler_options"] == {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                                        "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
  assert not cfg.train.compiler_options.tpu.get("xla_tpu_enable_windowed_einsum_for_reduce_scatter")


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


def test_scanned_lm_compiles_with_loop_aware_costs(libtpu):
  cfg = lm.get_config("tiny")  # text batches: tokens and segment_ids [B, N + 1]
  cfg.train.batch_size = 8
  cfg.model.update(scan=True, remat="full")
  cfg.mesh.shape = (1, -1, 1)  # FSDP
  report = aot.compile_for_topology(cfg, "v5e:2x2")
  assert report["status"] == "fits", report
  assert report["mesh"]["fsdp"] == 4 and report["batch_per_device"] == 2
  assert cfg.model.depth in report["loop_trip_counts"] and report["remat"] == "remat=full"
  # XLA counts the scanned layers once; the report counts every layer.
  assert report["flops_per_device"] > 1.5 * report["flops_per_device_xla"]
  assert report["hbm_loop_scale"] > 1
  assert report["collectives"]["all-gather"]["count"] >= cfg.model.depth  # FSDP: per-layer gathers
  assert 0 < report["collective_s"] < report["collective_s_one_ring"]
  assert report["step_time_overlapped_s"] <= report["step_time_serial_s"]
  low, high = report["mfu_range"]
  assert 0 < low <= high <= report["mfu_upper_bound"] <= 1
