"""The exported artifact: its files, exact equality with the checkpoint policy, loading in a
fresh process without model code (and with jax alone), schema errors, atomic writes."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from tests.export.conftest import INSTRUCTION, REPO, drive, observations
from wam_jax import inference
from wam_jax.export import loader, schema, writer


def test_manifest_documents_every_file_and_the_schemas(artifact_dir):
  m = json.loads((artifact_dir / "manifest.json").read_text())
  assert (m["format"], m["format_version"]) == (schema.FORMAT, schema.FORMAT_VERSION)
  names = {p.name + ("/" if p.is_dir() else "") for p in artifact_dir.iterdir()}
  assert names == set(m["files"]) == set(writer._FILES)
  for name, info in m["files"].items():
    if name.endswith("/") or name == "manifest.json":
      continue
    data = (artifact_dir / name).read_bytes()
    assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest(), name
  assert m["observation"]["image_primary"]["shape"] == [48, 48, 3]  # As recorded, not image_size.
  assert m["observation"]["proprio"]["shape"] == [4]
  assert [d["name"] for d in m["action"]["dims"]] == ["dx", "dy", "dz", "gripper"]
  assert all(d["unit"] for d in m["action"]["dims"] + m["observation"]["proprio"]["dims"])
  assert [d["normalized"] for d in m["action"]["dims"]] == [True, True, True, False]
  assert m["action"]["shape"] == [4, 4] and m["chunk"]["horizon"] == 4
  assert m["preprocessing"]["image_size"] == 32 and m["preprocessing"]["history"] == 2
  assert m["source"]["step"] == 4 and m["source"]["params"] == "ema"
  assert m["function"]["inputs"]["image_primary"]["shape"] == ["b", 2, 32, 32, 3]
  assert set(m["function"]["platforms"]) == {"cpu", "cuda", "tpu"}
  assert m["self_check"]["max_abs_diff"] == 0.0
  assert m["version"]["jax"] and m["version"]["wam_jax"]


def test_exported_policy_equals_the_checkpoint_policy_call_for_call(trained_run, artifact_dir):
  obs = observations(9)
  want = drive(inference.load_policy(trained_run), obs)
  for backend in ("stablehlo", "module"):
    got = drive(loader.load(artifact_dir, backend=backend), obs)
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
      assert a.shape == (4, 4) and a.dtype == np.float32
      np.testing.assert_array_equal(a, b, err_msg=backend)  # Bitwise, resize/padding/normalization included.


def test_fresh_process_runs_it_with_jax_alone_and_without_model_code(trained_run, artifact_dir, artifact,
                                                                    tmp_path):
  policy = loader.ExportedPolicy(artifact)
  obs = observations(3, seed=1)
  inputs = policy.prepare(obs[0], INSTRUCTION)
  np.savez(tmp_path / "inputs.npz", **{k: v[None] for k, v in inputs.items()}, rng__=policy.rng[None])
  want_fn = policy.artifact.run({k: v[None] for k, v in inputs.items()}, policy.rng[None])[0]
  session = loader.ExportedPolicy(artifact)
  want_policy = [session(o, INSTRUCTION) for o in obs]
  np.savez(tmp_path / "obs.npz", **{f"{i}_{k}": v for i, o in enumerate(obs) for k, v in o.items()})
  script = f"""
import json, sys
import numpy as np
from jax import export
d = np.load({str(tmp_path / 'inputs.npz')!r})
fn = export.deserialize(bytearray(open({str(artifact_dir / 'policy.stablehlo')!r}, 'rb').read()))
out = fn.call({{k: d[k] for k in d.files if k != 'rng__'}}, d['rng__'])
jax_only = dict(wam_jax=any(m.startswith('wam_jax') for m in sys.modules), actions=np.asarray(out['actions']).tolist())
import wam_jax.export
o = np.load({str(tmp_path / 'obs.npz')!r})
policy = wam_jax.export.load({str(artifact_dir)!r})
chunks = [policy({{k: o[f'{{i}}_{{k}}'] for k in ('image_primary', 'proprio')}}, {INSTRUCTION!r}).tolist()
          for i in range(3)]
