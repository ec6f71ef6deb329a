"""A training run -> a self-contained policy artifact (``export_policy``).

Layout of ``out/`` (every file is described again in ``manifest.json``):

  manifest.json       schemas (observation, instruction, action with units), preprocessing,
                      the function's signature, files with sizes and SHA-256, version stamp
  policy.stablehlo    ``jax.export`` serialization of the inference function, params
                      embedded, symbolic batch dim ``b`` (runs with jax + numpy alone)
  params/             the params only (EMA or raw), plain Orbax ``StandardCheckpointer``
  config.json         the resolved config (with --sampling_steps applied)
  normalization.json  the Normalizer (mode + statistics) and the per-dim constants used
  tokenizer.json      the tokenizer spec

Everything comes from the checkpoint (params, config, normalization statistics,
tokenizer), loaded by the same ``inference.CheckpointPolicy`` the evaluator uses.
The artifact is written into a temporary sibling directory, checked (the
StableHLO policy and the checkpoint policy must give the same chunks on the same
observations), and only then renamed into place: an interrupted or failed
export leaves no ``out/`` that looks complete.
"""

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

import wam_jax
from wam_jax import inference
from wam_jax.data import batch as batch_lib
from wam_jax.data import pipeline as pipeline_lib
from wam_jax.data import registry as data_registry
from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.export import policy_fn, schema, units
from wam_jax.models import registry

STABLEHLO = "policy.stablehlo"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
SELF_CHECK_ATOL = 1e-5
_FILES = {
    "manifest.json": "this file: schemas, preprocessing, function signature, files, version stamp",
    STABLEHLO: "the inference function (jax.export serialization, StableHLO; params embedded; "
               "symbolic batch dim b): jax.export.deserialize(bytes).call(inputs, rng)",
    "params/": "params only (no optimizer state), plain Orbax: "
               "orbax.checkpoint.StandardCheckpointer().restore(path)",
    "config.json": "the resolved training config (model.head.num_sampling_steps overridden by "
                   "--sampling_steps when given)",
    "normalization.json": "the run's Normalizer (mode + per-dataset statistics) and the per-dim "
                          "constants the function applies for the exported dataset",
    "tokenizer.json": "the tokenizer spec (wam_jax.data.tokenizer.from_dict)",
}


