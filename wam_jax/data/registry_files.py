"""Registry files: dataset entries and named mixtures as data (JSON, YAML or Python).

``load(path)`` checks a whole file before registering anything from it; every
problem is one line naming the file and the field (``my.json: datasets.x.action[2].ops[0].op:
unknown op 'flp'; known: flip, rescale, binarize, clip``). Format (JSON shown;
YAML is the same tree; a ``.py`` file defines the same dict as ``REGISTRY``)::

  {"datasets": {
     "<name>": {
       "directory": "<dir>/<version>",              # under data.data_dir
       "cameras": {"primary": "observation/image"}, # primary / secondary / wrist
       "proprio": ["observation/state"],            # [] if none
       "action": [                                  # null for action-free video
         "action/world_vector",
         {"key": "action/gripper", "dims": [0, 1],
          "ops": [{"op": "clip", "range": [0, 1]}, {"op": "flip"}]},
         {"fill": 0.0, "size": 3}],
       "action_normalize_mask": [true, ..., false], # one per action dim
       "action_kind": {"space": "eef", "mode": "delta", "rotation": "euler",
                       "gripper": "absolute"},
       "language": "language_instruction",          # "" if none
       "language_encoding": "text",                 # or "codepoints"
       "comment": "free text"}},
   "mixtures": {
     "<name>": {"datasets": {"<dataset>": 1.0, ...}, "balance": false}}}

Ops: ``flip`` (1 - x), ``rescale`` ("from": [lo, hi], "to": [a, b], default
[0, 1]), ``binarize`` ("threshold", default 0.5: x > t -> 1 else 0), ``clip``
("range": [lo, hi]). A mixture with ``"balance": true`` weighs each dataset
by weight x its number of steps (the Octo/OpenVLA reading of the Open-X weights).
"""

import json
import pathlib
import runpy
from typing import Any

from wam_jax.data import batch as batch_lib
from wam_jax.data import registry


_LOADED: dict = {}  # (path, size, mtime_ns) -> what it registered.


class _Bad(ValueError):
  def __init__(self, field: str, problem: str):
    super().__init__(f"{field}: {problem}")


def _type_name(v) -> str:
  return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
          type(None): "null"}.get(type(v), type(v).__name__)


def _obj(v, field, known, required=()) -> dict:
  if not isinstance(v, dict):
    raise _Bad(field, f"expected an object, got {_type_name(v)}")
  for k in v:
    if k not in known:
      raise _Bad(f"{field}.{k}", f"unknown field; known: {', '.join(known)}")
  for k in required:
    if k not in v:
      raise _Bad(f"{field}.{k}", "missing (required)")
  return v


def _str(v, field, allow_empty=True) -> str:
  if not isinstance(v, str) or (not allow_empty and not v):
    raise _Bad(field, f"expected a{' non-empty' if not allow_empty else ''} string, got {v!r}")
  return v


def _num(v, field) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise _Bad(field, f"expected a number, got {_type_name(v)} {v!r}")
  return float(v)


def _int(v, field) -> int:
  if isinstance(v, bool) or not isinstance(v, int):
    raise _Bad(field, f"expected an integer, got {_type_name(v)} {v!r}")
  return v


def _pair(v, field, conv=_num) -> tuple:
  if not isinstance(v, list) or len(v) != 2:
    raise _Bad(field, f"expected a list of 2, got {v!r}")
  return conv(v[0], f"{field}[0]"), conv(v[1], f"{field}[1]")


def _choice(v, field, allowed) -> str:
  if v not in allowed:
    raise _Bad(field, f"{v!r} is not one of {', '.join(allowed)}")
  return v


def _op(v, field) -> registry.Op:
  v = _obj(v, field, ("op", "from", "to", "threshold", "range"), required=("op",))
  name = _choice(v["op"], f"{field}.op", registry.OPS)
  allowed = {"flip": (), "rescale": ("from", "to"), "binarize": ("threshold",), "clip": ("range",)}[name]
  for k in v:
    if k != "op" and k not in allowed:
      raise _Bad(f"{field}.{k}", f"not a field of op {name!r}; it takes: {', '.join(allowed) or 'nothing'}")
  if name == "rescale":
    if "from" not in v:
      raise _Bad(f"{field}.from", "missing (required by rescale)")
    lo, hi = _pair(v["from"], f"{field}.from")
    if lo == hi:
      raise _Bad(f"{field}.from", f"empty range {v['from']}")
    return registry.Op("rescale", (lo, hi) + _pair(v.get("to", [0, 1]), f"{field}.to"))
  if name == "binarize":
    return registry.Op("binarize", (_num(v.get("threshold", 0.5), f"{field}.threshold"),))
  if name == "clip":
    if "range" not in v:
      raise _Bad(f"{field}.range", "missing (required by clip)")
    return registry.Op("clip", _pair(v["range"], f"{field}.range"))
  return registry.Op("flip")


