"""Action-chunk heads, looked up by ``config.model.head.name``.

One interface for every head:

  head = build_head(config.model.head, horizon=K, action_dim=A, dot_general=...)
  loss, metrics = head(readout_BKD, actions_BKA, mask_BKA, train=...)   # training
  actions_BKA = head.apply(..., method="sample")                           # inference

``readout_BKD`` are K per-step condition tokens from the backbone; ``mask_BKA``
is action_mask[..., None] & action_dim_mask[:, None, :]. Losses average over
the True entries only, and report their count as metrics['loss_weight'] so
gradient accumulation stays exact; masked entries never reach the loss.
Sampling is deterministic given the 'noise' rng.

Heads: ``l1``, ``mse`` (regression), ``diffusion`` (DDPM + DDIM), ``flow``
(flow matching + Euler), ``discrete`` (binned tokens). The config holds every
head's fields at once, so any of them can be overridden on the command line
whichever head is chosen:

  config.model.head = {name: "l1", num_sampling_steps: 0,
                       diffusion: {...}, flow: {...}, discrete: {...}}

A head's defaults are its module's dataclass defaults (``default_head_config``
reads them). ``head.num_sampling_steps`` > 0 overrides the chosen head's own
``num_sampling_steps`` (ignored by heads without a sampling loop): it is the one
field a sweep over heads x steps, and the evaluator's ``--sampling_steps``, set.
"""

import ml_collections

from wam_jax.models.heads import checks, diffusion, discrete, flow
from wam_jax.models.heads.regression import RegressionHead

HEADS = {
    "l1": RegressionHead,
    "mse": RegressionHead,
    "diffusion": diffusion.DiffusionHead,
    "flow": flow.FlowHead,
    "discrete": discrete.DiscreteHead,
}
# Heads with a sub-config config.model.head.<name>, and the check of its values.
FIELD_CHECKS = {"diffusion": diffusion.check_config, "flow": flow.check_config, "discrete": discrete.check_config}
TOP_FIELDS = ("name", "num_sampling_steps", *FIELD_CHECKS)
MAX_SAMPLING_STEPS = 100


def default_head_config(name: str = "l1") -> ml_collections.ConfigDict:
  """config.model.head with ``name`` chosen and every head's defaults."""
  check_head_name(name)
  return ml_collections.ConfigDict(dict(
      name=name, num_sampling_steps=0,
      **{n: ml_collections.ConfigDict(checks.config_fields(HEADS[n])) for n in FIELD_CHECKS}))


def check_head_name(name: str) -> None:
  if name not in HEADS:
    raise ValueError(f"config.model.head.name={name!r} is not a head; known: {sorted(HEADS)}")


def has_sampling_steps(name: str) -> bool:
  return name in FIELD_CHECKS and "num_sampling_steps" in checks.config_fields(HEADS[name])


def head_fields(head_cfg) -> dict:
  """The chosen head's effective fields: its defaults, then config.model.head.<name>,
  then the head-level num_sampling_steps override. {} for the regression heads."""
  name = head_cfg["name"]
  if name not in FIELD_CHECKS:
    return {}
  fields = checks.config_fields(HEADS[name])
  if name in head_cfg:
    fields.update(dict(head_cfg[name]))
  override = head_cfg.get("num_sampling_steps", 0)
  if override and has_sampling_steps(name):
    fields["num_sampling_steps"] = override
  return fields


def check_head_config(head_cfg) -> None:
  """Names and values of config.model.head; raises a one-line ValueError naming the field."""
  check_head_name(head_cfg["name"])
  for key in head_cfg:
    if key not in TOP_FIELDS:
      raise ValueError(f"config.model.head.{key} is not a head field; known: {list(TOP_FIELDS)}")
  if "num_sampling_steps" in head_cfg:
    checks.int_range("config.model.head", head_cfg, "num_sampling_steps", 0, MAX_SAMPLING_STEPS)
  for name, check in FIELD_CHECKS.items():
    if name not in head_cfg:
      continue
    prefix = f"config.model.head.{name}"
    known = checks.config_fields(HEADS[name])
    for key in head_cfg[name]:
      if key not in known:
        raise ValueError(f"{prefix}.{key} is not a field of the {name} head; known: {sorted(known)}")
    check(head_fields(head_cfg) if name == head_cfg["name"] else dict(known, **dict(head_cfg[name])), prefix)


def set_sampling_steps(head_cfg, steps: int) -> None:
  """Inference-time override of the chosen head's sampling steps (no retraining: same params)."""
  name = head_cfg["name"]
  if not has_sampling_steps(name):
    raise ValueError(f"head {name!r} has no sampling steps; heads that do: "
                     f"{[n for n in HEADS if has_sampling_steps(n)]}")
  head_cfg["num_sampling_steps"] = int(steps)
  check_head_config(head_cfg)


def loss_mask(batch):
  """The entries of ``batch["actions"]`` [B, K, A] a head is trained on: real steps of the chunk
  (``action_mask`` [B, K]) x real action dimensions of the dataset (``action_dim_mask`` [B, A])."""
  return batch["action_mask"][:, :, None] & batch["action_dim_mask"][:, None, :]


def chunk_loss(head, readout_BKD, batch, *, train: bool):
  """A policy's action loss: ``head`` on its K readout tokens against the batch's chunk, masked."""
  return head(readout_BKD, batch["actions"], loss_mask(batch), train=train)


def build_head(head_cfg, *, horizon: int, action_dim: int, dot_general=None):
  """The head module named by config.model.head.name, with its fields."""
  check_head_name(head_cfg["name"])
  name = head_cfg["name"]
  if name in ("l1", "mse"):
    return RegressionHead(horizon=horizon, action_dim=action_dim, loss_type=name)
  return HEADS[name](horizon=horizon, action_dim=action_dim, dot_general=dot_general, **head_fields(head_cfg))
