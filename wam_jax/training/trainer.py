"""The training loop every family shares: ``train(config, workdir)``.

Read top to bottom: config -> data -> mesh -> model and state -> step ->
checkpoint (resume) -> loop. A family is only ``registry.build_model`` plus its
loss; nothing here knows which family it trains.
"""

import contextlib
import dataclasses
import functools
import json
import pathlib
import signal
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wam_jax.data import pipeline as data_pipeline
from wam_jax.models import registry
from wam_jax.training import checkpoint as ckpt_lib
from wam_jax.training import metrics as metrics_lib
from wam_jax.training import peak as peak_lib
from wam_jax.training import sharding
from wam_jax.training import state as state_lib


# ----------------------------------------------------------------------------
# The train step: one jitted function of (state, batch).
# ----------------------------------------------------------------------------
def step_rng(state):
  """The rng of the train step ``state.step``: what its loss sees (dropout, noise levels, masks)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def make_train_step(model, tx, train_cfg, batch_axes, accum=None):
  """Returns step(state, batch) -> (state, metrics). Pure; lowered with abstract shapes.

  ``accum`` microbatches (default ``train.grad_accum_steps``) are scanned over.
  """
  schedule = state_lib.learning_rate_schedule(train_cfg)
  accum = int(train_cfg.grad_accum_steps if accum is None else accum)

  def loss_and_grads(params, batch, rng):
    grad_fn = jax.value_and_grad(functools.partial(registry.loss_fn, model), has_aux=True)
    if accum == 1:
      return grad_fn(params, batch, rng)
    # Microbatch j takes rows j, j+accum, ...: every device holds a slice of each.
    def split(x):
      x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(None, batch_axes))
    micro = jax.tree.map(split, batch)

    # Each microbatch's mean is weighted by how many elements it averaged
    # (metrics["loss_weight"], if the family reports it), so the accumulated
    # loss and gradient equal the full batch's masked mean.
    def body(carry, mb_and_i):
      mb, i = mb_and_i
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
      w = metrics.get("loss_weight", jnp.ones(()))
      weighted = jax.tree.map(lambda x: x * w, ((loss, metrics), grads))
      return jax.tree.map(jnp.add, carry, (weighted, w)), None
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng))
    (total, weight), _ = jax.lax.scan(body, (zeros, jnp.zeros(())), (micro, jnp.arange(accum)))
    (loss, metrics), grads = jax.tree.map(lambda x: x / jnp.maximum(weight, 1e-9), total)
    if "loss_weight" in metrics:  # the weighted mean of the weights would be sum(w^2)/sum(w)
      metrics = dict(metrics, loss_weight=weight)
    return (loss, metrics), grads

  def step(state, batch):
    rng = step_rng(state)
    (loss, metrics), grads = loss_and_grads(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = state_lib.update_ema(ema, params, state.step, train_cfg.ema_decay)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates),
                   learning_rate=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics

  return step


def make_grad_norms(model, names):
  """Returns fn(state, batch) -> {name: global norm of the gradient of metrics[name]}.

  Which of a family's losses drives its shared parameters: e.g. ``video_loss`` vs ``action_loss``
  (``train.grad_norm_of``). The gradients of the next train step's loss terms (its params, batch
  and rng; before clipping): one forward pass, then one backward pass per name, at log steps only.
  """
  def norms(state, batch):
    rng = step_rng(state)

    def named(p):
      metrics = registry.loss_fn(model, p, batch, rng)[1]
      unknown = [n for n in names if n not in metrics]
      if unknown:
        raise ValueError(f"config.train.grad_norm_of names {unknown[0]!r}, which is not a training metric of "
                         f"this model; its metrics: {', '.join(sorted(metrics))}")
      return tuple(metrics[n] for n in names)
    values, pullback = jax.vjp(named, state.params)
    one_hot = lambda i: tuple(jnp.ones_like(v) if j == i else jnp.zeros_like(v) for j, v in enumerate(values))
    return {n: optax.global_norm(pullback(one_hot(i))[0]) for i, n in enumerate(names)}
  return norms


def grad_norm_names(train_cfg) -> tuple:
  return tuple(n.strip() for n in str(train_cfg.get("grad_norm_of", "")).split(",") if n.strip())


def make_eval_step(model):
  def step(params, batch, rng):
    _, metrics = registry.loss_fn(model, params, batch, rng, train=False)
    return metrics
  return step


# ----------------------------------------------------------------------------
# Config checks that must fail before any work starts.
# ----------------------------------------------------------------------------
def check_config(config, num_devices: int):
  """Everything checkable from the config alone; raises ValueError naming config.<field>."""
  tc = config.train
  registry.check_model_config(config.model)
  if data_pipeline.data_kind(config.data) == "windows":
    data_pipeline.parse_mixture(config.data)
  if tc.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.train.compute_dtype={tc.compute_dtype!r}; expected float32 or bfloat16")
  if tc.steps <= 0:
    raise ValueError(f"config.train.steps={tc.steps} must be positive")
  if not 0.0 <= tc.ema_decay < 1.0:
    raise ValueError(f"config.train.ema_decay={tc.ema_decay} must be in [0, 1)")
  sharding.resolve_mesh_shape(config.mesh.shape, num_devices)
  sharding.axis_rules(config.mesh.rules_name)
  if tc.batch_size % (tc.grad_accum_steps * jax.process_count()):
    raise ValueError(f"config.train.batch_size={tc.batch_size} must divide by grad_accum_steps="
                     f"{tc.grad_accum_steps} x processes={jax.process_count()}")


class ConfigChangedError(ValueError):
  """A rerun in a workdir whose checkpoints were trained with another config."""


# Fields that may differ between a run and its resumption without changing what
# is trained: cadence of logs/saves, paths and caches, evaluation, the mesh
# (Orbax restores onto any sharding). Every other field (model, data, optimizer,
# steps, seed, new fields by default) is part of the run's identity.
RESUME_FREE_FIELDS = (
    "train.log_every", "train.val_every", "train.val_batches", "train.ckpt_every", "train.keep_last",
    "train.keep_every", "train.summary_every", "train.matmul_peak_gflops", "train.init_from", "train.init_from_map",
    "train.allow_changes", "train.grad_norm_of", "data.data_dir", "data.cache_dir", "data.episode_cache_mb",
    "data.read_threads", "mesh.", "eval.", "train.compiler_options.")


def config_changes(saved: dict, current: dict) -> dict:
  """{dotted field: (saved value, current value)} for identity fields that differ (JSON dicts)."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
  a, b = flat(saved), flat(current)
  missing = object()

  def changed(k):
    old, new = a.get(k, missing), b.get(k, missing)
    if old is missing and new in ("", "none", 0, False, None, [], {}):
      return False  # a field the code gained since the run was saved, at its "off" default
    return old != new
  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if changed(k)
          and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE_FIELDS)}


