"""One-line validation of head config fields, naming ``config.model.head.<name>.<field>``."""

import dataclasses


def config_fields(module_cls, exclude=("horizon", "action_dim", "dot_general", "parent", "name")) -> dict:
  """{field: default} of a head module's dataclass: the head's sub-config, defined once."""
  return {f.name: f.default for f in dataclasses.fields(module_cls)
          if f.name not in exclude and f.default is not dataclasses.MISSING}


def choice(prefix: str, cfg, field: str, choices) -> None:
  if cfg[field] not in choices:
    raise ValueError(f"{prefix}.{field}={cfg[field]!r} is not one of {list(choices)}")


def int_range(prefix: str, cfg, field: str, lo: int, hi: int) -> None:
  v = cfg[field]
  if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
    raise ValueError(f"{prefix}.{field}={v!r} must be an integer in [{lo}, {hi}]")


def positive(prefix: str, cfg, field: str) -> None:
  v = cfg[field]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
    raise ValueError(f"{prefix}.{field}={v!r} must be a positive number")


def divisible(prefix: str, cfg, field: str, by_field: str) -> None:
  if cfg[field] % cfg[by_field]:
    raise ValueError(f"{prefix}.{field}={cfg[field]} is not divisible by {prefix}.{by_field}={cfg[by_field]}")