def export_policy(workdir, out, *, step: Optional[int] = None, params: str = "auto",
                  sampling_steps: Optional[int] = None, dataset_name: Optional[str] = None,
                  platforms=DEFAULT_PLATFORMS, overwrite: bool = False,
                  log: Callable[[str], None] = print) -> dict:
  """Writes the artifact for ``workdir``'s checkpoint (newest, or ``step``) to ``out``.

  Args:
    params: "ema", "raw", or "auto" (EMA if the run kept it, else raw: what
      ``inference.load_policy`` uses).
    sampling_steps: overrides the generative head's ``num_sampling_steps``
      (an error for heads without a sampling loop).
    dataset_name: the mixture dataset the policy acts in (default: the first
      with actions, as ``CheckpointPolicy``).
    platforms: jax.export lowering platforms (the self-check runs on CPU).
  Returns the manifest (also written to ``out/manifest.json``).
  """
  start = time.perf_counter()
  out = pathlib.Path(out).absolute()
  if params not in ("auto", "ema", "raw"):
    raise ValueError(f"params={params!r}: expected 'ema', 'raw' or 'auto'")
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists: choose another --out or pass --overwrite")
  assets = _read_assets(workdir, step)
  config = ml_collections.ConfigDict(assets["config"])
  tokenizer = tokenizer_lib.from_dict(assets["tokenizer"])  # The run's own spec, as saved with it.
  ema_kept = float(config.train.ema_decay) > 0
  if params == "ema" and not ema_kept:
    raise ValueError(f"--params=ema: the run kept no EMA params (train.ema_decay="
                     f"{config.train.ema_decay}); use --params=raw")
  use_ema = params == "ema" or (params == "auto" and ema_kept)
  try:  # The evaluator's own rebuild path; the sampling-steps override is applied to its config.
    policy = inference.CheckpointPolicy(workdir, step=step, dataset_name=dataset_name, use_ema=use_ema,
                                        sampling_steps=sampling_steps)
  except ValueError as e:
    if sampling_steps is not None and "sampling steps" in str(e):
      raise ValueError(f"--sampling_steps={sampling_steps}: {e}") from None
    raise
  config = ml_collections.ConfigDict(policy.config.to_dict())
  host_params = jax.tree.map(np.asarray, jax.device_get(policy.params))
  ds = _dataset_facts(config, policy)
  norm = schema.normalization_constants(policy.normalizer, ds["name"])
  log(f"[export] {workdir} step {policy.step} ({'ema' if use_ema else 'raw'} params), dataset "
      f"{ds['name']!r}: lowering for {','.join(platforms)}")

  model = registry.build_model(config, num_datasets=len(ds["mixture"]))
  fn = policy_fn.make_policy_fn(model, norm, data_cfg=config.data, dataset_id=ds["id"],
                                dataset_cameras=ds["cameras"])
  (b,) = jax.export.symbolic_shape("b")
  specs = policy_fn.input_specs(config.data, ds["cameras"], len(norm["proprio"]["center"]), b)
  exported = jax.export.export(jax.jit(lambda inputs, rng: fn(host_params, inputs, rng)),
                               platforms=tuple(platforms))(*specs)
  blob = exported.serialize()

  tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    (tmp / STABLEHLO).write_bytes(blob)
    _save_params(tmp / "params", host_params)
    _write_json(tmp / "config.json", config.to_dict())
    _write_json(tmp / "normalization.json", dict(
        normalizer=policy.normalizer.to_dict(), dataset=ds["name"],
        constants={w: {k: v.tolist() for k, v in c.items()} for w, c in norm.items()}))
    _write_json(tmp / "tokenizer.json", tokenizer.to_dict())
    manifest = _manifest(config, policy, ds, norm, exported, host_params, use_ema, sampling_steps, workdir,
                         tokenizer)
    _write_json(tmp / "manifest.json", manifest)  # Without files/self-check, so the loader can open tmp.
    manifest["self_check"] = _self_check(tmp, policy)
    manifest["export_seconds"] = round(time.perf_counter() - start, 2)
    manifest["files"] = _describe_files(tmp)
    _write_json(tmp / "manifest.json", manifest)
    _fsync_tree(tmp)
    _replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  log(f"[export] wrote {out} ({size / 2**20:.2f} MiB) in {time.perf_counter() - start:.1f} s; "
      f"self-check max |diff| {manifest['self_check']['max_abs_diff']:.2g} vs "
      f"{manifest['self_check']['reference']}")
  return manifest


# --- Pieces ------------------------------------------------------------------

def _read_assets(workdir, step) -> dict:
  from wam_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True)
  try:
    assets, _ = ckpt.restore_assets(step)
  finally:
    ckpt.close()
  return assets


def _dataset_facts(config, policy) -> dict:
  """What the artifact records of the dataset the policy acts in (so loading it needs no registry)."""
  from wam_jax.data import registry_files  # pylint: disable=g-import-not-at-top
  registry_files.load_all(config.data.get("registry_files", ""))  # The run's own entries.
  name = policy.dataset_name
  spec = data_registry.get_spec(name)
  names = [item.name for item in data_registry.expand_mixture(config.data.mixture)]
  cameras = tuple(c for c in config.data.cameras if c in spec.cameras)
  features = _read_features(config, spec)
  shapes = {}
  for cam in cameras:
    shape = _feature_shape(features, spec.cameras[cam], "image")
    if shape is None and name.startswith("metaworld"):  # The recipe's render (evaluate.render_settings).
      r = int(config.data.metaworld.resolution)
      shape = (r, r, 3)
    shapes[cam] = tuple(shape) if shape else (None, None, 3)
  p_d = policy.normalizer.stats[name].proprio.mean.shape[0]
  key, p_slice = _live_proprio(spec, p_d)
  raw = _feature_shape(features, key, "tensor") if key else None
  p_raw = int(raw[0]) if raw else (None if p_slice else p_d)
  return dict(name=name, id=names.index(name) if name in names else 0, mixture=names, cameras=cameras,
              image_shapes=shapes, proprio_key=key, proprio_raw_dim=p_raw, proprio_dim=p_d,
              proprio_slice=p_slice, action_dim=policy.normalizer.action_dim(name),
              action_kind=policy.normalizer.action_kinds.get(name))