def check_resume_config(config, saved_config: dict, where) -> None:
  """Raises ConfigChangedError unless every identity field equals the saved run's (or is allowed)."""
  allowed = {f.strip() for f in config.train.allow_changes.split(",") if f.strip()}
  changes = config_changes(saved_config, json.loads(config.to_json_best_effort()))
  if "*" not in allowed:
    blocked = {k: v for k, v in changes.items() if k not in allowed}
    if blocked:
      shown = ", ".join(f"{k}: {_show(v[0])} -> {_show(v[1])}" for k, v in blocked.items())
      raise ConfigChangedError(
          f"the config differs from the run in {where}: {shown}. Resuming would mix two runs: use a new "
          f"--workdir, or resume with the change on purpose: --config.train.allow_changes={','.join(blocked)}")
  if changes:
    logging.warning("resuming %s with deliberate config changes: %s", where, changes)


def _show(v):
  return "(absent)" if not isinstance(v, (str, int, float, bool, list, dict, type(None))) else json.dumps(v)


def save_config(config, workdir: pathlib.Path):
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def prepare_data(data_cfg):
  """The embedded default: with no data_dir, generate (once) the MetaWorld sample.
  Text and image-text pairs are prepared beforehand (scripts/prepare_text.py,
  scripts/prepare_image_text.py): only checked here."""
  prepared = data_pipeline.prepared_data_module(data_cfg)
  if prepared is not None:
    prepared.load_meta(data_cfg)
  elif not data_cfg.data_dir:
    from wam_jax.sim import metaworld_data  # MuJoCo is only needed for the embedded sample.
    metaworld_data.ensure_embedded_dataset(data_cfg)


