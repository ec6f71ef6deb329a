"""Pseudo-labelling action-free video with a trained inverse-dynamics model (issue 12, use (a)).

``label_dataset(idm_workdir, src, out)`` (CLI: ``scripts/label_video.py``) reads
an action-free RLDS dataset episode by episode and writes a new RLDS dataset
in the schema of the demos the IDM learned from: every source feature copied
as is, plus ``steps/<action key>`` (the IDM dataset's registry action key,
e.g. ``action``) in that dataset's units, and two ``episode_metadata`` fields:
``pseudo_labeled`` (True) and ``idm_checkpoint`` ("<workdir>@<step>"). The
same two, with the source path and the rule below, are in ``pseudo_label.json``
beside ``dataset_info.json``. A registry entry pointing at the output (e.g.
``metaworld_video_labeled`` in ``registry/metaworld.json``) then reads it like
any demos: mixtures, windows and statistics need no special case.

What the IDM sees. Everything comes from its checkpoint (config, normalizer,
params: EMA if it has them), as in ``inference.CheckpointPolicy``. The source
is read with the registry entry of the IDM's labelled dataset (the first of its
training mixture with actions: cameras, proprio and language keys) minus the
action, so it must share the demos' observation schema; each step ``t`` becomes
the training window ``windows.cut_window`` would cut (history o_t-h+1..o_t,
future o_t+k, proprio normalized with that dataset's statistics).

Which action a step gets. Let L be the episode length, k =
``data.future_offset``, K = ``data.action_horizon`` and t0 = L-1-k the last
step whose o_t+k exists. For t <= t0, a_t is the FIRST action of the chunk
predicted for (o_t, o_t+k): every step gets a fresh prediction from its own
transition, and the first action is the one the IDM sees both ends of. The
last k steps have no o_t+k (a window there has ``future_mask`` False, rows the
IDM never trained on), so a_t for t > t0 is action t-t0 of the chunk predicted
at t0 (the last K-1 of that chunk continue it), repeating its last action past
the chunk's end (only the final step when K = k). An episode shorter than k+1
steps has no valid window at all: its window at 0 uses o_L-1 as the future
frame (marked valid). Actions are de-normalized with the IDM's normalizer and
cut to the dataset's action width. Sampling keys fold in (split, episode,
batch), so a stochastic head labels identically after a restart. Rerun with the
same ``batch_size``: XLA's float results can differ in the last bit between
batch shapes.

Streaming and resumption. One source episode is in memory at a time (the
source must be ArrayRecord: ``scripts/convert_rlds.py`` converts TFRecord).
Output shards are written into ``<out parent>/.<version>.partial/``: a shard
``<split>-<n>.array_record`` counts as done only once its sidecar
``<split>-<n>.json`` (first episode, count) exists, and the sidecar is written
(atomically) after the shard is closed. A restart keeps the done shards (their
episodes are skipped), deletes anything else, and continues; ``max_episodes``
stops after that many newly labelled episodes, closing the current shard. When
every split is done the shards get their TFDS names, ``dataset_info.json`` /
``features.json`` are written (as ``rlds_writer`` does) and the directory is
renamed to ``out`` in one step: ``out`` is either absent or complete, never
half-written. A partial directory made by another IDM checkpoint or source is
refused, as is an existing ``out`` labelled by another IDM.

The oracle (``label_dataset(EXPERT, src, out)``, ``label_video.py --expert``): the same output, labelled
by MetaWorld's scripted expert instead of an IDM (``ExpertLabeler``): a_t is the expert's action on the
full state the pool stored at step t (``observation/env_state``, the 39-d observation it acted on when
the pool was generated), i.e. the action it took, up to float32 rounding of that state. The upper bound
of pseudo-labelling: the pool's coverage without the IDM's label noise.
"""

import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from wam_jax.data import normalization, registry, registry_files, rlds, rlds_writer, windows
from wam_jax.data import tokenizer as tokenizer_lib

METADATA_FILE = "pseudo_label.json"
ACTION_RULE = ("a_t = first action of the chunk predicted for (o_t, o_t+k); the last k steps continue the chunk "
               "of the last step with a future frame")
EXPERT_RULE = "a_t = the scripted expert's action on the stored full state at t (oracle labels)"


# --- The IDM, from its checkpoint ----------------------------------------------------------------

