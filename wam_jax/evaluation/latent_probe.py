"""Do a latent-action model's latents carry the real action? A probe on labelled demos.

The latent-action model (``models/latent_action.py``) never sees an action: its
own validation can only say whether the decoder uses z (``shuffled_z_loss`` vs
``recon_loss``). This probe asks the question the latent policy's fine-tune
depends on: how much of the true chunk ``a_t..a_t+k-1`` does z explain?

For every window of a labelled dataset (``t`` with ``o_t+k`` inside the episode)
the model's latent is computed from ``(o_t, o_t+k)`` exactly as in training,
and ridge regressions predict the standardized chunk [k * A] from

  z          the latent: one-hot of the code tuple (VQ: one cell per tuple, so the
             probe is the per-tuple mean, as nonlinear as the code allows) or the
             continuous z [Q * Z]
  task       one-hot of the instruction: what the scene alone says
  task + z   both: what z adds beyond the task
  shuffled z z permuted across windows (the floor, ~0)
  state change  the true proprio change o_t -> o_t+k (linear): what a latent that
             encoded the hand's motion perfectly would give (the ceiling of a transition code)

fitted on the ``fit`` split and scored by held-out R^2 (mean over the chunk's
dimensions) on the ``test`` split. The reverse question, how much of the scene z
encodes, is ``task_accuracy``: the task read from z by the same ridge regression
(one-hot targets, argmax), against chance 1 / tasks. The decoder's errors on the same test windows
(true z, shuffled z, copy-last) are reported beside it.
"""

import dataclasses
import time
from typing import Optional

import jax
import numpy as np

from wam_jax import inference
from wam_jax.data import pipeline, registry, windows
from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.models import registry as model_registry


@dataclasses.dataclass
class Windows:
  """Every probe window of one split: model inputs (unbatched) and what the probe regresses on."""
  inputs: list          # dicts of batch.py keys; actions zeroed and masked (the model never reads them)
  chunks_NKA: np.ndarray  # float32 true chunks in the dataset's units
  state_change_NP: np.ndarray  # float32 raw proprio at t+k minus at t
  tasks: list           # instruction per window


def split_windows(run: inference.RestoredRun, dataset: str, split: str, *, stride: int = 1,
                  max_episodes: Optional[int] = None) -> Windows:
  """Windows at t = 0, stride, ... with o_t+k inside the episode, of ``dataset``'s ``split``."""
  cfg = run.config.data
  spec = registry.get_spec(dataset)
  if spec.action_key is None:
    raise ValueError(f"--dataset={dataset} is action-free: the probe needs the true actions")
  reader = pipeline.open_reader(cfg, dataset, split)
  wspec = windows.WindowSpec.from_config(cfg)
  tokenizer = tokenizer_lib.for_spec(wspec)
  k = wspec.future_offset
  # The latent-action model reads pixels only; proprio is normalized with the statistics of the
  # dataset it trained on (same MetaWorld space), actions are kept aside, never in its inputs.
  own = run.dataset_names[0]
  inputs, chunks, changes, tasks = [], [], [], []
  for e in range(len(reader) if max_episodes is None else min(max_episodes, len(reader))):
    ep = reader.decode(e, cameras=wspec.cameras, image_size=wspec.image_size)
    if ep.actions is None:
      raise ValueError(f"dataset {dataset!r} {split} episode {e}: no actions")
    prepared = windows.prepare_episode(dataclasses.replace(ep, actions=None), wspec, run.normalizer, own, tokenizer)
    for t in range(0, ep.length - k, stride):
      inputs.append(windows.cut_window(prepared, t, wspec, 0))
      chunks.append(ep.actions[t:t + k])
      changes.append(ep.proprio[t + k] - ep.proprio[t])
      tasks.append(ep.instruction)
  if not inputs:
    raise ValueError(f"dataset {dataset!r} {split}: no episode is longer than future_offset={k} steps")
  return Windows(inputs, np.asarray(chunks, np.float32), np.asarray(changes, np.float32), tasks)


def encode(run: inference.RestoredRun, win: Windows, batch_size: int = 64,
           decoder_errors: bool = True) -> tuple[np.ndarray, dict]:
  """(latents: codes int [N, Q] or z float [N, Q, Z], decoder error sums over the windows; {} when
  ``decoder_errors`` is False: the decoder then never runs)."""
  model = run.model
  rng = jax.random.key(0)  # unused by the deterministic encoder; the registry's calls take one
  latents = jax.jit(lambda p, b: model_registry.predict_latent_actions(model, p, b, rng))
  losses = jax.jit(lambda p, b: model_registry.loss_fn(model, p, b, rng, train=False)[1])
  out, sums = [], {}
  for start in range(0, len(win.inputs), batch_size):
    part = win.inputs[start:start + batch_size]
    rows = part + [part[-1]] * (batch_size - len(part))  # one compiled shape; the padding is dropped
    batch = {key: np.stack([w[key] for w in rows]) for key in rows[0]}
    out.append(np.asarray(latents(run.params, batch))[:len(part)])
    if decoder_errors and len(part) == batch_size:  # full batches only: the shuffled-z metric rolls within the batch
      metrics = losses(run.params, batch)
      for name in ("recon_loss", "shuffled_z_loss", "copy_last_loss"):
        sums[name] = sums.get(name, 0.0) + float(metrics[name]) * batch_size
      sums["windows"] = sums.get("windows", 0) + batch_size
  return np.concatenate(out), sums