# ----------------------------------------------------------------------------
# Everything a run needs that depends only on (config, mesh, batch shapes):
# also what AOT compilation for a TPU topology and the tests use.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingSetup:
  model: nn.Module
  mesh: jax.sharding.Mesh
  rules: tuple
  abstract_state: state_lib.TrainState      # ShapeDtypeStructs with shardings
  state_shardings: state_lib.TrainState
  batch_shardings: dict
  init_state: Callable                      # rng -> sharded TrainState
  train_step: Callable                      # jitted (state, batch) -> (state, metrics)
  eval_step: Callable                       # jitted (params, batch, rng) -> metrics
  unaccumulated_step: Callable = None       # the step without grad accumulation (FLOP counting only)
  grad_norms: Callable = None               # jitted (state, batch) -> {metric: grad norm} (train.grad_norm_of)
  flops_state: state_lib.TrainState = None  # its abstract state, if not ``abstract_state`` (layers unrolled)
  predict_frames: Callable = None           # jitted (params, batch, rng) -> {camera: uint8 [B, F, H, W, 3]}

  def step_flops(self, compiled_step, batch_spec) -> float:
    """FLOPs of one train step (all devices). XLA counts a scan's body once, so under grad
    accumulation or with scanned layers (any ``scan`` field of ``config.model``) the count comes from the same
    step lowered with microbatches and layers unrolled."""
    if self.unaccumulated_step is None:
      return metrics_lib.compiled_flops(compiled_step, self.mesh.size)
    state = self.abstract_state if self.flops_state is None else self.flops_state
    return metrics_lib.lowered_flops(self.unaccumulated_step.lower(state, batch_spec))


def model_fields(model_cfg, name: str, path=()) -> list:
  """[(path, value)] of every field called ``name`` in ``config.model`` and its sub-configs (the
  hybrid's backbone keeps its own under ``model.vlm``)."""
  found = []
  for key, value in model_cfg.items():
    if isinstance(value, ml_collections.ConfigDict):
      found += model_fields(value, name, path + (key,))
    elif key == name:
      found.append((path + (key,), value))
  return found


def scanned_fields(model_cfg) -> list:
  """Paths of every ``scan`` field set True (e.g. ``model.vlm.scan``): FLOP counting lowers the
  step with all of them False."""
  return [path for path, value in model_fields(model_cfg, "scan") if value]


def abstract_batch(data_cfg, batch_size: int) -> dict:
  """Global batch shapes {key: ShapeDtypeStruct [B, ...]} for ``data_cfg`` (no data read)."""
  prepared = data_pipeline.prepared_data_module(data_cfg)
  if prepared is not None:
    spec = prepared.abstract_batch_shapes(data_cfg, batch_size)
  else:
    from wam_jax.data import windows  # the window geometry is the data path's to define
    spec = windows.WindowSpec.from_config(data_cfg).element_spec(batch_size)
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def compiler_options(train_config, mesh) -> Optional[dict]:
  """``train.compiler_options`` of the platform of ``mesh``'s devices ("cpu", "tpu", ...), or None."""
  platform = mesh.devices.flat[0].platform
  by_platform = train_config.get("compiler_options") or {}
  options = by_platform.get(platform) or {}
  options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
  return options or None


