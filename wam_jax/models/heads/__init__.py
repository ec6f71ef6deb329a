"""Action-chunk heads, looked up by ``config.model.head.name``.

One interface for every head (regression now; diffusion / flow / discrete
tokens plug in the same way):

  head = build_head(head_cfg, horizon=K, action_dim=A)
  loss, metrics = head(readout_BKD, actions_BKA, mask_BKA, train=...)   # training
  actions_BKA = head.apply(..., method="sample")                           # inference

``readout_BKD`` are K per-step condition tokens from the backbone; ``mask_BKA``
is action_mask[..., None] & action_dim_mask[:, None, :]. Losses average over
the True entries only, and report their count as metrics['loss_weight'] so
gradient accumulation stays exact. Sampling must be deterministic given the 'noise' rng.
"""

from wam_jax.models.heads.regression import RegressionHead

HEADS = {
    "l1": lambda cfg, K, A: RegressionHead(horizon=K, action_dim=A, loss_type="l1"),
    "mse": lambda cfg, K, A: RegressionHead(horizon=K, action_dim=A, loss_type="mse"),
}


def check_head_name(name: str) -> None:
  if name not in HEADS:
    raise ValueError(f"config.model.head.name={name!r} is not a head; known: {sorted(HEADS)}")


def build_head(head_cfg, *, horizon: int, action_dim: int):
  check_head_name(head_cfg.name)
  return HEADS[head_cfg.name](head_cfg, horizon, action_dim)
