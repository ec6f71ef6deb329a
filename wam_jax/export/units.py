"""Names and units of each action and proprio dim, by dataset, for the manifest.

The data registry maps keys, not meanings; these tables say what a number
means to whoever drives a robot or a simulator with an exported policy. A
dataset missing here gets generic names (``action_0``...) and the unit "as in
the dataset", which the manifest says plainly rather than guessing.
"""

from typing import Optional

_METAWORLD = {
    "action": [
        ("dx", "hand target displacement along world x; 1 unit = 1 cm (MetaWorld action_scale 1/100 m), "
               "clipped to [-1, 1] by the env"),
        ("dy", "same, world y"),
        ("dz", "same, world z"),
        ("gripper", "finger actuator effort in [-1, 1]: +1 closes, -1 opens"),
    ],
    "proprio": [
        ("hand_x", "hand position, world frame, m"),
        ("hand_y", "hand position, world frame, m"),
        ("hand_z", "hand position, world frame, m"),
        ("gripper_opening", "finger distance / 0.1 m, clipped to [0, 1] (0 closed)"),
    ],
}

_BRIDGE = {
    "action": [
        ("dx", "end-effector displacement, m"), ("dy", "end-effector displacement, m"),
        ("dz", "end-effector displacement, m"), ("droll", "end-effector rotation, rad"),
        ("dpitch", "end-effector rotation, rad"), ("dyaw", "end-effector rotation, rad"),
        ("gripper", "absolute gripper command as recorded (not normalized)"),
    ],
}


def _table(dataset: str) -> dict:
  if dataset.startswith("metaworld"):
    return _METAWORLD
  if dataset == "bridge":
    return _BRIDGE
  return {}


def dims(dataset: str, what: str, n: int, start: Optional[int] = 0) -> list[dict]:
  """[{"index", "name", "unit"}] for ``n`` dims of ``what`` ("action" or "proprio")
  starting at ``start`` in the dataset's vector."""
  known = _table(dataset).get(what, [])
  out = []
  for i in range(n):
    j = i + (start or 0)
    name, unit = known[j] if j < len(known) else (f"{what}_{j}", "as in the dataset (not documented here)")
    out.append({"index": i, "name": name, "unit": unit})
  return out