loaded = sorted(m for m in sys.modules if m.startswith(('wam_jax.models', 'wam_jax.training', 'flax', 'orbax')))
import orbax.checkpoint as ocp
params = ocp.StandardCheckpointer().restore({str(artifact_dir / 'params')!r})
leaves = {{'/'.join(map(str, k)): np.asarray(v).tolist() for k, v in
          __import__('jax').tree_util.tree_flatten_with_path(params)[0][:3] for k in [[getattr(x, 'key', x) for x in k]]}}
print(json.dumps(dict(jax_only=jax_only, chunks=chunks, loaded=loaded, leaves=leaves)))
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["jax_only"]["wam_jax"] is False
  np.testing.assert_array_equal(np.float32(out["jax_only"]["actions"]), want_fn)
  assert out["loaded"] == [], f"loading the StableHLO policy imported {out['loaded']}"
  np.testing.assert_array_equal(np.float32(out["chunks"]), np.stack(want_policy))
  # Params restored by Orbax alone equal the checkpoint's EMA params.
  ckpt = inference.load_policy(trained_run)
  import jax
  want_leaves = {"/".join(str(getattr(x, "key", x)) for x in k): np.asarray(v)
                 for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(ckpt.params))[0][:3]}
  assert set(out["leaves"]) == set(want_leaves)
  for k, v in want_leaves.items():
    np.testing.assert_array_equal(np.asarray(out["leaves"][k], v.dtype), v, err_msg=k)


def _bad(obs, **changes):
  obs = dict(obs)
  for k, v in changes.items():
    if v is None:
      obs.pop(k)
    else:
      obs[k] = v
  return obs


