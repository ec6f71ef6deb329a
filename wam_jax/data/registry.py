"""Open-X standardization: how each dataset's RLDS keys map to canonical ones.

Data, not code paths. Each ``DatasetSpec`` says where a dataset lives under
``data_dir``, which image features are the canonical cameras
(``primary``/``secondary``/``wrist``), which step features hold proprio,
action and language, and which action dims get normalized (grippers usually
not: they are already in a fixed range and often binary).

Keys are paths inside one RLDS step, "/"-separated, e.g.
``observation/image_0``. ``validate_features`` checks a spec against a
dataset's ``features.json`` so a typo fails at start-up, naming the key.
"""

import dataclasses
from typing import Mapping, Optional

from wam_jax.data import batch as batch_lib


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Canonical view of one RLDS dataset.

  Attributes:
    name: registry name (what ``data.mixture`` refers to).
    directory: TFDS version directory relative to ``data_dir``.
    cameras: canonical camera -> step image key. Cameras not listed are
      absent in this dataset (windows get zero frames for them).
    proprio_key: step key of the proprio vector [P_raw].
    proprio_dims: optional (start, stop) slice of the proprio vector.
    action_key: step key of the action [A]; None for action-free video.
    action_normalize_mask: one bool per action dim; False dims pass through.
    language_key: step key of the instruction text ('' for none).
  """
  name: str
  directory: str
  cameras: Mapping[str, str]
  proprio_key: str
  action_key: Optional[str]
  action_normalize_mask: tuple[bool, ...] = ()
  proprio_dims: Optional[tuple[int, int]] = None
  language_key: str = "language_instruction"

  @property
  def action_free(self) -> bool:
    return self.action_key is None

  def step_keys(self) -> dict[str, str]:
    """Role -> step key for every feature this spec reads."""
    keys = {f"camera {cam}": key for cam, key in self.cameras.items()}
    keys["proprio"] = self.proprio_key
    if self.action_key:
      keys["action"] = self.action_key
    if self.language_key:
      keys["language"] = self.language_key
    return keys


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  for cam in spec.cameras:
    if cam not in batch_lib.CAMERAS:
      raise ValueError(f"dataset {spec.name!r}: unknown camera {cam!r}; known {batch_lib.CAMERAS}")
  _REGISTRY[spec.name] = spec
  return spec


def get_spec(name: str) -> DatasetSpec:
  if name not in _REGISTRY:
    raise ValueError(f"unknown dataset {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def _get_feature(step_features, key: str):
  node = step_features
  for part in key.split("/"):
    node = node[part]
  return node


def step_features(features):
  """The per-step FeaturesDict of an RLDS episode FeaturesDict."""
  return features["steps"].feature


def validate_features(spec: DatasetSpec, features) -> None:
  """Raises ValueError naming the dataset and key a spec needs but features lack.

  Also checks that the action dims match ``action_normalize_mask``.
  """
  steps = step_features(features)
  for role, key in spec.step_keys().items():
    try:
      feature = _get_feature(steps, key)
    except (KeyError, TypeError):
      available = sorted(_flat_keys(steps))
      raise ValueError(
          f"dataset {spec.name!r}: {role} key {key!r} is not a step feature; "
          f"step features: {available}") from None
    if role == "action":
      (dim,) = feature.shape
      if len(spec.action_normalize_mask) != dim:
        raise ValueError(
            f"dataset {spec.name!r}: action {key!r} has {dim} dims but "
            f"action_normalize_mask has {len(spec.action_normalize_mask)}")


def _flat_keys(node, prefix=""):
  sub = getattr(node, "keys", None)
  if sub is None:
    return [prefix[:-1]]
  out = []
  for k in node.keys():
    out += _flat_keys(node[k], prefix + k + "/")
  return out


def get_step_value(step: Mapping, key: str):
  """Reads a "/"-separated key from one decoded step dict."""
  node = step
  for part in key.split("/"):
    node = node[part]
  return node


# --- Entries -----------------------------------------------------------------

register(DatasetSpec(
    name="bridge",
    directory="bridge_dataset/1.0.0",
    cameras={"primary": "observation/image_0", "secondary": "observation/image_1"},
    proprio_key="observation/state",
    action_key="action",
    # xyz, rpy deltas normalized; gripper (last) is absolute open/close.
    action_normalize_mask=(True,) * 6 + (False,),
))

_METAWORLD_CAMERAS = {"primary": "observation/image"}

register(DatasetSpec(
    name="metaworld_demos",
    directory="metaworld_demos/1.0.0",
    cameras=_METAWORLD_CAMERAS,
    proprio_key="observation/state",   # hand xyz + gripper opening [4].
    action_key="action",               # xyz delta + gripper torque in [-1, 1].
    action_normalize_mask=(True, True, True, False),
))

register(DatasetSpec(
    name="metaworld_video",
    directory="metaworld_video/1.0.0",
    cameras=_METAWORLD_CAMERAS,
    proprio_key="observation/state",
    action_key=None,                   # action-free: no steps/action feature.
))

# The MetaWorld protocol (shared/PROTOCOL.md; generated by wam_jax/ablations/protocol.py):
# MT10 demos at N per task (nested subsets of one generation) and the action-free video pool.
for _n in (2, 5, 20):
  register(DatasetSpec(
      name=f"metaworld_mt10_n{_n}",
      directory=f"metaworld_mt10_n{_n}/1.0.0",
      cameras=_METAWORLD_CAMERAS,
      proprio_key="observation/state",
      action_key="action",
      action_normalize_mask=(True, True, True, False),
  ))

register(DatasetSpec(
    name="metaworld_video_pool",
    directory="metaworld_video_pool/1.0.0",
    cameras=_METAWORLD_CAMERAS,
    proprio_key="observation/state",
    action_key=None,
))
