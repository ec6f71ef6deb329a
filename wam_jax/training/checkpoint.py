"""One checkpoint layout, written by Orbax.

Each step directory holds three items:
  state      TrainState (params, optimizer, EMA, step, rng), sharded arrays
  data_iter  the Grain iterator state (same next batch after restore)
  assets     JSON: resolved config, normalization statistics, tokenizer spec,
             dataset names. Everything inference needs besides params.

Orbax writes each step into a temporary directory and renames it when complete
(atomic commit), so a killed save never looks finished. ``latest_step()`` does
not validate a step (FACTS.md), so restoring walks back from the newest step
and skips a damaged one with a warning.

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


class Checkpointer:

  def __init__(self, directory, *, keep_last: int = 3, keep_every: int = 0, async_save: bool = True,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
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
    A damaged newer step is skipped with a warning, never fatal; an explicit
    ``step`` that fails raises.
    """
    candidates = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in candidates:
      items = dict(state=ocp.args.StandardRestore(abstract_state), assets=ocp.args.JsonRestore())
      if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001 (any damage: missing file, bad metadata, bad array)
        if step is not None:
          raise
        logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                        s, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      return restored["state"], restored["assets"], s
    return None

  def restore_assets(self, step: Optional[int] = None) -> tuple[dict, int]:
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in steps:
      try:
        return self.manager.restore(s, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))["assets"], s
      except Exception as e:  # noqa: BLE001
        if step is not None:
          raise
        logging.warning("assets of step %d unreadable (%s); trying an older one", s, e)
    raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def load_params_into(run_dir, params, step: Optional[int] = None):
  """Partial restore by parameter path (fine-tuning, stage-to-stage transfer).

  Copies each leaf of ``run_dir``'s saved params (its EMA params if it kept
  them) whose path and shape match a
  leaf of ``params``; every other leaf keeps its fresh initialization. Logs
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
  saved = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source)}
  copied, kept = [], []

  def take(key_path, leaf):
    key = jax.tree_util.keystr(key_path)
    if key in saved and saved[key].shape == leaf.shape:
      copied.append(key)
      return jax.device_put(saved[key].astype(leaf.dtype), leaf.sharding)
    kept.append(key)
    return leaf

  out = jax.tree_util.tree_map_with_path(take, params)
  logging.info("init_from %s step %d: restored %d leaves, kept fresh %d: %s",
               run_dir, steps[0], len(copied), len(kept), kept[:20])
  if not copied:
    raise ValueError(f"config.train.init_from={run_dir!r}: no parameter path/shape matched this model")
  src.close()
  return out
