"""A PyTorch replica of the video world model's stage-1 train step: the yardstick of scripts/bench_video_wam.py.

Same computation as ``video_wam.py:pretrain_tiny`` (``families/video_wam.py`` with
``policy.enabled=False``, pixel frames, the regression objective;
``video_predictor.py``, ``encoders.ObservationEncoder`` with no camera of its own,
``layers.Transformer``), module for module, so the parameter count and the
matmul FLOPs match the JAX model exactly:

* frames -> tokens [B, C, T, N, P]: patchify (x / 127.5 - 1, patch order (row,
  col, channel)), no gradient; the target is the change from the last history
  frame, delta = (future - last) * ``video.delta_scale``;
* context segment: Linear(P, D)(history tokens) + camera [C, D] + time [T + F, D]
  (the first T rows) + in-frame position [N, D] (sin/cos grid init, as
  ``grid_position_init``), order (camera, time, patch); then proprio
  Linear(P_prop, D) + per-step embedding, text Embedding(257, D) + positions,
  dataset-id Embedding; key padding from history_mask / language_mask;
* future segment: one learned query [D] + camera + time (rows T..T+F) + position,
  C*F*N tokens, always valid;
* the block mask of ``video_predictor.segment_mask``: context tokens see the
  context, future tokens see context and future;
* ``torch_vla.Block`` x depth (pre-LN, fused qkv, tanh GELU, LN eps 1e-6), final LN;
* the future tokens -> Linear(D, P) (zero-initialized, so training starts at
  copy-last-frame) -> MSE over (N, P) per (example, camera, future frame), mean
  over the frames that ``future_mask`` keeps.

The optimizer and step are ``torch_vla``'s (global-norm clipping, AdamW with
the JAX decay mask: tensors with ndim >= 2 there). Like the VLA replica it runs a
constant learning rate where the JAX trainer follows warmup + cosine (one
scalar per step, no cost difference). ``load_jax_params`` copies a JAX
parameter tree in, so tests can check the two compute the same loss.
Only used by benchmarks and their tests: torch is the ``torch`` extra.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import torch_vla
from torch_vla import LN_EPS, VOCAB_SIZE, _dense, _normal, patchify

PRESET = "video_wam.py:pretrain_tiny"


def grid_positions(n: int, d: int) -> torch.Tensor:
  """[N, D] sin/cos of the token's row (first D/2) and column (last D/2): ``grid_position_init``."""
  g = int(round(n ** 0.5))
  rows, cols = torch.arange(n) // g, torch.arange(n) % g
  half = d // 4
  freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)

  def emb(x):
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], -1)

  return torch.cat([emb(rows), emb(cols)], -1)


