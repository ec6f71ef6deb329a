"""The inference function an artifact carries, built from model code.

``make_policy_fn`` returns a pure ``fn(params, inputs, rng) -> {"actions", "rng"}``:

  inputs  image_<cam>      uint8   [B, T, S, S, 3]  cameras the dataset has, resized
          proprio          float32 [B, T, P_d]      the dataset's proprio, env units
          history_mask     bool    [B, T]           False for padded steps
          language_tokens  int32   [B, L]           tokenizer ids (0 = pad)
          language_mask    bool    [B, L]
  rng     uint32 [B, 2]    per-example threefry key data
  ->
  actions float32 [B, K, A_d]  de-normalized chunk in the dataset's (env) units
  rng     uint32 [B, 2]        each example's next key

Inside: proprio normalized and zero-padded as ``windows.prepare_episode`` does,
zero frames for cameras of ``data.cameras`` the dataset lacks, the dataset id and
action-dim mask as ``windows.make_inference_inputs`` sets them, the registry's
``predict_actions``, and de-normalization with the Normalizer's own constants.

Keys: each example's key is split into (next, use) exactly as
``inference.CheckpointPolicy`` splits its key per call, so a policy that threads
``rng`` reproduces the checkpoint policy's stream. The model draws its noise
(generative heads) from example 0's ``use`` key for the whole batch: a batch of
one is bitwise the checkpoint policy; in a larger batch, the other examples'
noise depends on the batch (regression heads are unaffected).

This module imports model code; the loader imports it only for
``backend="module"``.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wam_jax.data import batch as batch_lib
from wam_jax.models import registry


def _divide(x, d):
  """float32 ``x / d`` rounded as numpy rounds it (correctly rounded IEEE).

  XLA:CPU divides through a reciprocal estimate: ~15% of float32 quotients come
  out one ulp off numpy's. On CPU the quotient is computed in float64 and
  rounded once to float32, which is exactly the correctly rounded float32
  quotient (double rounding is innocuous when the wide format has >= 2p + 2
  bits). Other platforms get a plain float32 division.
  """
  def exact(x):
    with jax.enable_x64(True):
      return (x.astype(jnp.float64) / jnp.asarray(d, jnp.float64)).astype(jnp.float32)
  return jax.lax.platform_dependent(x, cpu=exact, default=lambda x: x / d)


def _multiply(x, m):
  """float32 ``x * m`` rounded to float32 before anything is added to it: XLA fuses
  ``x * m + c`` into one FMA (one rounding), numpy rounds twice. The float64
  product of two float32 numbers is exact, so its rounding is numpy's product."""
  def exact(x):
    with jax.enable_x64(True):
      return (x.astype(jnp.float64) * jnp.asarray(m, jnp.float64)).astype(jnp.float32)
  return jax.lax.platform_dependent(x, cpu=exact, default=lambda x: x * m)


def make_policy_fn(model, norm: dict, *, data_cfg, dataset_id: int, dataset_cameras):
  """``fn(params, inputs, rng)`` (module docstring); ``norm`` from ``schema.normalization_constants``."""
  p_norm, a_norm = ({k: np.asarray(v) for k, v in norm[w].items()} for w in ("proprio", "action"))
  action_dim, proprio_dim = int(data_cfg.action_dim), int(data_cfg.proprio_dim)
  a_d = len(a_norm["center"])
  t, s = int(data_cfg.history), int(data_cfg.image_size)

  def fn(params, inputs, rng):
    b = inputs["history_mask"].shape[0]
    keys = jax.random.wrap_key_data(rng)
    next_keys, use = jax.vmap(jax.random.split, out_axes=1)(keys)  # Each [B].
    proprio = inputs["proprio"].astype(jnp.float32)
    y = _divide(proprio - p_norm["center"], p_norm["scale"])  # Normalizer._apply, bit for bit.
    y = jnp.where(p_norm["clip"], jnp.clip(y, -1.0, 1.0), y)
    proprio = jnp.where(p_norm["mask"], y, proprio)
    batch = {
        "history_mask": inputs["history_mask"],
        "proprio": jnp.pad(proprio, ((0, 0), (0, 0), (0, proprio_dim - proprio.shape[-1]))),
        "action_dim_mask": jnp.broadcast_to(jnp.arange(action_dim) < a_d, (b, action_dim)),
        "language_tokens": inputs["language_tokens"], "language_mask": inputs["language_mask"],
        "dataset_id": jnp.full((b,), dataset_id, jnp.int32),
    }
    for cam in data_cfg.cameras:
      key = batch_lib.image_key(cam)
      batch[key] = inputs[key] if cam in dataset_cameras else jnp.zeros((b, t, s, s, 3), jnp.uint8)
    pred = registry.predict_actions(model, params, batch, use[0])[..., :a_d]
    actions = jnp.where(a_norm["mask"], _multiply(pred, a_norm["scale"]) + a_norm["center"], pred)
    return {"actions": actions.astype(jnp.float32), "rng": jax.random.key_data(next_keys)}

  return fn


def input_specs(data_cfg, dataset_cameras, proprio_dim_d: int, batch) -> tuple[dict, jax.ShapeDtypeStruct]:
  """(inputs, rng) ShapeDtypeStructs with leading dim ``batch`` (an int or a symbolic dim)."""
  t, s, l = int(data_cfg.history), int(data_cfg.image_size), int(data_cfg.max_text_len)
  sds = jax.ShapeDtypeStruct
  inputs = {batch_lib.image_key(c): sds((batch, t, s, s, 3), jnp.uint8) for c in dataset_cameras}
  inputs.update(proprio=sds((batch, t, proprio_dim_d), jnp.float32), history_mask=sds((batch, t), jnp.bool_),
                language_tokens=sds((batch, l), jnp.int32), language_mask=sds((batch, l), jnp.bool_))
  return inputs, sds((batch, 2), jnp.uint32)


def restore_params(path):
  """Params saved by the exporter (plain Orbax ``StandardCheckpointer``) as numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
    return jax.tree.map(np.asarray, ckptr.restore(path, target))


def module_function(directory, manifest: dict):
  """``backend="module"``: jitted ``(inputs, rng) -> outputs`` from the artifact's params,
  config and normalization constants, through model code."""
  from wam_jax.export import schema  # pylint: disable=g-import-not-at-top
  from wam_jax.data import normalization  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  config = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
  normalizer = normalization.Normalizer.from_dict(json.loads((directory / "normalization.json").read_text())["normalizer"])
  ds = manifest["dataset"]
  model = registry.build_model(config, num_datasets=len(ds["mixture"]))
  fn = make_policy_fn(model, schema.normalization_constants(normalizer, ds["name"]), data_cfg=config.data,
                      dataset_id=int(ds["id"]), dataset_cameras=tuple(ds["cameras"]))
  params = jax.device_put(restore_params(directory / "params"))  # On device once, not per call.
  return functools.partial(jax.jit(fn), params)