@dataclasses.dataclass
class IDMLabeler:
  """A restored IDM run: ``chunks(windows)`` -> de-normalized action chunks in the dataset's units."""
  workdir: pathlib.Path
  step: int
  config: ml_collections.ConfigDict
  normalizer: normalization.Normalizer
  dataset_name: str   # the labelled dataset whose action space, statistics and schema the labels follow
  dataset_id: int
  params: object
  predict: Callable   # jitted (params, batch, rng) -> normalized chunks [B, K, A_pad]

  @property
  def checkpoint_id(self) -> str:
    return f"{self.workdir}@{self.step}"

  @functools.cached_property
  def window_spec(self) -> windows.WindowSpec:
    return windows.WindowSpec.from_config(self.config.data)

  @functools.cached_property
  def tokenizer(self):
    return tokenizer_lib.for_spec(self.window_spec)

  @property
  def action_dim(self) -> int:
    return self.normalizer.action_dim(self.dataset_name)

  def chunks(self, windows_list, rng, batch_size: int) -> np.ndarray:
    """Unbatched windows (N) -> float32 [N, K, A] de-normalized chunks, ``batch_size`` rows per call
    (the last batch is padded by repeating its last window: one compiled shape)."""
    out = []
    for b, start in enumerate(range(0, len(windows_list), batch_size)):
      part = windows_list[start:start + batch_size]
      rows = part + [part[-1]] * (batch_size - len(part))
      batch = {key: np.stack([w[key] for w in rows]) for key in rows[0]}
      pred_BKA = np.asarray(self.predict(self.params, batch, jax.random.fold_in(rng, b)))[:len(part)]
      out.append(pred_BKA)
    pred_NKA = np.concatenate(out)
    n, k, a = pred_NKA.shape
    actions = self.normalizer.denormalize_actions(pred_NKA.reshape(n * k, a), self.dataset_name)
    return actions[:, :self.action_dim].reshape(n, k, self.action_dim).astype(np.float32)

  @property
  def seed(self) -> int:  # sampling keys of a stochastic head: the run's own seed
    return int(self.config.seed)

  action_rule = ACTION_RULE

  def episode_actions(self, reader, e: int, example: dict, rng, batch_size: int) -> np.ndarray:
    """Episode ``e`` of ``reader`` -> its labels [L, A] (the rule of the module docstring)."""
    del example  # the IDM reads the episode as its training windows
    wspec = self.window_spec
    episode = windows.prepare_episode(
        reader.decode(e, cameras=wspec.cameras, image_size=wspec.image_size), wspec, self.normalizer,
        self.dataset_name, self.tokenizer)
    chunks = self.chunks(label_windows(episode, wspec, self.dataset_id), rng, batch_size)
    return step_actions(chunks, episode.length)


EXPERT = "expert"  # label_dataset(EXPERT, ...): the scripted expert is the labeller (the oracle)


@dataclasses.dataclass
class ExpertLabeler:
  """The oracle labeller: MetaWorld's scripted expert of the episode's task on each stored full state.

  Labels in the demos' units (the expert's actions clipped to [-1, 1], as ``rollout_expert`` stores
  them), under the action key of ``dataset_name``'s registry entry. Needs ``observation/env_state`` and
  ``episode_metadata/task`` in the source: the protocol's pool has both (a policy never reads them).
  """
  dataset_name: str = "metaworld_mt10_n20"
  checkpoint_id: str = "metaworld-scripted-expert"
  seed = 0  # deterministic: no key is ever drawn
  action_rule = EXPERT_RULE

  @property
  def action_dim(self) -> int:
    from wam_jax.sim import metaworld as mw  # pylint: disable=g-import-not-at-top  (MuJoCo)
    return mw.ACTION_DIM

  @staticmethod
  def actions(task: str, env_states_T39: np.ndarray) -> np.ndarray:
    """float32 [T, A]: the expert of ``task`` applied to each state."""
    from wam_jax.sim import metaworld_data  # pylint: disable=g-import-not-at-top  (MuJoCo)
    policy = metaworld_data.expert_policy(task)
    return np.stack([np.clip(policy.get_action(np.asarray(s, np.float64)), -1.0, 1.0)
                     for s in env_states_T39]).astype(np.float32)

  def episode_actions(self, reader, e: int, example: dict, rng, batch_size: int) -> np.ndarray:
    del reader, rng, batch_size
    meta = example.get("episode_metadata", {})
    task = meta.get("task", b"")
    task = task.decode() if isinstance(task, bytes) else str(task)
    states = [step.get("observation", {}).get("env_state") for step in example["steps"]]
    missing_state = any(s is None for s in states)
    if not task or missing_state:
      raise ValueError(f"episode {e}: the expert labeller needs episode_metadata/task and "
                       f"steps/observation/env_state (task {task!r}, env_state "
                       f"{'missing' if missing_state else 'present'})")
    return self.actions(task, np.stack(states))


