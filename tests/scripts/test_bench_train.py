"""The PyTorch yardstick (scripts/torch_vla.py) is the same model as the JAX VLA:
same parameter count, same matmul FLOPs (analytic), and a JAX compiled-step
FLOP count that differs only by the non-matmul work. Skipped without torch."""

import pathlib
import sys

import jax
import pytest

torch = pytest.importorskip("torch")

from experiments.configs import vla_baseline  # noqa: E402
from wam_jax.data.fake_batch import make_batch  # noqa: E402
from wam_jax.training import metrics, sharding, trainer  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import torch_vla  # noqa: E402

BATCH = 4


def analytic_matmul_flops(cfg, batch_size):
  """Forward + backward matmul FLOPs; the patch/proprio embeddings need no input gradient."""
  m, d = cfg.model, cfg.data
  n_img = len(d.cameras) * d.history * (d.image_size // m.patch_size) ** 2
  n = n_img + d.history + d.max_text_len + 1 + d.action_horizon
  w = m.width
  embed = n_img * 3 * m.patch_size**2 * w + d.history * d.proprio_dim * w
  dense = embed + m.depth * n * (4 * w * w + 2 * w * m.mlp_dim) + d.action_horizon * w * d.action_dim
  forward = 2 * dense + m.depth * 4 * n * n * w
  return batch_size * (3 * forward - 2 * embed)


@pytest.fixture(scope="module")
def setup():
  cfg = vla_baseline.get_config("tiny")
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  spec = trainer.abstract_batch(cfg.data, BATCH)
  run = trainer.setup_training(cfg, mesh, spec, num_datasets=1)
  return cfg, run, spec


def test_same_parameter_count(setup):
  cfg, run, _ = setup
  n_jax = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
  assert torch_vla.num_params(torch_vla.TorchVLA(cfg)) == n_jax


def test_same_flops(setup):
  cfg, run, spec = setup
  batch = torch_vla.to_torch(make_batch(cfg, BATCH))
  torch_flops = torch_vla.train_step_flops(torch_vla.TorchVLA(cfg, sdpa=False), batch)
  expected = analytic_matmul_flops(cfg, BATCH)
  assert torch_flops == pytest.approx(expected, rel=1e-3)
  jax_flops = metrics.compiled_flops(run.train_step.lower(run.abstract_state, spec).compile(), 1)
  # XLA also counts layer norms, softmax, GELU, the loss and AdamW: a few percent more.
  assert 1.0 < jax_flops / expected < 1.06


def test_torch_step_runs_and_loss_falls(setup):
  cfg = setup[0]
  torch.manual_seed(0)
  model = torch_vla.TorchVLA(cfg)
  step = torch_vla.make_train_step(model, torch_vla.make_optimizer(model, cfg.train), 1.0)
  batch = torch_vla.to_torch(make_batch(cfg, BATCH))
  losses = [float(step(batch)) for _ in range(5)]
  assert losses[-1] < losses[0]