def _part(v, field) -> registry.Part:
  if isinstance(v, str):
    return registry.Part(key=_str(v, field, allow_empty=False))
  v = _obj(v, field, ("key", "dims", "ops", "fill", "size", "comment"))
  if ("key" in v) == ("fill" in v):
    raise _Bad(field, "a part has either a 'key' or a 'fill' (with 'size')")
  if "fill" in v:
    for k in ("dims", "ops"):
      if k in v:
        raise _Bad(f"{field}.{k}", "not allowed on a fill part")
    if "size" not in v:
      raise _Bad(f"{field}.size", "missing (required with fill)")
    size = _int(v["size"], f"{field}.size")
    if size <= 0:
      raise _Bad(f"{field}.size", f"must be > 0, got {size}")
    return registry.Part(fill=_num(v["fill"], f"{field}.fill"), size=size)
  if "size" in v:
    raise _Bad(f"{field}.size", "only for fill parts")
  dims = None
  if "dims" in v:
    dims = _pair(v["dims"], f"{field}.dims", _int)
    if not 0 <= dims[0] < dims[1]:
      raise _Bad(f"{field}.dims", f"{list(dims)} must be [start, stop) with 0 <= start < stop")
  ops = v.get("ops", [])
  if not isinstance(ops, list):
    raise _Bad(f"{field}.ops", f"expected a list, got {_type_name(ops)}")
  return registry.Part(key=_str(v["key"], f"{field}.key", allow_empty=False), dims=dims,
                       ops=tuple(_op(o, f"{field}.ops[{i}]") for i, o in enumerate(ops)))


def _parts(v, field) -> tuple:
  if isinstance(v, str):
    return (_part(v, field),)
  if not isinstance(v, list):
    raise _Bad(field, f"expected a key or a list of parts, got {_type_name(v)}")
  return tuple(_part(p, f"{field}[{i}]") for i, p in enumerate(v))


_DATASET_FIELDS = ("directory", "cameras", "proprio", "action", "action_normalize_mask",
                   "action_kind", "language", "language_encoding", "comment")


def _dataset(name: str, v, field: str, source: str) -> registry.DatasetSpec:
  v = _obj(v, field, _DATASET_FIELDS, required=("directory", "cameras", "proprio", "action"))
  cams = _obj(v["cameras"], f"{field}.cameras", batch_lib.CAMERAS)
  cameras = {c: _str(k, f"{field}.cameras.{c}", allow_empty=False) for c, k in cams.items()}
  action = None if v["action"] is None else _parts(v["action"], f"{field}.action")
  if action is not None and not action:
    raise _Bad(f"{field}.action", "empty; use null for an action-free dataset")
  mask = v.get("action_normalize_mask")
  if action is None:
    if mask:
      raise _Bad(f"{field}.action_normalize_mask", "given for an action-free dataset")
    mask = []
  elif mask is None:
    raise _Bad(f"{field}.action_normalize_mask", "missing (required when there is an action)")
  if not isinstance(mask, list) or not all(isinstance(b, bool) for b in mask):
    raise _Bad(f"{field}.action_normalize_mask", f"expected a list of booleans, got {mask!r}")
  kind = None
  if "action_kind" in v:
    k = _obj(v["action_kind"], f"{field}.action_kind", ("space", "mode", "rotation", "gripper"),
             required=("space", "mode", "rotation", "gripper"))
    kind = registry.ActionKind(
        space=_choice(k["space"], f"{field}.action_kind.space", registry.SPACES),
        mode=_choice(k["mode"], f"{field}.action_kind.mode", registry.MODES),
        rotation=_choice(k["rotation"], f"{field}.action_kind.rotation", registry.ROTATIONS),
        gripper=_choice(k["gripper"], f"{field}.action_kind.gripper", registry.GRIPPERS))
  return registry.DatasetSpec(
      name=name, directory=_str(v["directory"], f"{field}.directory", allow_empty=False),
      cameras=cameras, proprio_key=_parts(v["proprio"], f"{field}.proprio"), action_key=action,
      action_normalize_mask=tuple(mask), action_kind=kind,
      language_key=_str(v.get("language", "language_instruction"), f"{field}.language"),
      language_encoding=_choice(v.get("language_encoding", "text"), f"{field}.language_encoding",
                                registry.LANGUAGE_ENCODINGS),
      source=source)