def _features(latents, lat) -> np.ndarray:
  """Regression features of the latents (``lat``: config.model.latent). VQ: one cell per code tuple
  (as nonlinear as the code); FSQ (too many tuples for that): one cell per code of each token, and
  each token's grid coordinates; continuous: z itself."""
  if lat.kind == "vq":
    cell = np.zeros(len(latents), np.int64)
    for q in range(latents.shape[1]):
      cell = cell * int(lat.num_codes) + latents[:, q]
    return np.eye(int(lat.num_codes) ** latents.shape[1], dtype=np.float32)[cell]
  if lat.kind == "fsq":
    levels = np.asarray(lat.levels, np.int64)
    basis = np.cumprod(np.concatenate([[1], levels[:-1]]))
    grid = ((latents[..., None] // basis) % levels - levels // 2) / (levels // 2)  # [N, Q, Z]
    one_hot = np.eye(int(lat.num_codes), dtype=np.float32)[latents]                # [N, Q, C]
    return np.concatenate([one_hot.reshape(len(latents), -1), grid.reshape(len(latents), -1)], 1).astype(np.float32)
  return latents.reshape(len(latents), -1).astype(np.float32)


def _standardized(fit, test):
  """Both splits standardized by the fit split's per-dimension mean and spread."""
  mu, sd = fit.mean(0), fit.std(0) + 1e-6
  return (fit - mu) / sd, (test - mu) / sd


def ridge_r2(x_fit, y_fit, x_test, y_test, ridge: float = 1.0) -> float:
  """Held-out R^2 of a ridge regression (intercept unpenalized), mean over y's dimensions, y
  standardized by the fit split."""
  xf, xt = _standardized(x_fit, x_test)
  yf, yt = _standardized(y_fit, y_test)
  w = np.linalg.solve(xf.T @ xf + ridge * np.eye(xf.shape[1]), xf.T @ yf)
  resid = ((yt - xt @ w) ** 2).sum(0)
  total = ((yt - yt.mean(0)) ** 2).sum(0) + 1e-12
  return float(np.mean(1.0 - resid / total))


def ridge_accuracy(x_fit, labels_fit, x_test, labels_test, num_classes: int, ridge: float = 1.0) -> float:
  """Held-out accuracy of a ridge regression onto one-hot labels, read by argmax."""
  xf, xt = _standardized(x_fit, x_test)
  xf, xt = (np.concatenate([a, np.ones((len(a), 1), a.dtype)], 1) for a in (xf, xt))  # intercept
  y = np.eye(num_classes)[labels_fit]
  w = np.linalg.solve(xf.T @ xf + ridge * np.eye(xf.shape[1]), xf.T @ y)
  return float(np.mean(np.argmax(xt @ w, 1) == labels_test))


def probe(lam, dataset: str, *, step: Optional[int] = None, fit_split: str = "train",
          test_split: str = "val", stride: int = 1, max_episodes: Optional[int] = None, batch_size: int = 64,
          ridge: float = 1.0, seed: int = 0, log=print) -> dict:
  """The probe's numbers (module docstring) as a JSON-able dict; ``lam``: a latent-action run's workdir
  (its ``step``, default the newest) or an already ``inference.RestoredRun``."""
  start = time.perf_counter()
  run = lam if isinstance(lam, inference.RestoredRun) else inference.restore_run(
      lam, step, model_name="latent_action", flag="--lam")
  lat = run.config.model.latent
  feats, chunks, changes, tasks, decoder = {}, {}, {}, {}, {}  # per split; decoder: test split only
  for split in (fit_split, test_split):
    win = split_windows(run, dataset, split, stride=stride, max_episodes=max_episodes)
    latents, sums = encode(run, win, batch_size, decoder_errors=split == test_split)
    log(f"[latent_probe] {dataset} {split}: {len(win.inputs)} windows encoded")
    feats[split] = _features(latents, lat)
    chunks[split] = win.chunks_NKA.reshape(len(win.chunks_NKA), -1)
    changes[split] = win.state_change_NP
    tasks[split] = win.tasks
    if sums:  # the test split's (the fit split skips the decoder)
      decoder = {k: v / sums["windows"] for k, v in sums.items() if k != "windows"}
  names = sorted(set(tasks[fit_split]) | set(tasks[test_split]))
  task_ids = {s: np.asarray([names.index(t) for t in tasks[s]]) for s in tasks}
  task = {s: np.eye(len(names), dtype=np.float32)[task_ids[s]] for s in tasks}
  perm = np.random.default_rng(seed).permutation(len(feats[fit_split]))
  x = {"z": feats, "task": task, "task + z": {s: np.concatenate([task[s], feats[s]], 1) for s in feats},
       "shuffled z": {fit_split: feats[fit_split][perm], test_split: feats[test_split]},
       "state change": changes}
  r2 = {name: ridge_r2(v[fit_split], chunks[fit_split], v[test_split], chunks[test_split], ridge)
        for name, v in x.items()}
  result = dict(lam=run.checkpoint_id, dataset=dataset, fit_split=fit_split, test_split=test_split,
                latent=dict(lat), windows={s: len(chunks[s]) for s in chunks}, tasks=len(names), r2=r2,
                task_accuracy=ridge_accuracy(feats[fit_split], task_ids[fit_split], feats[test_split],
                                             task_ids[test_split], len(names), ridge),
                decoder=decoder, seconds=time.perf_counter() - start)
  if lat.kind == "vq":
    used = np.unique(np.argmax(feats[test_split], 1))
    result["code_tuples_used"] = dict(test=int(len(used)), possible=int(feats[test_split].shape[1]))
  return result