def load_idm(workdir, step: Optional[int] = None, dataset_name: Optional[str] = None,
             use_ema: bool = True) -> IDMLabeler:
  """Restores an ``idm`` run from ``workdir`` (newest readable step, or ``step``)."""
  from wam_jax import inference  # pylint: disable=g-import-not-at-top  (jax models)
  from wam_jax.models import registry as model_registry  # pylint: disable=g-import-not-at-top

  run = inference.restore_run(workdir, step, use_ema=use_ema, model_name="idm", flag="--idm")
  names = run.dataset_names
  if dataset_name is None:
    dataset_name = next((n for n in names if not registry.get_spec(n).action_free), None)
  if dataset_name not in names:
    raise ValueError(f"--idm={run.workdir}: no labelled dataset {dataset_name!r} in its training mixture {names}")
  model = run.model
  return IDMLabeler(
      workdir=run.workdir, step=run.step, config=run.config, normalizer=run.normalizer, dataset_name=dataset_name,
      dataset_id=names.index(dataset_name), params=run.params,
      predict=jax.jit(lambda p, b, r: model_registry.predict_actions(model, p, b, r)))


# --- Windows and the per-step action rule --------------------------------------------------------

def label_windows(episode: windows.PreparedEpisode, wspec: windows.WindowSpec, dataset_id: int) -> list:
  """The IDM inputs of one episode: windows at t = 0..t0 (module docstring), unbatched."""
  t0 = max(episode.length - 1 - wspec.future_offset, 0)
  out = [windows.cut_window(episode, t, wspec, dataset_id) for t in range(t0 + 1)]
  if episode.length - 1 < wspec.future_offset:  # no o_t+k anywhere: the last frame is the future
    out[0]["future_mask"] = out[0]["future_mask"] | (np.arange(wspec.num_future) == 0)
  return out


def step_actions(chunks_NKA: np.ndarray, length: int) -> np.ndarray:
  """Chunks predicted at t = 0..t0 -> one action per step [length, A] (the rule of the module docstring)."""
  t0 = len(chunks_NKA) - 1
  t = np.arange(length)
  source = np.minimum(t, t0)
  index = np.minimum(t - source, chunks_NKA.shape[1] - 1)
  return chunks_NKA[source, index]


# --- Source and output schema --------------------------------------------------------------------

def source_spec(labeler: "IDMLabeler | ExpertLabeler", src) -> registry.DatasetSpec:
  """How the source is read: the labeller's dataset's registry entry, without the action."""
  spec = registry.get_spec(labeler.dataset_name)
  return dataclasses.replace(spec, name=f"{pathlib.Path(src).parent.name} (--src)", directory=str(src),
                             action_key=None, action_normalize_mask=(), action_kind=None)


def action_step_key(labeler: "IDMLabeler | ExpertLabeler") -> str:
  """The step key the labels are written under: that dataset's own (one plain top-level key)."""
  spec = registry.get_spec(labeler.dataset_name)
  parts = spec.action_parts
  if len(parts) != 1 or parts[0].dims or parts[0].ops or not parts[0].key or "/" in parts[0].key:
    raise ValueError(f"dataset {labeler.dataset_name!r}: action {[p.describe() for p in parts]} is not one plain "
                     "top-level step key; pseudo-labels are written in a single 'action'-style feature")
  return parts[0].key


def output_features(src_features, action_key: str, action_dim: int):
  """The source's FeaturesDict + steps/<action_key> float32 [A] + episode_metadata/{pseudo_labeled, idm_checkpoint}."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy)
  f = tfds.features
  steps = dict(src_features["steps"].feature.items())
  if action_key in steps:
    raise ValueError(f"--src already has steps/{action_key}: it is not action-free video")
  steps[action_key] = f.Tensor(shape=(action_dim,), dtype=np.float32)
  meta = dict(src_features["episode_metadata"].items()) if "episode_metadata" in src_features else {}
  meta.update(pseudo_labeled=f.Scalar(dtype=np.bool_), idm_checkpoint=f.Text())
  top = {k: v for k, v in src_features.items() if k not in ("steps", "episode_metadata")}
  return f.FeaturesDict(dict(top, steps=f.Dataset(steps), episode_metadata=f.FeaturesDict(meta)))


# --- Resumable shard store -----------------------------------------------------------------------

def partial_dir(out) -> pathlib.Path:
  out = pathlib.Path(out).absolute()
  return out.parent / f".{out.name}.partial"


def _write_json_atomic(path: pathlib.Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2))
  os.replace(tmp, path)


def done_shards(work: pathlib.Path, split: str) -> list[dict]:
  """The split's complete shards in order (a contiguous prefix whose sidecars agree); deletes the rest."""
  done, n, first = [], 0, 0
  while True:
    shard, side = work / f"{split}-{n:05d}.{rlds_writer.FILE_FORMAT}", work / f"{split}-{n:05d}.json"
    if not (shard.exists() and side.exists()):
      break
    info = json.loads(side.read_text())
    if info.get("first") != first:
      break
    done.append(dict(info, path=shard))
    first += int(info["count"])
    n += 1
  kept = {p for d in done for p in (d["path"], d["path"].with_suffix(".json"))}
  for p in work.glob(f"{split}-*"):
    if p not in kept:
      p.unlink()
  return done