def setup_training(config, mesh, batch_spec, num_datasets: int) -> TrainingSetup:
  """Builds the model, optimizer, sharded init and the jitted steps for ``mesh``.

  ``batch_spec``: global batch shapes {key: ShapeDtypeStruct [B, ...]}. No
  arrays are allocated here: the state is only created by ``init_state``.
  """
  tc = config.train
  rules = sharding.axis_rules(config.mesh.rules_name)
  model = registry.build_model(config, num_datasets=num_datasets)
  # A family may freeze or slow parts of itself (``lr_multipliers()``: path regex -> multiplier).
  tx = state_lib.make_optimizer(tc, getattr(model, "lr_multipliers", tuple)())
  init_batch = {k: jnp.zeros((1,) + tuple(v.shape[1:]), v.dtype) for k, v in batch_spec.items()}

  def boxed_state(rng):
    params = registry.init_params(model, rng, init_batch)
    return state_lib.create_state(params, tx, jax.random.fold_in(rng, 1), ema=tc.ema_decay > 0)

  with mesh, nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(boxed_state, jax.random.key(0))
    state_sh = sharding.logical_shardings(boxed, mesh, rules)
  batch_sh = sharding.batch_shardings(batch_spec, mesh, rules)
  batch_axes = nn.logical_to_mesh_axes(("batch",), rules)[0]

  def with_rules(fn):
    @functools.wraps(fn)
    def wrapped(*args):
      with _mesh_context(mesh, rules):
        return fn(*args)
    return wrapped

  init = jax.jit(lambda rng: state_lib.unbox(boxed_state(rng)), out_shardings=state_sh)
  options = compiler_options(tc, mesh)
  def jit_step(accum=None):
    return jax.jit(make_train_step(model, tx, tc, batch_axes, accum), in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=0, compiler_options=options)
  step = jit_step()
  evaluate = jax.jit(make_eval_step(model), in_shardings=(state_sh.params, batch_sh, None),
                     compiler_options=options)
  count_step = count_state = None  # FLOP counting: the step with nothing scanned
  scanned = scanned_fields(config.model)
  if scanned:
    unrolled = config.copy_and_resolve_references()
    for path in scanned:
      functools.reduce(getattr, path[:-1], unrolled.model)[path[-1]] = False
    unrolled.train.grad_accum_steps = 1
    counter = setup_training(unrolled, mesh, batch_spec, num_datasets)
    count_step, count_state = counter.train_step, counter.abstract_state
  elif tc.grad_accum_steps > 1:
    count_step = _RulesJit(jit_step(1), mesh, rules)
  grad_norms, names = None, grad_norm_names(tc)
  if names:
    grad_norms = _RulesJit(jax.jit(make_grad_norms(model, names), in_shardings=(state_sh, batch_sh)), mesh, rules)
    # Traced now (not compiled): a name that is not a metric fails before any work.
    grad_norms.lower(ckpt_lib.abstract_with_shardings(state_lib.unbox(boxed), state_sh), batch_spec)
  predict_frames = None
  if registry.predicts_frames(model):  # families that generate frames get them summarized
    predict_frames = _RulesJit(jax.jit(functools.partial(registry.predict_frames, model)), mesh, rules)
  return TrainingSetup(
      model=model, mesh=mesh, rules=rules,
      abstract_state=ckpt_lib.abstract_with_shardings(state_lib.unbox(boxed), state_sh),
      state_shardings=state_sh, batch_shardings=batch_sh,
      init_state=with_rules(init), train_step=_RulesJit(step, mesh, rules),
      eval_step=_RulesJit(evaluate, mesh, rules),
      unaccumulated_step=count_step, flops_state=count_state,
      predict_frames=predict_frames, grad_norms=grad_norms)


@contextlib.contextmanager
def _mesh_context(mesh, rules):
  """The mesh, as jax's global mesh too, and the logical axis rules. Flax applies
  ``nn.with_logical_constraint`` only under ``jax.set_mesh``: with a bare ``with mesh:``
  (jax 0.10) every activation constraint is silently dropped and the partitioner alone
  decides (found compiling lm.py:1b for TPU: replicated [B, N, V] logits, BUILD_NOTES)."""
  with mesh, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


class _RulesJit:
  """A jitted function called (and lowered) inside the mesh + logical-rules context."""

  def __init__(self, fn, mesh, rules):
    self.fn, self.mesh, self.rules = fn, mesh, rules

  def __call__(self, *args):
    with _mesh_context(self.mesh, self.rules):
      return self.fn(*args)

  def lower(self, *args):
    with _mesh_context(self.mesh, self.rules):
      return self.fn.lower(*args)


# ----------------------------------------------------------------------------
# train(config, workdir)
# ----------------------------------------------------------------------------
class _Preemption:
  """SIGTERM -> finish the current step, save, exit cleanly."""

  def __init__(self):
    self.requested = False
    self._old = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._old)


