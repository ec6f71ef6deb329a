"""One checkpoint layout, written by Orbax.

Each step directory holds three items:
  state      TrainState (params, optimizer, EMA, step, rng), sharded arrays
  data_iter  the Grain iterator state (same next batch after restore)
  assets     JSON: resolved config, normalization statistics, tokenizer spec,
             dataset names. Everything inference needs besides params.

Orbax writes each step into a temporary directory and renames it when complete
(atomic commit), so a killed save never looks finished. ``latest_step()`` does
not validate a step (FACTS.md), so restoring walks back from the newest step
and skips a damaged one with a warning, moving it to ``damaged/``. A readable step
that holds another model's state is an error, never a fallback.

Resume order (fixed): this run's own workdir; else ``train.init_from`` (params
only, by path); else scratch.
"""

import pathlib
from typing import Any, Optional

import grain
import numpy as np
import jax
import orbax.checkpoint as ocp
from absl import logging

from wam_jax.training import state as state_lib


class Checkpointer:

  def __init__(self, directory, *, keep_last: int = 3, keep_every: int = 0, async_save: bool = True,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last or None, keep_period=keep_every or None,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_iter, assets: dict, force: bool = False) -> bool:
    items = dict(state=ocp.args.StandardSave(state), assets=ocp.args.JsonSave(assets))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iter=None, step: Optional[int] = None):
    """Restores the newest readable step (or exactly ``step``).

    ``abstract_state`` is a pytree of jax.ShapeDtypeStruct with shardings: the
    arrays come back laid out for the current mesh, whatever mesh saved them.
    Returns (state, assets, step), or None if there is no readable checkpoint.

    Two failures are told apart. A step whose saved arrays do not match
    ``abstract_state`` (another model, optimizer or EMA setting) raises
    ``IncompatibleCheckpointError``: that is a different run, not damage, and
    falling back to an older step would restore the same mismatch. A step that
    cannot be read (missing or corrupt files) is damage: it is moved aside to
    ``damaged/`` (so later saves of that step number are not blocked) and the
    next older step is tried. An explicit ``step`` that fails raises.
    """
    candidates = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in candidates:
      try:
        saved = _signature(ocp.PyTreeCheckpointer().metadata(self.directory / str(s) / "state").item_metadata.tree)
      except Exception as e:  # noqa: BLE001 (missing/corrupt metadata: damage)
        if step is not None:
          raise
        self._set_aside(s, e)
        continue
      check_compatible(saved, _signature(abstract_state), where=f"{self.directory / str(s)}")
      items = dict(state=ocp.args.StandardRestore(abstract_state), assets=ocp.args.JsonRestore())
      if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001 (structure matched, so this is damage: bad array or file)
        if step is not None:
          raise
        self._set_aside(s, e)
        continue
      return restored["state"], restored["assets"], s
    return None

  def restore_assets(self, step: Optional[int] = None) -> tuple[dict, int]:
    """(assets, step) of the newest readable step (or exactly ``step``); damaged steps are set aside."""
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in steps:
      try:
        return self.manager.restore(s, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))["assets"], s
      except Exception as e:  # noqa: BLE001
        if step is not None:
          raise
        self._set_aside(s, e)
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def _set_aside(self, step: int, error: Exception):
    """A damaged step: warn, and (when writable) move it to ``damaged/<step>-<n>``, out of Orbax's view."""
    reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    if self.read_only:
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying an older one",
                      step, self.directory, reason)
      return
    damaged = self.directory / "damaged"
    damaged.mkdir(exist_ok=True)
    n = sum(1 for p in damaged.iterdir() if p.name.startswith(f"{step}-"))
    dest = damaged / f"{step}-{n}"
    (self.directory / str(step)).rename(dest)
    self.manager.reload()
    logging.warning("checkpoint step %d in %s is unreadable (%s): moved to %s; trying an older one",
                    step, self.directory, reason, dest)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class IncompatibleCheckpointError(ValueError):
  """A checkpoint that is readable but holds another model's state (not damage)."""