class _ShardWriter:
  """Appends serialized episodes to ``<split>-<n>``; ``close()`` commits it with its sidecar."""

  def __init__(self, work: pathlib.Path, split: str, index: int, first: int):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self.path = work / f"{split}-{index:05d}.{rlds_writer.FILE_FORMAT}"
    self.first, self.count = first, 0
    self._writer = array_record_module.ArrayRecordWriter(str(self.path), "group_size:1")

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def close(self) -> None:
    self._writer.close()
    if self.count:
      _write_json_atomic(self.path.with_suffix(".json"), {"first": self.first, "count": self.count})
    else:
      self.path.unlink()


# --- The labelling loop --------------------------------------------------------------------------

def label_dataset(idm_workdir, src, out, *, batch_size: int = 64, max_episodes: Optional[int] = None,
                  episodes_per_shard: int = 100, step: Optional[int] = None, overwrite: bool = False,
                  log: Callable[[str], None] = print) -> dict:
  """Labels every episode of every split of ``src`` into ``out`` (module docstring), with the IDM run in
  ``idm_workdir``, or the scripted expert if it is ``EXPERT`` (the oracle).

  Returns {"status": "complete" | "partial" | "already_complete", "episodes": newly labelled,
  "skipped": already done, "seconds", "idm_checkpoint"}.
  """
  start = time.perf_counter()
  src, out = pathlib.Path(src).absolute(), pathlib.Path(out).absolute()
  if not (src / "dataset_info.json").exists():
    raise ValueError(f"--src={src}: not an RLDS dataset directory (no dataset_info.json)")
  rlds.check_disjoint(src, out)
  if not re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", out.name):
    raise ValueError(f"--out={out}: the last directory is the dataset's TFDS version, x.y.z (e.g. "
                     f"{out / '1.0.0'}); '{out.name}' is not one")
  if batch_size < 1 or episodes_per_shard < 1 or (max_episodes is not None and max_episodes < 0):
    raise ValueError(f"batch_size={batch_size}, episodes_per_shard={episodes_per_shard} must be >= 1 and "
                     f"max_episodes={max_episodes} >= 0")
  labeler = ExpertLabeler() if str(idm_workdir) == EXPERT else load_idm(idm_workdir, step)
  job = {"idm_checkpoint": labeler.checkpoint_id, "src": str(src)}
  work = partial_dir(out)
  if overwrite:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
  if out.exists():
    meta_path = out / METADATA_FILE
    done = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if {k: done.get(k) for k in job} != job:
      raise ValueError(f"--out={out} exists and was not labelled by {labeler.checkpoint_id} from {src} "
                       f"({meta_path.name}: {done or 'missing'}); pass --overwrite or another --out")
    log(f"[label_video] {out} is already complete ({labeler.checkpoint_id})")
    return dict(status="already_complete", episodes=0, skipped=0, seconds=time.perf_counter() - start,
                idm_checkpoint=labeler.checkpoint_id)
  work.mkdir(parents=True, exist_ok=True)
  job_path = work / "job.json"
  if job_path.exists() and json.loads(job_path.read_text()) != job:
    raise ValueError(f"{work} holds a partial labelling by {json.loads(job_path.read_text())}, not {job}; "
                     "delete it or pass --overwrite")
  _write_json_atomic(job_path, job)

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy)
  src_features = tfds.features.FeaturesDict.from_config(str(src))
  action_key = action_step_key(labeler)
  features = output_features(src_features, action_key, labeler.action_dim)
  spec = source_spec(labeler, src)
  splits = [s["name"] for s in rlds.read_dataset_info(src)["splits"]]
  readers = {split: rlds.RldsReader(src, split, spec) for split in splits}
  for split, reader in readers.items():
    if reader.file_format != rlds.ARRAY_RECORD:
      raise ValueError(f"--src={src} is {reader.file_format!r}; convert it to ArrayRecord first "
                       "(scripts/convert_rlds.py) so episodes can be streamed")
  totals = {split: len(reader) for split, reader in readers.items()}
  base_rng = jax.random.key(labeler.seed)
  labelled = skipped = 0
  last_log = time.perf_counter()
  budget_left = lambda: max_episodes is None or labelled < max_episodes

  for split_index, (split, reader) in enumerate(readers.items()):
    shards = done_shards(work, split)
    first = sum(int(s["count"]) for s in shards)
    skipped += first
    writer = None
    try:
      for e in range(first, totals[split]):
        if not budget_left():
          break
        if writer is None:
          writer = _ShardWriter(work, split, len(shards), e)
        example = src_features.deserialize_example_np(reader.raw(e))
        rng = jax.random.fold_in(jax.random.fold_in(base_rng, split_index), e)
        actions = labeler.episode_actions(reader, e, example, rng, batch_size)
        writer.write(_labelled_record(features, example, actions, action_key, labeler.checkpoint_id))
        labelled += 1
        if writer.count == episodes_per_shard:
          writer.close()
          shards.append(writer)
          writer = None
        now = time.perf_counter()
        if now - last_log > 10 or e + 1 == totals[split]:
          rate = 60 * labelled / max(now - start, 1e-9)
          log(f"[label_video] {split}: {e + 1}/{totals[split]} episodes ({labelled} labelled this run, "
              f"{skipped} done before; {rate:.1f} episodes/min)")
          last_log = now
    finally:  # whatever was written is committed, so a stop (or an error) keeps finished episodes
      if writer is not None:
        writer.close()
    if not budget_left():
      break

  seconds = time.perf_counter() - start
  if any(sum(int(s["count"]) for s in done_shards(work, split)) < totals[split] for split in splits):
    log(f"[label_video] stopped after {labelled} episodes (max_episodes={max_episodes}); "
        f"rerun the same command to continue")
    return dict(status="partial", episodes=labelled, skipped=skipped, seconds=seconds,
                idm_checkpoint=labeler.checkpoint_id)
  _finish(work, out, features, splits, dict(job, action_rule=labeler.action_rule, dataset=labeler.dataset_name,
                                            action_key=action_key, pseudo_labeled=True))
  log(f"[label_video] wrote {out}: {sum(totals.values())} episodes "
      f"({', '.join(f'{s} {n}' for s, n in totals.items())}) labelled by {labeler.checkpoint_id}")
  return dict(status="complete", episodes=labelled, skipped=skipped, seconds=time.perf_counter() - start,
              idm_checkpoint=labeler.checkpoint_id)