def _live_proprio(spec, p_d: int):
  """(step key, [start, stop] or None): the slice of an observation's proprio vector that is
  the training proprio (``DatasetSpec.proprio_from_vector``, which refuses composite proprio)."""
  spec.proprio_from_vector(np.zeros((1, 1 << 12), np.float32))  # Raises for composite proprio.
  parts = spec.proprio_parts
  if not parts:
    return None, [0, 0]
  part = parts[0]
  start = part.dims[0] if part.dims else 0
  if spec.proprio_dims:
    start += spec.proprio_dims[0]
  sliced = bool(part.dims or spec.proprio_dims)
  return part.key, [start, start + p_d] if sliced else None


def _read_features(config, spec):
  path = pipeline_lib.dataset_dir(config.data, spec.name) / "features.json"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _feature_shape(features, key: str, kind: str):
  """Shape of a step feature in a TFDS features.json ("observation/image" -> (64, 64, 3)), or None."""
  try:
    node = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]
    for part in key.split("/"):
      node = node["featuresDict"]["features"][part]
    return tuple(int(d) for d in node[kind]["shape"]["dimensions"])
  except (KeyError, TypeError, ValueError):
    return None


def _manifest(config, policy, ds, norm, exported, params, use_ema, sampling_steps, workdir, tokenizer) -> dict:
  data = config.data
  k, a = int(data.action_horizon), ds["action_dim"]
  obs = {}
  for cam in ds["cameras"]:
    obs[batch_lib.image_key(cam)] = dict(
        dtype="uint8", shape=list(ds["image_shapes"][cam]), camera=cam,
        units="RGB pixels 0-255, as the training frames were recorded (null dims: any size)")
  p_slice = ds["proprio_slice"]
  obs["proprio"] = dict(dtype="float32", shape=[ds["proprio_raw_dim"]],
                        min_dim=p_slice[1] if p_slice else ds["proprio_dim"], slice=p_slice,
                        dims=units.dims(ds["name"], "proprio", ds["proprio_dim"], p_slice[0] if p_slice else 0),
                          key=ds["proprio_key"],
                        units="the dataset's proprio units (per dim in 'dims'); any real dtype, cast to float32")
  action_dims = units.dims(ds["name"], "action", a)
  for what, dims in (("action", action_dims), ("proprio", obs["proprio"]["dims"])):
    c = norm[what]
    for d, info in enumerate(dims):  # x_norm = (x - center) / scale, clipped to [-1, 1] if clip.
      info.update(normalized=bool(c["mask"][d]), mode=policy.normalizer.mode, center=float(c["center"][d]),
                  scale=float(c["scale"][d]), clip=bool(c["clip"][d] and c["mask"][d]))
  from wam_jax.models import heads  # pylint: disable=g-import-not-at-top
  head = config.model.head
  fn_inputs, fn_rng = policy_fn.input_specs(data, ds["cameras"], ds["proprio_dim"], "b")
  sig = lambda s: dict(dtype=str(np.dtype(s.dtype)), shape=list(s.shape))  # noqa: E731
  metaworld = data.get("metaworld")
  return {
      "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION,
      "version": _version_stamp(),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "source": dict(workdir=str(pathlib.Path(workdir).absolute()), step=int(policy.step),
                     params="ema" if use_ema else "raw"),
      "model": dict(family=config.model.name, head=head["name"], num_params=int(sum(
          x.size for x in jax.tree.leaves(params))),
                    sampling_steps=heads.head_fields(head).get("num_sampling_steps"),
                    sampling_steps_override=sampling_steps,
                    compute_dtype=config.train.compute_dtype),
      "dataset": {k_: ds[k_] for k_ in ("name", "id", "mixture", "cameras")},
      "observation": obs,
      "instruction": dict(type="str", rule="non-empty; stripped, lower-cased, UTF-8 bytes + 1, cut at "
                                            f"{tokenizer.max_len} bytes (ByteTokenizer)"),
      "action": dict(dtype="float32", shape=[k, a], dims=action_dims, kind=ds["action_kind"],
                     units="de-normalized, the dataset's (env) units per dim in 'dims'"),
      "chunk": dict(horizon=k, execute_steps=int(config.eval.execute_steps),
                    temporal_ensemble=bool(config.eval.temporal_ensemble),
                    note="the policy returns K actions for steps t..t+K-1; the training recipe executes "
                         "'execute_steps' of them before querying again"),
      "preprocessing": dict(
          history=int(data.history), image_size=int(data.image_size),
          resize="PIL bilinear to image_size x image_size (wam_jax.data.rlds.resize_frames), per frame",
          padding="fewer than 'history' observations: the oldest repeated, history_mask False",
          zero_cameras=[c for c in data.cameras if c not in ds["cameras"]],
          tokenizer=tokenizer.to_dict(),
          normalization=dict(mode=policy.normalizer.mode, where="inside the function",
                             file="normalization.json")),
      "render": None if metaworld is None else dict(resolution=int(metaworld.resolution),
                                                    camera=metaworld.get("camera", "corner4")),
      "function": dict(
          file=STABLEHLO, platforms=list(exported.platforms),
          calling_convention_version=int(exported.calling_convention_version),
          call="jax.export.deserialize(open(file, 'rb').read()).call(inputs, rng) -> {'actions', 'rng'}",
          inputs={key: sig(s) for key, s in fn_inputs.items()}, rng=dict(sig(fn_rng), impl="threefry2x32",
          note="per-example key data; start from jax.random.key_data(jax.random.key(seed)) and feed back "
               "the returned 'rng'. Generative heads draw the batch's noise from example 0's key"),
          outputs=dict(actions=dict(dtype="float32", shape=["b", k, a]), rng=sig(fn_rng))),
  }