def _mixture(name: str, v, field: str, source: str) -> registry.Mixture:
  v = _obj(v, field, ("datasets", "balance", "comment"), required=("datasets",))
  ds = _obj(v["datasets"], f"{field}.datasets", tuple(v["datasets"]) if isinstance(v["datasets"], dict) else ())
  if not ds:
    raise _Bad(f"{field}.datasets", "empty")
  weights = []
  for d, w in ds.items():
    w = _num(w, f"{field}.datasets.{d}")
    if not w > 0:
      raise _Bad(f"{field}.datasets.{d}", f"weight must be > 0, got {w:g}")
    weights.append((d, w))
  balance = v.get("balance", False)
  if not isinstance(balance, bool):
    raise _Bad(f"{field}.balance", f"expected a boolean, got {balance!r}")
  return registry.Mixture(name=name, datasets=tuple(weights), balance=balance, source=source)


def read(path) -> Any:
  """The raw tree of a registry file (.json, .yaml/.yml, or .py defining REGISTRY)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"registry file {path} does not exist")
  suffix = path.suffix.lower()
  try:
    if suffix == ".json":
      return json.loads(path.read_text())
    if suffix in (".yaml", ".yml"):
      import yaml
      return yaml.safe_load(path.read_text())
    if suffix == ".py":
      tree = runpy.run_path(str(path)).get("REGISTRY")
      if tree is None:
        raise ValueError("defines no REGISTRY dict")
      return tree
  except (ValueError, SyntaxError) as e:  # json.JSONDecodeError and yaml errors are ValueErrors/YAMLError.
    raise ValueError(f"{path}: not a valid {suffix[1:]} registry file: {str(e).splitlines()[0]}") from None
  except Exception as e:  # yaml.YAMLError and errors raised by a .py file.
    raise ValueError(f"{path}: cannot read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  raise ValueError(f"registry file {path}: unknown format {suffix!r} (use .json, .yaml, .yml or .py)")


def parse(tree, source: str) -> tuple[list, list]:
  """(DatasetSpecs, Mixtures) of a file's tree; ValueError '<source>: <field>: <problem>'."""
  try:
    tree = _obj(tree, "(top level)", ("datasets", "mixtures", "comment"))
    specs, mixtures = [], []
    for section, build, out in (("datasets", _dataset, specs), ("mixtures", _mixture, mixtures)):
      entries = tree.get(section, {})
      if not isinstance(entries, dict):
        raise _Bad(section, f"expected an object of name -> entry, got {_type_name(entries)}")
      for name, v in entries.items():
        try:
          out.append(build(name, v, f"{section}.{name}", source))
        except _Bad:
          raise
        except ValueError as e:  # Checks inside the dataclasses (Op, Part, ActionKind).
          raise _Bad(f"{section}.{name}", str(e)) from None
    return specs, mixtures
  except _Bad as e:
    raise ValueError(f"{source}: {e}") from None


def load(path) -> tuple[list, list]:
  """Reads, checks and registers one file; returns its (specs, mixtures).

  Nothing is registered unless the whole file is valid. Loading a file again
  is a no-op; a name another file defined differently is an error naming both.
  """
  path = pathlib.Path(path)
  source = str(path.resolve())
  st = path.stat() if path.is_file() else None
  version = (source, st.st_size, st.st_mtime_ns) if st else None
  done = _LOADED.get(version)  # Unchanged and still registered: nothing to do (inference calls this per step).
  if done is not None and all(registry.is_registered(e) for e in done[0] + done[1]):
    return done
  specs, mixtures = parse(read(path), source)
  for entry in specs + mixtures:  # Every clash first: a file registers whole or not at all.
    registry.check_new(entry)
  for spec in specs:
    registry.register(spec)
  for m in mixtures:
    registry.register_mixture(m)
  _LOADED[version] = (specs, mixtures)
  return specs, mixtures


def load_all(paths) -> None:
  """``data.registry_files``: comma-separated paths (or a sequence); '' loads nothing."""
  if isinstance(paths, str):
    paths = [p.strip() for p in paths.split(",")]
  for p in paths:
    if p and not pathlib.Path(p).is_file():
      raise ValueError(f"data.registry_files: {p} does not exist")
    if p:
      load(p)