def train(config, workdir, *, devices=None, crash_after_step=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints). Returns final metrics.

  ``crash_after_step`` (tests) stops right after that step without saving, as a
  SIGKILL would (pending async saves still complete).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = list(jax.devices() if devices is None else devices)
  check_config(config, len(devices))
  tc = config.train
  # A workdir with checkpoints is this run's own only if they were trained with this config.
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep_last=tc.keep_last, keep_every=tc.keep_every)
  if ckpt.all_steps():
    try:
      saved_assets, saved_step = ckpt.restore_assets()
    except FileNotFoundError:  # every step damaged (and set aside): nothing to resume
      saved_assets = None
    if saved_assets is not None:
      check_resume_config(config, saved_assets["config"], f"{workdir} (checkpoint step {saved_step})")
  save_config(config, workdir)

  # --- Mesh -----------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  rules = sharding.axis_rules(config.mesh.rules_name)
  if tc.batch_size % (sharding.batch_divisor(mesh, rules) * tc.grad_accum_steps):
    raise ValueError(f"config.train.batch_size={tc.batch_size} must divide by the batch mesh axes "
                     f"({sharding.batch_divisor(mesh, rules)}) x grad_accum_steps")

  # --- Input ----------------------------------------------------------------
  prepare_data(config.data)
  data = data_pipeline.make_pipeline(
      config.data, split=config.data.train_split, batch_size=tc.batch_size // jax.process_count(),
      seed=config.seed, train=True, process_index=jax.process_index(), process_count=jax.process_count())
  batch_spec = abstract_batch(config.data, tc.batch_size)  # global shapes; each process loads its share
  assets = {"config": json.loads(config.to_json_best_effort()),
            "normalizer": data.normalizer.to_dict() if data.normalizer is not None else None,
            "tokenizer": data.tokenizer.to_dict(), "dataset_names": list(data.dataset_names)}
  if hasattr(data.tokenizer, "save"):  # a trained (text) tokenizer: also beside config.json
    data.tokenizer.save(workdir / "tokenizer.json")

  # --- Model, optimizer, state (created directly sharded), step ---------------
  run = setup_training(config, mesh, batch_spec, num_datasets=len(data.dataset_names))
  t0 = time.perf_counter()
  train_step = run.train_step.lower(run.abstract_state, batch_spec).compile()  # compiled once, run as is
  flops = run.step_flops(train_step, batch_spec)
  logging.info("compiled train step in %.1fs: %.3g FLOPs/step", time.perf_counter() - t0, flops)

  # --- Checkpoint: resume, else init_from, else scratch ------------------------
  restored = ckpt.restore(run.abstract_state, data.iterator)
  if restored is not None:
    state, _, start = restored
    logging.info("resumed from %s step %d", ckpt.directory, start)
  else:
    state = run.init_state(jax.random.key(config.seed))
    if tc.init_from:
      state = state.replace(params=ckpt_lib.load_params_into(
          tc.init_from, state.params, path_map=tc.get("init_from_map", "")))
      if state.ema_params is not None:
        state = state.replace(ema_params=state.params)
    start = 0
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %.2fM params, mesh %s", config.model.name, n_params / 1e6, dict(mesh.shape))

  # --- Loop -------------------------------------------------------------------
  writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  peak = tc.matmul_peak_gflops * 1e9 or _hardware_peak(devices)
  progress = metrics_lib.Progress(tc.steps, tc.batch_size, flops, peak, start_step=start)
  writer.scalars(start, {"flops_per_step": flops, "params": n_params, "peak_flops": peak}, prefix="run/")
  preemption = _Preemption()
  finite = _FiniteLoss()
  saved_step = start if restored is not None else None

  def save(force=False):
    nonlocal saved_step
    finite.check()  # a non-finite state is never written: the last checkpoint stays the good one
    ckpt.save(step, state, data.iterator, assets, force=force)
    saved_step = step

  val_data = None
  last = {}
  step = start
  try:
    while step < tc.steps:
      if preemption.requested:
        if saved_step != step:
          save(force=True)
        print(f"SIGTERM: saved step {step} in {ckpt.directory}; rerun the same command to resume", flush=True)
        break
      if step == crash_after_step:
        break
      batch = next(data.iterator)
      device_batch = _device_batch(batch, run.batch_shardings)
      logs = (step + 1) % tc.log_every == 0 or step + 1 == tc.steps
      norms = None
      if logs and run.grad_norms is not None:
        norms = run.grad_norms(state, device_batch)  # before the step donates the state
      state, step_metrics = train_step(state, device_batch)
      step += 1
      finite.observe(step_metrics["loss"], step)
      if logs:
        finite.check()
        last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        last.update(progress.update(step, last))
        if norms is not None:
          last.update({f"grad_norm/{k}": float(v) for k, v in jax.device_get(norms).items()})
        writer.scalars(step, last, prefix="train/")
      if tc.val_every and (step % tc.val_every == 0 or step == tc.steps):
        if val_data is None:
          val_data = data_pipeline.make_pipeline(
              config.data, split=config.data.val_split, batch_size=tc.batch_size // jax.process_count(),
              seed=config.seed, train=False, process_index=jax.process_index(),
              process_count=jax.process_count(), normalizer=data.normalizer)
          val_start = val_data.iterator.get_state()
        val_data.iterator.set_state(val_start)
        val = _evaluate(run.eval_step, state, val_data.iterator, tc.val_batches, run.batch_shardings)
        writer.scalars(step, val, prefix="val/")
        last.update({"val_" + k: v for k, v in val.items()})
        logging.info("step %d validation: %s", step, val)
      if tc.summary_every and step % tc.summary_every == 0:
        images = input_summaries(batch, config.data.cameras)
        if run.predict_frames is not None:
          predicted = jax.device_get(run.predict_frames(state.params, device_batch, jax.random.key(step)))
          images.update(predicted_frame_summaries(batch, predicted))
        writer.images(step, images)
      if step % tc.ckpt_every == 0 or step == tc.steps:
        save()
  finally:
    preemption.restore()
    ckpt.close()
    writer.close()
  return {"step": step, **last}