BAD_OBSERVATIONS = {
    "missing camera": (dict(image_primary=None), "image_primary", "missing: expected uint8 [48, 48, 3]"),
    "wrong image size": (dict(image_primary=np.zeros((32, 32, 3), np.uint8)), "image_primary",
                         "expected uint8 [48, 48, 3], got uint8[32, 32, 3]"),
    "wrong image dtype": (dict(image_primary=np.zeros((48, 48, 3), np.float32)), "image_primary",
                          "expected uint8 [48, 48, 3], got float32[48, 48, 3]"),
    "grayscale image": (dict(image_primary=np.zeros((48, 48), np.uint8)), "image_primary",
                        "expected uint8 [48, 48, 3]"),
    "image as a list": (dict(image_primary=[[0, 1]]), "image_primary", "expected uint8 [48, 48, 3], got list"),
    "wrong proprio dim": (dict(proprio=np.zeros(3, np.float32)), "proprio", "expected float32 [4], got float32[3]"),
    "proprio as text": (dict(proprio="abc"), "proprio", "expected float32 [4]"),
    "missing proprio": (dict(proprio=None), "proprio", "missing: expected float32 [4]"),
    "non-finite proprio": (dict(proprio=np.array([0, np.nan, 0, 0], np.float32)), "proprio", "non-finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_OBSERVATIONS))
def test_schema_errors_name_the_field_and_expected_shape_and_change_nothing(artifact, case):
  changes, field, text = BAD_OBSERVATIONS[case]
  good = observations(2, seed=3)
  policy, fresh = loader.ExportedPolicy(artifact), loader.ExportedPolicy(artifact)
  policy.observe(good[0]), fresh.observe(good[0])
  with pytest.raises(schema.ObservationError) as e:
    policy(_bad(good[1], **changes), INSTRUCTION)
  assert e.value.field == field and str(e.value).startswith(f"{field}: ") and text in str(e.value), str(e.value)
  with pytest.raises(schema.ObservationError):
    policy.observe(_bad(good[1], **changes))
  np.testing.assert_array_equal(policy(good[1], INSTRUCTION), fresh(good[1], INSTRUCTION))  # History untouched.


@pytest.mark.parametrize("instruction", ["", "   ", None, 3])
def test_empty_or_non_text_instruction_is_an_error(artifact, instruction):
  with pytest.raises(schema.ObservationError, match=r"^instruction: expected a non-empty string"):
    loader.ExportedPolicy(artifact)(observations(1)[0], instruction)


def test_non_dict_observation_is_an_error(artifact):
  with pytest.raises(schema.ObservationError, match=r"^observation: expected a dict"):
    loader.ExportedPolicy(artifact)([1, 2], INSTRUCTION)


def test_export_is_atomic_and_never_overwrites_by_accident(trained_run, artifact_dir, tmp_path, monkeypatch):
  out = tmp_path / "x"
  with pytest.raises(FileExistsError, match="exists"):
    writer.export_policy(trained_run, artifact_dir, log=lambda s: None)

  def broken(*args, **kwargs):
    raise AssertionError("self-check failed (simulated)")
  monkeypatch.setattr(writer, "_self_check", broken)
  with pytest.raises(AssertionError, match="simulated"):
    writer.export_policy(trained_run, out, platforms=("cpu",), log=lambda s: None)
  assert list(tmp_path.iterdir()) == []  # Neither out nor a temp dir is left behind.


def test_param_and_sampling_choices_are_checked(trained_run, tmp_path):
  with pytest.raises(ValueError, match="params='best'"):
    writer.export_policy(trained_run, tmp_path / "a", params="best", log=lambda s: None)
  with pytest.raises(ValueError, match=r"--sampling_steps=5: head 'l1' has no sampling steps"):
    writer.export_policy(trained_run, tmp_path / "b", sampling_steps=5, log=lambda s: None)
  assert list(tmp_path.iterdir()) == []


def test_raw_params_export(trained_run, artifact_dir, tmp_path):
  """The export's self-check compares with ``CheckpointPolicy(use_ema=False)``; the params differ from EMA's."""
  from wam_jax.export import policy_fn
  out = tmp_path / "raw"
  m = writer.export_policy(trained_run, out, params="raw", platforms=("cpu",), log=lambda s: None)
  assert m["source"]["params"] == "raw" and m["function"]["platforms"] == ["cpu"]
  assert m["self_check"]["max_abs_diff"] == 0.0
  import jax
  raw, ema = (jax.tree.leaves(policy_fn.restore_params(d / "params")) for d in (out, artifact_dir))
  assert len(raw) == len(ema) and any(not np.array_equal(a, b) for a, b in zip(raw, ema))


def test_export_cli_prints_one_line_errors(trained_run, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  run = subprocess.run([sys.executable, str(REPO / "scripts" / "export.py"), f"--workdir={trained_run}",
                        f"--out={tmp_path / 'y'}", "--sampling_steps=3"], capture_output=True, text=True,
                       env=env, timeout=600)
  assert run.returncode == 2
  assert "error: --sampling_steps=3: head 'l1' has no sampling steps" in run.stderr
  assert not (tmp_path / "y").exists()


@pytest.mark.slow  # A second training run and a sampling loop to compile: ~1-2 min idle.
def test_generative_head_with_sampling_steps_override_follows_the_key_stream(syn_data_dir, tmp_path):
  """A flow head draws noise every call: equality with the checkpoint policy (same
  --sampling_steps) checks that the exported key stream is the checkpoint policy's."""
  import jax
  from tests.training.test_trainer import tiny_config
  from wam_jax.training import trainer
  cfg = tiny_config(syn_data_dir, steps=4)
  cfg.model.head.name = "flow"
  trainer.train(cfg, tmp_path / "run", devices=jax.devices()[:1])
  m = writer.export_policy(tmp_path / "run", tmp_path / "out", sampling_steps=3, platforms=("cpu",),
                           log=lambda s: None)
  assert m["model"]["head"] == "flow" and m["model"]["sampling_steps"] == 3
  assert json.loads((tmp_path / "out" / "config.json").read_text())["model"]["head"]["num_sampling_steps"] == 3
  obs = observations(6, seed=9)
  want = drive(inference.load_policy(tmp_path / "run", sampling_steps=3), obs)
  got = drive(loader.load(tmp_path / "out"), obs)
  assert not np.array_equal(got[0], got[1])  # Noise differs call to call...
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)  # ...exactly as the checkpoint policy's does.