class TorchVideoWAM(nn.Module):
  """``config`` is the wam_jax ConfigDict of a stage-1 pixel-regression preset (model + data read)."""

  def __init__(self, config, num_datasets: int, sdpa: bool = True):
    super().__init__()
    m, d = config.model, config.data
    if m.frames != "pixels" or m.video.objective != "regression" or m.policy.enabled or m.video.action_conditioned:
      raise ValueError("the replica covers stage 1 on pixel patches with the regression objective "
                       f"(model.frames={m.frames!r}, video.objective={m.video.objective!r}, "
                       f"policy.enabled={m.policy.enabled}, video.action_conditioned={m.video.action_conditioned})")
    w = m.width
    self.patch, self.cameras, self.delta_scale = m.patch_size, tuple(d.cameras), m.video.delta_scale
    self.num_future = d.num_future
    n, p = (d.image_size // m.patch_size) ** 2, 3 * m.patch_size ** 2
    # predictor/
    self.camera = _normal(len(self.cameras), w)
    self.time = _normal(d.history + d.num_future, w)
    self.pos = nn.Parameter(grid_positions(n, w))
    self.history_in = _dense(p, w)
    self.future_query = _normal(w)
    self.blocks = nn.ModuleList(torch_vla.Block(w, m.num_heads, m.mlp_dim, sdpa) for _ in range(m.depth))
    self.ln_final = nn.LayerNorm(w, eps=LN_EPS)
    self.future_out = _dense(w, p)
    nn.init.zeros_(self.future_out.weight)
    # encoder/ (ObservationEncoder with cameras=(): proprio, text, dataset id)
    self.proprio = _dense(d.proprio_dim, w)
    self.proprio_time = _normal(d.history, w)
    self.text = nn.Embedding(VOCAB_SIZE, w)
    nn.init.normal_(self.text.weight, std=0.02)
    self.text_pos = _normal(d.max_text_len, w)
    self.dataset = nn.Embedding(num_datasets, w)
    nn.init.normal_(self.dataset.weight, std=0.02)

  def _tokens(self, batch, prefix):
    with torch.no_grad():
      return torch.stack([patchify(batch[prefix + c], self.patch) for c in self.cameras], 1)  # [B, C, T, N, P]

  def _positions(self, first, num):  # [C, num, N, D]
    return self.camera[:, None, None] + self.time[first:first + num][None, :, None] + self.pos[None, None]

  def forward(self, batch):
    """The video loss (stage 1's training loss)."""
    hist, fut = self._tokens(batch, "image_"), self._tokens(batch, "future_image_")
    delta = (fut - hist[:, :, -1:]) * self.delta_scale
    b, c, t, n, _ = hist.shape
    f = self.num_future
    hmask = batch["history_mask"]
    x_hist = (self.history_in(hist) + self._positions(0, t)).reshape(b, c * t * n, -1)
    x_fut = (self.future_query + self._positions(t, f)).reshape(1, c * f * n, -1).expand(b, -1, -1)
    tokens = [x_hist, self.proprio(batch["proprio"]) + self.proprio_time,
              self.text(batch["language_tokens"]) + self.text_pos, self.dataset(batch["dataset_id"])[:, None],
              x_fut]
    keys = torch.cat([hmask[:, None, :, None].expand(b, c, t, n).reshape(b, c * t * n), hmask,
                      batch["language_mask"], torch.ones(b, 1 + c * f * n, dtype=torch.bool)], 1)
    x = torch.cat(tokens, 1)
    n_ctx = x.shape[1] - c * f * n
    is_future = torch.arange(x.shape[1]) >= n_ctx
    sees = is_future[:, None] | ~is_future[None, :]        # [N, N]: context -> context, future -> all
    allowed = sees[None, None] & keys[:, None, None, :]    # [B, 1, N, N]
    for block in self.blocks:
      x = block(x, allowed)
    out = self.future_out(self.ln_final(x)[:, n_ctx:]).reshape(delta.shape)
    err = ((out - delta) ** 2).mean((-2, -1))              # [B, C, F]
    valid = batch["future_mask"][:, None, :].expand(b, c, f).float()
    return (err * valid).sum() / valid.sum().clamp(min=1.0)


def _jax_to_torch_names(depth: int) -> dict:
  """JAX parameter path -> (torch state_dict name, conversion of the JAX array)."""
  same = lambda a: a
  lin = lambda a: a.reshape(-1, a.shape[-1]).T  # kernel [*in, out] (attn out: [H, hd, D]) -> [out, in]
  qkv = lambda a: a.reshape(a.shape[0], -1).T   # kernel [D, 3, H, hd] -> [3D, D]
  names = {}

  def dense(path, name, kernel=lin, bias=same):
    names.update({f"{path}/kernel": (f"{name}.weight", kernel), f"{path}/bias": (f"{name}.bias", bias)})

  def norm(path, name):
    names.update({f"{path}/scale": (f"{name}.weight", same), f"{path}/bias": (f"{name}.bias", same)})

  for leaf in ("camera", "time", "pos", "future_query"):
    names[f"predictor/{leaf}"] = (leaf, same)
  dense("predictor/history_in", "history_in")
  dense("predictor/future_out", "future_out")
  norm("predictor/transformer/ln_final", "ln_final")
  dense("encoder/proprio", "proprio")
  names.update({"encoder/proprio_time": ("proprio_time", same), "encoder/text/pos": ("text_pos", same),
                "encoder/text/embed/embedding": ("text.weight", same),
                "encoder/dataset/embedding": ("dataset.weight", same)})
  for i in range(depth):
    path, name = f"predictor/transformer/block_{i}", f"blocks.{i}"
    norm(f"{path}/ln_attn", f"{name}.ln_attn")
    norm(f"{path}/ln_mlp", f"{name}.ln_mlp")
    dense(f"{path}/attn/qkv", f"{name}.attn.qkv", kernel=qkv, bias=np.ravel)
    dense(f"{path}/attn/out", f"{name}.attn.out")
    dense(f"{path}/mlp/wi", f"{name}.wi")
    dense(f"{path}/mlp/wo", f"{name}.wo")
  return names


def load_jax_params(model: TorchVideoWAM, flat_params: dict) -> None:
  """Copies {'predictor/transformer/block_0/attn/qkv/kernel': array, ...} (every JAX leaf) into the model."""
  names = _jax_to_torch_names(len(model.blocks))
  if set(names) != set(flat_params):
    raise ValueError(f"parameter paths differ: only jax {sorted(set(flat_params) - set(names))}, "
                     f"only the replica {sorted(set(names) - set(flat_params))}")
  state = model.state_dict()
  for path, value in flat_params.items():
    name, convert = names[path]
    array = torch.from_numpy(np.ascontiguousarray(convert(np.asarray(value, np.float32))))
    if array.shape != state[name].shape:
      raise ValueError(f"{path} {tuple(array.shape)} does not fit {name} {tuple(state[name].shape)}")
    state[name] = array
  model.load_state_dict(state)