def _version_stamp() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  repo = pathlib.Path(wam_jax.__file__).resolve().parents[1]
  git = {}
  if (repo / ".git").exists():
    try:
      run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,  # noqa: E731
                                      timeout=10, check=True).stdout.strip()
      git = dict(commit=run("rev-parse", "HEAD"), dirty=bool(run("status", "--porcelain", "--untracked-files=no")))
    except (OSError, subprocess.SubprocessError):
      pass
  return dict(wam_jax=wam_jax.__version__, jax=jax.__version__, jaxlib=jax.lib.__version__ if hasattr(
      jax.lib, "__version__") else None, flax=flax.__version__, orbax=getattr(ocp, "__version__", None),
              numpy=np.__version__, **({"git": git} if git else {}))


def _save_params(path, params) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
    ckptr.wait_until_finished()


def _write_json(path, obj) -> None:
  path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _self_check(directory, policy) -> dict:
  """The StableHLO policy loaded from ``directory`` against the checkpoint policy (same
  sampling steps) on random observations that exercise padding and a full history."""
  from wam_jax.export import loader  # pylint: disable=g-import-not-at-top
  exported = loader.load(directory, seed=0)
  policy.reset()  # Freshly built: its key stream starts at jax.random.key(0), as the exported one's.
  rng = np.random.default_rng(0)
  worst = 0.0
  calls = exported.artifact.history + 2
  for _ in range(calls):
    obs = schema.example_observation(exported.manifest, rng)
    worst = max(worst, float(np.max(np.abs(exported(obs, "open the drawer") - policy(obs, "open the drawer")))))
  if not worst <= SELF_CHECK_ATOL:
    raise AssertionError(f"export self-check failed: the exported function's chunks differ from the "
                         f"checkpoint policy's by {worst:.3g} (> {SELF_CHECK_ATOL})")
  return dict(reference="checkpoint policy", calls=calls, max_abs_diff=worst)


def _describe_files(directory: pathlib.Path) -> dict:
  files = {}
  for name, what in _FILES.items():
    path = directory / name.rstrip("/")
    if name.endswith("/"):
      size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
      files[name] = dict(description=what, bytes=size)
    else:
      files[name] = dict(description=what, bytes=path.stat().st_size if name != "manifest.json" else None,
                         sha256=_sha256(path) if name != "manifest.json" else None)
  return files


def _sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _fsync_tree(directory: pathlib.Path) -> None:
  for f in directory.rglob("*"):
    if f.is_file():
      with open(f, "rb") as fh:
        os.fsync(fh.fileno())


def _replace(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Renames ``tmp`` to ``out``; an existing ``out`` (overwrite) is moved aside first, then deleted."""
  old = None
  if out.exists():
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    os.rename(out, old)
  os.rename(tmp, out)
  fd = os.open(out.parent, os.O_RDONLY)  # Make the rename itself durable.
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