def _labelled_record(features, example: dict, actions_TA, action_key: str, checkpoint_id: str) -> bytes:
  """The source episode (all its features, decoded) with the labels and metadata added, serialized."""
  steps = [dict(s, **{action_key: actions_TA[t]}) for t, s in enumerate(example["steps"])]
  if len(steps) != len(actions_TA):
    raise ValueError(f"episode has {len(steps)} steps but {len(actions_TA)} labels")
  meta = dict(example.get("episode_metadata", {}), pseudo_labeled=True, idm_checkpoint=checkpoint_id)
  episode = dict(example, steps=steps, episode_metadata=meta)
  return features.serialize_example(rlds_writer.to_pil_images(features, episode))


def _finish(work: pathlib.Path, out: pathlib.Path, features, splits, metadata: dict) -> None:
  """Done shards -> TFDS names + metadata, then one rename to ``out``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, version = out.parent.name, out.name
  split_infos = []
  for split in splits:
    shards = done_shards(work, split)
    lengths, num_bytes = [], 0
    for k, s in enumerate(shards):
      final = work / f"{name}-{split}.{rlds_writer.FILE_FORMAT}-{k:05d}-of-{len(shards):05d}"
      s["path"].rename(final)
      s["path"].with_suffix(".json").unlink()
      lengths.append(int(s["count"]))
      num_bytes += final.stat().st_size
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes))
  tfds.folder_dataset.write_metadata(
      data_dir=work, features=features, split_infos=split_infos, version=version, check_data=False,
      description=f"Pseudo-labelled by {metadata['idm_checkpoint']} from {metadata['src']}: "
                  f"{metadata['action_rule']}.")
  (work / "job.json").unlink()
  _write_json_atomic(work / METADATA_FILE, metadata)
  os.rename(work, out)