def _hardware_peak(devices) -> float:
  """The MFU denominator, or 0 (MFU not logged) for hardware without a known peak."""
  try:
    return peak_lib.hardware_peak_flops(devices, "float32")
  except ValueError as e:
    logging.warning("MFU unavailable (%s): training on without it; set config.train.matmul_peak_gflops "
                    "to the chip's peak to log it", e)
    return 0.0


class _FiniteLoss:
  """Tracks, on device and without a host sync per step, the first step whose loss was not finite."""

  def __init__(self):
    self._first_bad = jnp.asarray(-1, jnp.int32)

  def observe(self, loss, step: int):
    self._first_bad = _first_nonfinite(self._first_bad, loss, step)

  def check(self):
    bad = int(self._first_bad)
    if bad >= 0:
      raise FloatingPointError(f"loss is not finite at step {bad}; stopped before saving this state: "
                               "the last checkpoint is intact")


@jax.jit
def _first_nonfinite(first_bad, loss, step):
  return jnp.where((first_bad < 0) & ~jnp.isfinite(loss), step, first_bad)


def input_summaries(batch, cameras, n: int = 4) -> dict:
  """What the model saw: per camera, history | future frames side by side, uint8 [n, H, (T+F)*W, 3]."""
  out = {}
  for cam in cameras:
    if f"image_{cam}" not in batch:  # text batches have no frames
      continue
    frames = [batch[f"image_{cam}"][:n], batch[f"future_image_{cam}"][:n]]
    strip = np.concatenate([f for f in frames if f.size], axis=1)  # [n, T+F, H, W, 3]
    out[f"inputs/{cam}"] = np.concatenate(list(strip.transpose(1, 0, 2, 3, 4)), axis=2)
  return out


def predicted_frame_summaries(batch, predicted, n: int = 4) -> dict:
  """Real vs predicted future frames, per camera: last history | real t+k.. | predicted t+k..,
  uint8 [n, H, (1 + 2F) * W, 3]. ``predicted``: {camera: uint8 [B, F, H, W, 3]}."""
  out = {}
  for cam, pred in predicted.items():
    frames = [batch[f"image_{cam}"][:n, -1:], batch[f"future_image_{cam}"][:n], np.asarray(pred)[:n]]
    strip = np.concatenate(frames, axis=1)  # [n, 1 + 2F, H, W, 3]
    out[f"predicted/{cam}"] = np.concatenate(list(strip.transpose(1, 0, 2, 3, 4)), axis=2)
  return out


def _device_batch(batch, shardings):
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), dict(batch), shardings)


def _evaluate(p_eval, state, iterator, num_batches, batch_sh) -> dict:
  sums, n = {}, 0
  params = state.ema_params if state.ema_params is not None else state.params
  for i in range(num_batches):
    try:
      batch = next(iterator)
    except StopIteration:
      break
    m = jax.device_get(p_eval(params, _device_batch(batch, batch_sh), jax.random.key(i)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {k: v / max(n, 1) for k, v in sums.items()}
