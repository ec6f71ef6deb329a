"""scripts/bench_ops.py: one block's ops at a preset's shapes, JAX vs PyTorch. Skipped without torch."""

import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import bench_ops  # noqa: E402


def test_cases_cover_one_blocks_matmul_flops():
  batch, tokens, width, heads, mlp = 4, 75, 128, 4, 512
  cases = bench_ops.op_cases(batch, tokens, width, heads, mlp)
  rows = batch * tokens
  forward_dense = 2 * rows * (4 * width * width + 2 * width * mlp)  # qkv + out + MLP, forward
  projections = [c for c in cases if c["name"].split()[-1] in ("fwd", "dx", "dW") and "eq" in c]
  assert sum(bench_ops.flops(c) * c["count"] for c in projections) == 3 * forward_dense  # fwd + dx + dW
  attention = [c for c in cases if c["name"].startswith("attn")]
  # forward q k^T and p v, backward four more: 6 batched dots of 2 * B * H * N * N * hd each.
  assert sum(bench_ops.flops(c) * c["count"] for c in attention) == 6 * 2 * batch * tokens * tokens * width
  assert {c["kind"] for c in cases if "kind" in c} == {"layer_norm", "softmax", "gelu"}


def test_run_times_every_case_and_checks_agreement():
  cases = bench_ops.op_cases(batch=2, tokens=9, width=16, heads=2, mlp=32)
  rows = bench_ops.run(cases, calls=2, rounds=1, torch_threads=1)
  assert [r["name"] for r in rows] == [c["name"] for c in cases]
  for r in rows:
    assert r["jax_ms"] > 0 and r["torch_ms"] > 0
    assert r["jax_over_torch"] == pytest.approx(r["jax_ms"] / r["torch_ms"])
  table = bench_ops.markdown(rows)
  assert table.count("\n") == len(rows) + 2 and "sum x count" in table


def test_run_refuses_ops_that_disagree(monkeypatch):
  case = bench_ops.op_cases(batch=2, tokens=9, width=16, heads=2, mlp=32)[0]
  monkeypatch.setattr(bench_ops, "torch_fn", lambda c: (lambda a, b: torch.einsum(c["eq"], a, b) + 1.0))
  with pytest.raises(AssertionError, match="disagree on 'qkv fwd'"):
    bench_ops.run([case], calls=1, rounds=1, torch_threads=1)


def test_blocks_time_the_project_modules_and_the_replica():
  cases = bench_ops.block_cases(batch=2, tokens=9, width=16, heads=2, mlp=32)
  assert [c[0] for c in cases] == ["block", "attention", "mlp", "layer norm"]
  for name, j_fwd, j_bwd, t_fwd, t_bwd in cases:
    assert j_fwd().shape == t_fwd().shape == (2, 9, 16), name
    params_grad, x_grad = j_bwd()
    assert x_grad.shape == t_bwd().shape == (2, 9, 16), name  # gradients w.r.t. params and input
  rows = bench_ops.run_blocks(cases, calls=1, rounds=1)
  assert all(r["jax_fwd_bwd_ms"] > 0 and r["torch_fwd_bwd_ms"] > 0 for r in rows)
  assert "block / parts" in bench_ops.blocks_markdown(rows)
