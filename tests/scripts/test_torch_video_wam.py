"""The PyTorch yardstick of the video world model (scripts/torch_video_wam.py) is the same model as
video_wam.py:pretrain_tiny: same parameters (count and paths), the same loss on the same
parameters, matmul FLOPs equal to the analytic count and close to XLA's. Skipped without torch."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.configs import video_wam  # noqa: E402
from wam_jax.data.fake_batch import make_batch  # noqa: E402
from wam_jax.models import registry  # noqa: E402
from wam_jax.training import metrics, sharding, state, trainer  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import torch_video_wam  # noqa: E402
import torch_vla  # noqa: E402

BATCH = 4


def analytic_matmul_flops(cfg, batch_size):
  """Forward + backward matmul FLOPs; the history-patch and proprio embeddings need no input gradient."""
  m, d = cfg.model, cfg.data
  c, n_frame, p = len(d.cameras), (d.image_size // m.patch_size) ** 2, 3 * m.patch_size ** 2
  n_hist, n_fut = c * d.history * n_frame, c * d.num_future * n_frame
  n = n_hist + d.history + d.max_text_len + 1 + n_fut
  w = m.width
  embed = n_hist * p * w + d.history * d.proprio_dim * w
  dense = embed + m.depth * n * (4 * w * w + 2 * w * m.mlp_dim) + n_fut * w * p
  forward = 2 * dense + m.depth * 4 * n * n * w
  return batch_size * (3 * forward - 2 * embed)


@pytest.fixture(scope="module")
def setup():
  cfg = video_wam.get_config("pretrain_tiny")
  num_datasets = len(cfg.data.mixture)
  return cfg, num_datasets, make_batch(cfg, BATCH, num_datasets=num_datasets)


def test_same_parameter_count(setup):
  cfg, num_datasets, _ = setup
  spec = trainer.abstract_batch(cfg.data, BATCH)
  run = trainer.setup_training(cfg, sharding.make_mesh((1, 1, 1), jax.devices()[:1]), spec, num_datasets)
  n_jax = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
  assert torch_vla.num_params(torch_video_wam.TorchVideoWAM(cfg, num_datasets)) == n_jax


@pytest.mark.parametrize("sdpa", [True, False])
def test_same_loss_on_the_same_params(setup, sdpa):
  cfg, num_datasets, batch = setup
  cfg = cfg.copy_and_resolve_references()
  cfg.train.compute_dtype = "float32"
  model = registry.build_model(cfg, num_datasets)
  batch_j = jax.tree.map(jnp.asarray, batch)
  params = state.unbox(registry.init_params(model, jax.random.key(0), batch_j))
  # The output layer starts at zero (every model's loss is then copy-last's): give it weights.
  params["predictor"]["future_out"]["kernel"] = 0.02 * jax.random.normal(
      jax.random.key(1), params["predictor"]["future_out"]["kernel"].shape)
  loss_jax, _ = registry.loss_fn(model, params, batch_j, jax.random.key(2))
  replica = torch_video_wam.TorchVideoWAM(cfg, num_datasets, sdpa=sdpa)
  torch_video_wam.load_jax_params(replica, {state.param_path(p): np.asarray(x)
                                            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]})
  with torch.no_grad():
    loss_torch = replica(torch_vla.to_torch(batch)).item()
  assert loss_torch == pytest.approx(float(loss_jax), rel=1e-5)


def test_same_flops(setup):
  cfg, num_datasets, batch = setup
  torch_flops = torch_vla.train_step_flops(torch_video_wam.TorchVideoWAM(cfg, num_datasets, sdpa=False),
                                           torch_vla.to_torch(batch))
  expected = analytic_matmul_flops(cfg, BATCH)
  assert torch_flops == pytest.approx(expected, rel=1e-3)
  spec = trainer.abstract_batch(cfg.data, BATCH)
  run = trainer.setup_training(cfg, sharding.make_mesh((1, 1, 1), jax.devices()[:1]), spec, num_datasets)
  jax_flops = metrics.compiled_flops(run.train_step.lower(run.abstract_state, spec).compile(), 1)
  # XLA also counts layer norms, softmax, GELU, patchify, the loss and AdamW: a few percent more.
  assert 1.0 < jax_flops / expected < 1.06


def test_torch_step_runs_and_loss_falls(setup):
  cfg, num_datasets, batch = setup
  torch.manual_seed(0)
  model = torch_video_wam.TorchVideoWAM(cfg, num_datasets)
  step = torch_vla.make_train_step(model, torch_vla.make_optimizer(model, cfg.train), cfg.train.grad_clip_norm)
  batch_t = torch_vla.to_torch(batch)
  losses = [step(batch_t).item() for _ in range(5)]
  assert losses[-1] < losses[0]
