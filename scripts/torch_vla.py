"""A PyTorch replica of the VLA baseline: the CPU yardstick for scripts/bench_train.py.

Same computation as ``wam_jax/models/families/vla.py`` (with ``layers.py``,
``encoders.py`` and the L1 regression head), module for module, so the
parameter count and the matmul FLOPs match the JAX model exactly:

* per camera: patchify (x / 127.5 - 1, patch order (row, col, channel)) ->
  Linear -> + spatial pos [n, D] + temporal pos [T, D] + camera embedding [D];
* proprio: Linear(P, D) + per-step embedding [T, D];
* text: Embedding(257, D) + positions [L, D]; dataset id: Embedding;
* K learned action queries appended; key padding mask from history_mask,
  language_mask (queries and dataset token always valid);
* depth x pre-LN blocks: LN -> fused qkv Linear(D, 3D) -> masked softmax
  attention -> Linear(D, D); LN -> Linear(D, mlp) -> tanh GELU (flax
  ``nn.gelu`` default) -> Linear(mlp, D); LayerNorm eps 1e-6 as flax;
* final LN, the last K tokens -> head LN -> Linear(D, A) -> masked L1 mean.

The optimizer mirrors ``wam_jax/training/state.py``: global-norm clipping then
AdamW (b1, b2, weight decay on the tensors JAX decays: its params with
ndim >= 2, which includes the [3, H, hd] qkv bias). Only used by benchmarks:
torch is the ``torch`` extra of setup.py, never a dependency of wam_jax.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

VOCAB_SIZE = 257  # wam_jax.data.tokenizer.ByteTokenizer.vocab_size
LN_EPS = 1e-6     # flax.linen.LayerNorm default


def _normal(*shape):
  return nn.Parameter(torch.randn(*shape) * 0.02)


def _dense(i, o):
  layer = nn.Linear(i, o)
  nn.init.xavier_uniform_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


def patchify(frames_BTHWC: torch.Tensor, patch: int) -> torch.Tensor:
  """uint8 [B, T, H, W, C] -> float [B, T, (H/p)*(W/p), p*p*C] in [-1, 1]."""
  b, t, h, w, c = frames_BTHWC.shape
  x = frames_BTHWC.float() / 127.5 - 1.0
  x = x.reshape(b, t, h // patch, patch, w // patch, patch, c).permute(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t, (h // patch) * (w // patch), patch * patch * c)


class Attention(nn.Module):
  def __init__(self, width: int, num_heads: int, sdpa: bool):
    super().__init__()
    self.h, self.sdpa = num_heads, sdpa
    self.qkv = _dense(width, 3 * width)   # JAX kernel [D, 3, H, hd]: same column order.
    self.out = _dense(width, width)

  def forward(self, x_BND, allowed_B11M):
    b, n, d = x_BND.shape
    hd = d // self.h
    qkv = self.qkv(x_BND).view(b, n, 3, self.h, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    if self.sdpa:
      out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_B11M)
    else:
      logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
      logits = logits.masked_fill(~allowed_B11M, torch.finfo(logits.dtype).min)
      out = logits.softmax(-1) @ v
    return self.out(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
  def __init__(self, width, num_heads, mlp_dim, sdpa):
    super().__init__()
    self.ln_attn = nn.LayerNorm(width, eps=LN_EPS)
    self.attn = Attention(width, num_heads, sdpa)
    self.ln_mlp = nn.LayerNorm(width, eps=LN_EPS)
    self.wi = _dense(width, mlp_dim)
    self.wo = _dense(mlp_dim, width)

  def forward(self, x, allowed):
    x = x + self.attn(self.ln_attn(x), allowed)
    return x + self.wo(F.gelu(self.wi(self.ln_mlp(x)), approximate="tanh"))


class TorchVLA(nn.Module):
  """``config`` is the wam_jax ConfigDict (model + data sections are read)."""

  def __init__(self, config, num_datasets: int = 1, sdpa: bool = True):
    super().__init__()
    m, d = config.model, config.data
    w, t = m.width, d.history
    self.patch, self.cameras, self.horizon = m.patch_size, tuple(d.cameras), d.action_horizon
    n = (d.image_size // m.patch_size) ** 2
    self.patch_embed = nn.ModuleDict({c: _dense(m.patch_size**2 * 3, w) for c in self.cameras})
    self.image_pos = nn.ParameterDict({c: _normal(n, w) for c in self.cameras})
    self.image_time = nn.ParameterDict({c: _normal(t, w) for c in self.cameras})
    self.camera = nn.ParameterDict({c: _normal(w) for c in self.cameras})
    self.proprio = _dense(d.proprio_dim, w)
    self.proprio_time = _normal(t, w)
    self.text = nn.Embedding(VOCAB_SIZE, w)
    nn.init.normal_(self.text.weight, std=0.02)
    self.text_pos = _normal(d.max_text_len, w)
    self.dataset = nn.Embedding(num_datasets, w)
    nn.init.normal_(self.dataset.weight, std=0.02)
    self.queries = _normal(d.action_horizon, w)
    self.blocks = nn.ModuleList(Block(w, m.num_heads, m.mlp_dim, sdpa) for _ in range(m.depth))
    self.ln_final = nn.LayerNorm(w, eps=LN_EPS)
    self.head_norm = nn.LayerNorm(w, eps=LN_EPS)
    self.head_proj = _dense(w, d.action_dim)

  def readout(self, batch):
    hist = batch["history_mask"]
    b = hist.shape[0]
    tokens, masks = [], []
    for c in self.cameras:
      p = patchify(batch[f"image_{c}"], self.patch)
      _, t, n, _ = p.shape
      x = self.patch_embed[c](p) + self.image_pos[c] + self.image_time[c][:, None]
      tokens.append(x.reshape(b, t * n, -1) + self.camera[c])
      masks.append(hist[:, :, None].expand(b, t, n).reshape(b, t * n))
    tokens.append(self.proprio(batch["proprio"]) + self.proprio_time)
    masks.append(hist)
    tokens.append(self.text(batch["language_tokens"]) + self.text_pos)
    masks.append(batch["language_mask"])
    tokens.append(self.dataset(batch["dataset_id"])[:, None])
    tokens.append(self.queries.expand(b, -1, -1))
    masks.append(torch.ones(b, 1 + self.horizon, dtype=torch.bool))
    x = torch.cat(tokens, 1)
    allowed = torch.cat(masks, 1)[:, None, None, :]
    for block in self.blocks:
      x = block(x, allowed)
    return self.ln_final(x)[:, -self.horizon:]

  def forward(self, batch):
    """Masked L1 loss (the ``l1`` head)."""
    pred = self.head_proj(self.head_norm(self.readout(batch))).float()
    mask = (batch["action_mask"][:, :, None] & batch["action_dim_mask"][:, None, :]).float()
    return ((pred - batch["actions"]).abs() * mask).sum() / mask.sum().clamp(min=1.0)

  @torch.no_grad()
  def predict_actions(self, batch):
    return self.head_proj(self.head_norm(self.readout(batch)))


def jax_decayed(name: str, p: torch.Tensor) -> bool:
  """Whether the JAX twin of this tensor gets weight decay (ndim >= 2 there)."""
  return p.ndim >= 2 or name.endswith("attn.qkv.bias")


def make_optimizer(model: TorchVLA, train_cfg, fused: bool = False):
  named = list(model.named_parameters())
  groups = [{"params": [p for n, p in named if jax_decayed(n, p)], "weight_decay": train_cfg.weight_decay},
            {"params": [p for n, p in named if not jax_decayed(n, p)], "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, betas=(train_cfg.b1, train_cfg.b2),
                           eps=1e-8, fused=fused or None)


def make_train_step(model, opt, clip_norm: float, autocast_dtype=None, loss_fn=None):
  """step(batch) -> loss tensor: forward, backward, clip, AdamW (as the JAX trainer)."""
  loss_fn = model if loss_fn is None else loss_fn

  def step(batch):
    opt.zero_grad(set_to_none=True)
    if autocast_dtype is None:
      loss = loss_fn(batch)
    else:
      with torch.autocast("cpu", dtype=autocast_dtype):
        loss = loss_fn(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    return loss

  return step


def to_torch(batch: dict) -> dict:
  """numpy batch (wam_jax/data/fake_batch.py or the data pipeline) -> torch tensors, shared memory."""
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def train_step_flops(model: TorchVLA, batch: dict) -> int:
  """Matmul FLOPs of forward + backward, as torch's FlopCounterMode counts them."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter:
    model(batch).backward()
  model.zero_grad(set_to_none=True)
  return counter.get_total_flops()