def _signature(tree) -> dict:
  """{"params/block_0/mlp/wi/kernel": (shape, dtype)} for a state or its saved metadata.

  Paths are normalized to plain names, so a TrainState (attributes, tuples)
  and Orbax's metadata of it (dicts, lists) compare equal.
  """
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name) for path, leaf in leaves}


def check_compatible(saved: dict, expected: dict, where: str) -> None:
  """Raises IncompatibleCheckpointError naming the first differing leaves of two signatures."""
  if saved == expected:
    return
  missing = sorted(set(expected) - set(saved))
  extra = sorted(set(saved) - set(expected))
  changed = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
  parts = []
  if changed:
    parts.append("shape/dtype differs: " + ", ".join(f"{k} saved {saved[k]} vs now {expected[k]}"
                                                      for k in changed[:3]))
  if missing:
    parts.append(f"not in the checkpoint: {', '.join(missing[:3])}")
  if extra:
    parts.append(f"only in the checkpoint: {', '.join(extra[:3])}")
  total = len(changed) + len(missing) + len(extra)
  raise IncompatibleCheckpointError(
      f"checkpoint {where} holds another model's state ({total} leaves differ; " + "; ".join(parts) +
      "): train in a new --workdir, or restore the config it was trained with")


def abstract_with_shardings(tree: Any, shardings: Any):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def parse_path_map(spec: str) -> tuple[tuple[str, str], ...]:
  """``"src=dst,src2=dst2"`` -> ((src, dst), ...): parameter-path prefixes, '/'-separated.

  ``"=vlm/"`` puts every saved leaf under ``vlm/``; ``"backbone/=world/backbone/"``
  moves one subtree. Prefixes are tried in order; the first that matches wins.
  """
  pairs = []
  for item in (p.strip() for p in spec.split(",") if p.strip()):
    if item.count("=") != 1:
      raise ValueError(f"config.train.init_from_map entry {item!r} is not 'src_prefix=dst_prefix'")
    src, dst = (x.strip() for x in item.split("="))
    pairs.append((src, dst))
  return tuple(pairs)


def load_params_into(run_dir, params, step: Optional[int] = None, path_map: str = ""):
  """Partial restore by parameter path (fine-tuning, stage-to-stage transfer).

  Copies each leaf of ``run_dir``'s saved params (its EMA params if it kept
  them) whose path and shape match a leaf of ``params``; every other leaf keeps
  its fresh initialization. ``path_map`` (``parse_path_map``) renames the saved
  paths first: a saved leaf whose path starts with no ``src`` of the map is
  dropped when a map is given (a hand-off restores exactly what it names). Logs
  what was restored and what was not. Returns the new params (same shardings).
  """
  src = Checkpointer(pathlib.Path(run_dir) / "checkpoints", read_only=True)
  steps = [step] if step is not None else sorted(src.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"config.train.init_from={run_dir!r}: no checkpoints in {src.directory}")
  path = src.directory / str(steps[0]) / "state"
  meta = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  saved = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  # The EMA params when the source run kept them: they are what its policy used.
  source = saved.get("ema_params") or saved["params"]
  saved = {state_lib.param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(source)}
  rules = parse_path_map(path_map)
  if rules:
    renamed = {}
    for key, value in saved.items():
      for prefix, dst in rules:
        if key.startswith(prefix):
          renamed[dst + key[len(prefix):]] = value
          break
    saved = renamed
  copied, kept = [], []

  def take(key_path, leaf):
    key = state_lib.param_path(key_path)
    if key in saved and saved[key].shape == leaf.shape:
      copied.append(key)
      return jax.device_put(saved[key].astype(leaf.dtype), leaf.sharding)
    kept.append(key)
    return leaf

  out = jax.tree_util.tree_map_with_path(take, params)
  logging.info("init_from %s step %d: restored %d leaves, kept fresh %d: %s",
               run_dir, steps[0], len(copied), len(kept), kept[:20])
  if not copied:
    raise ValueError(f"config.train.init_from={run_dir!r} (init_from_map={path_map!r}): no parameter "
                     f"path/shape matched this model")
  src.close()
  return out
