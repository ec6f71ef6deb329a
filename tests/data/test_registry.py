"""Registry entries as data: composite keys, per-dim ops, registry files, the standard Open-X set."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.data import synthetic
from wam_jax.data import pipeline
from wam_jax.data import registry
from wam_jax.data import registry_files
from wam_jax.data import rlds

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "openx"
RT1_ACTION = ("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action")
STANDARD_SET = ("fractal20220817_data", "bridge", "kuka", "taco_play", "jaco_play",
                "berkeley_cable_routing", "roboturk", "viola", "berkeley_autolab_ur5", "toto",
                "language_table", "stanford_hydra", "austin_buds", "austin_sirius", "ucsd_kitchen",
                "furniture_bench", "droid")


@pytest.fixture(autouse=True)
def _restore_registry():
  """Tests register their own entries; the process-wide registry is put back after each."""
  saved = dict(registry._REGISTRY), dict(registry._MIXTURES)
  yield
  registry._REGISTRY.clear(), registry._REGISTRY.update(saved[0])
  registry._MIXTURES.clear(), registry._MIXTURES.update(saved[1])


@pytest.fixture(scope="module")
def rt1_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("rt1_root")
  synthetic.write_rt1(root)
  return root


def _write(path, tree):
  path.write_text(json.dumps(tree))
  return path


def _rt1_entry(**overrides):
  entry = {"directory": "rt1_style/1.0.0", "cameras": {"primary": "observation/image"},
           "proprio": ["observation/base_pose", "observation/gripper_closed"],
           "action": list(RT1_ACTION), "action_normalize_mask": [True] * 6 + [False],
           "action_kind": {"space": "eef", "mode": "delta", "rotation": "euler", "gripper": "relative"},
           "language": "observation/natural_language_instruction"}
  entry.update(overrides)
  return entry


def _hand_actions(e, length, gripper=lambda g: g):
  v = [synthetic.rt1_step_values(e, t) for t in range(length)]
  return np.stack([np.concatenate([s["world_vector"], s["rotation_delta"], [gripper(s["gripper"])]])
                   for s in v]).astype(np.float32)


def _windows(cfg, name, n=12):
  """Unaugmented windows of ``name`` (zscore: the round trip is exact up to float error)."""
  p = pipeline.make_pipeline(cfg, split="train", batch_size=n, seed=0, train=False)
  b = next(p.iterator)
  return b, p.normalizer


def test_dict_action_layout_gives_the_concatenated_raw_steps(rt1_root):
  """Issue 16: an RT-1-style dict action registered with a list of keys failed deep in the
  pipeline (AttributeError: 'tuple' object has no attribute 'split')."""
  registry.register(registry.DatasetSpec(
      name="rt1_style", directory="rt1_style/1.0.0", cameras={"primary": "observation/image"},
      proprio_key=("observation/base_pose", "observation/gripper_closed"), action_key=RT1_ACTION,
      action_normalize_mask=(True,) * 6 + (False,),
      language_key="observation/natural_language_instruction"))
  reader = pipeline.open_reader(synthetic.data_cfg(rt1_root), "rt1_style", "train")
  assert (reader.widths.proprio_dim, reader.widths.action_dim) == (8, 7)
  for e, length in enumerate((4, 6, 3)):
    ep = reader.decode(e)
    np.testing.assert_array_equal(ep.actions, _hand_actions(e, length))
    v = [synthetic.rt1_step_values(e, t) for t in range(length)]
    np.testing.assert_array_equal(ep.proprio, [np.concatenate([s["base_pose"], s["gripper_closed"]])
                                               for s in v])
    assert ep.instruction == f"rt1 task {e}"
  cfg = synthetic.data_cfg(rt1_root, (("rt1_style", 1.0),), normalization="zscore", proprio_dim=8)
  b, normalizer = _windows(cfg, "rt1_style")
  lengths = (4, 6, 3)
  for i in range(len(b["step"])):
    e, t = int(b["language_tokens"][i, 9]) - 1 - ord("0"), int(b["step"][i])  # "rt1 task <e>" (bytes + 1)
    n = min(cfg.action_horizon, lengths[e] - t)
    got = normalizer.denormalize_actions(b["actions"][i, :n], "rt1_style")[:, :7]
    np.testing.assert_allclose(got, _hand_actions(e, lengths[e])[t:t + n], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b["actions"][i, :n, 6], _hand_actions(e, lengths[e])[t:t + n, 6])


def test_registry_file_ops_flip_rescale_binarize_fill(rt1_root, tmp_path):
  """Per-dimension ops as data: each part's ops run in order on its raw values."""
  action = [{"key": "action/world_vector", "ops": [{"op": "rescale", "from": [1, 11], "to": [-1, 1]}]},
            {"fill": 0.0, "size": 2},
            {"key": "action/rotation_delta", "dims": [2, 3], "ops": [{"op": "clip", "range": [-1, 100]}]},
            {"key": "action/gripper_closedness_action", "ops": [{"op": "flip"}]},
            {"key": "action/gripper_closedness_action", "ops": [{"op": "binarize", "threshold": 0.5}]}]
  path = _write(tmp_path / "ops.json", {"datasets": {"rt1_ops": _rt1_entry(
      action=action, action_normalize_mask=[True] * 3 + [False] * 5)}})
  cfg = synthetic.data_cfg(rt1_root, (("rt1_ops", 1.0),), registry_files=str(path), action_dim=8,
                           proprio_dim=8, normalization="zscore")
  pipeline.parse_mixture(cfg)
  reader = pipeline.open_reader(cfg, "rt1_ops", "train")
  for e, length in enumerate((4, 6, 3)):
    want = []
    for t in range(length):
      v = synthetic.rt1_step_values(e, t)
      want.append(np.concatenate([(v["world_vector"] - 1) / 10 * 2 - 1, [0, 0],
                                  np.clip(v["rotation_delta"][2:3], -1, 100),
                                  [1 - v["gripper"], float(v["gripper"] > 0.5)]]))
    np.testing.assert_allclose(reader.decode(e).actions, np.array(want, np.float32), rtol=1e-6, atol=1e-6)
  b, _ = _windows(cfg, "rt1_ops")
  flip, binary = b["actions"][..., 6], b["actions"][..., 7]  # Mask False: raw values in windows.
  live = b["action_mask"]
  np.testing.assert_array_equal(binary[live] == 1, flip[live] < 0.5)
  assert set(np.unique(binary[live])) <= {0.0, 1.0}


def test_registry_files_reach_the_trainer_config_check(rt1_root, tmp_path):
  """trainer.check_config (parse_mixture) loads data.registry_files: a bad file fails before any work."""
  from experiments.configs import vla_baseline
  from wam_jax.training import trainer
  config = vla_baseline.get_config("tiny")
  good = _write(tmp_path / "good.json", {"datasets": {"rt1_file": _rt1_entry()},
                                         "mixtures": {"rt1_mix": {"datasets": {"rt1_file": 2.0}}}})
  config.data.update(registry_files=str(good), mixture=(("rt1_mix", 1.0),), data_dir=str(rt1_root))
  trainer.check_config(config, 1)
  assert pipeline.parse_mixture(config.data) == (("rt1_file", 2.0),)
  bad = _write(tmp_path / "bad.json", {"datasets": {"rt1_bad": _rt1_entry(camera={"primary": "x"})}})
  config.data.update(registry_files=f"{good},{bad}", mixture=(("rt1_file", 1.0),))
  with pytest.raises(ValueError, match=r"bad\.json: datasets\.rt1_bad\.camera: unknown field"):
    trainer.check_config(config, 1)


@pytest.mark.parametrize("mutate,field,problem", [
    (lambda e: e.update(cameras={"left": "observation/image"}), r"datasets\.x\.cameras\.left",
     "unknown field; known: primary, secondary, wrist"),
    (lambda e: e.update(proprio=5), r"datasets\.x\.proprio", "expected a key or a list of parts, got int"),
    (lambda e: e.update(action_normalize_mask=[1, 0]), r"datasets\.x\.action_normalize_mask",
     "expected a list of booleans"),
    (lambda e: e["action"].append({"key": "a", "ops": [{"op": "flp"}]}), r"datasets\.x\.action\[3\]\.ops\[0\]\.op",
     "'flp' is not one of flip, rescale, binarize, clip"),
    (lambda e: e["action"].append({"key": "a", "ops": [{"op": "flip", "range": [0, 1]}]}),
     r"datasets\.x\.action\[3\]\.ops\[0\]\.range", "not a field of op 'flip'"),
    (lambda e: e["action"].append({"key": "a", "dims": [3, 1]}), r"datasets\.x\.action\[3\]\.dims",
     r"must be \[start, stop\)"),
    (lambda e: e["action"].append({"fill": 0}), r"datasets\.x\.action\[3\]\.size", "missing"),
    (lambda e: e.update(action_kind={"space": "eef", "mode": "delta", "rotation": "rpy", "gripper": "none"}),
     r"datasets\.x\.action_kind\.rotation", "'rpy' is not one of"),
    (lambda e: e.pop("directory"), r"datasets\.x\.directory", "missing"),
    (lambda e: e.update(language=3), r"datasets\.x\.language", "expected a string"),
])
def test_registry_file_errors_name_file_and_field(tmp_path, mutate, field, problem):
  entry = _rt1_entry()
  mutate(entry)
  path = _write(tmp_path / "mine.json", {"datasets": {"x": entry}})
  with pytest.raises(ValueError) as e:
    registry_files.load(path)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(str(path.resolve()) + ": ")
  assert pytest.importorskip("re").search(f"{field}: .*{problem}", msg), msg
  with pytest.raises(ValueError, match="unknown dataset 'x'"):
    registry.get_spec("x")  # Nothing from a bad file is registered.


def test_registry_file_formats_and_clashes(tmp_path):
  yaml = pytest.importorskip("yaml")
  (tmp_path / "a.yaml").write_text(yaml.safe_dump({"datasets": {"y1": _rt1_entry()}}))
  (tmp_path / "b.py").write_text(f"REGISTRY = {{'datasets': {{'p1': {_rt1_entry()!r}}}}}\n"
                                 .replace("True", "True").replace("'", '"'))
  registry_files.load_all(f"{tmp_path / 'a.yaml'},{tmp_path / 'b.py'}")
  assert registry.get_spec("y1").action_kind.gripper == "relative"
  assert registry.get_spec("p1").source == str((tmp_path / "b.py").resolve())
  registry_files.load(tmp_path / "a.yaml")  # Loading again: a no-op.
  other = _write(tmp_path / "other.json", {"datasets": {"y1": _rt1_entry(directory="elsewhere/1.0.0")}})
  with pytest.raises(ValueError, match=r"dataset 'y1' from .*other\.json is already registered from .*a\.yaml"):
    registry_files.load(other)
  with pytest.raises(ValueError, match=r"data\.registry_files: .*nope\.json does not exist"):
    registry_files.load_all(str(tmp_path / "nope.json"))
  (tmp_path / "broken.json").write_text("{\"datasets\": ")
  with pytest.raises(ValueError, match=r"broken\.json: not a valid json registry file"):
    registry_files.load(tmp_path / "broken.json")
  with pytest.raises(ValueError, match=r"bridge' from .*mine\.json is already registered from .*openx\.json"):
    registry_files.load(_write(tmp_path / "mine.json", {"datasets": {"bridge": _rt1_entry()}}))


def test_mixture_errors():
  with pytest.raises(ValueError, match=r"dataset 'bridge' twice \(oxe_standard and directly\)"):
    registry.expand_mixture([("oxe_standard", 1.0), ("bridge", 1.0)])
  with pytest.raises(ValueError, match=r"weight of 'bridge' must be > 0"):
    registry.expand_mixture([("bridge", 0.0)])
  with pytest.raises(ValueError, match=r"unknown dataset 'brige'"):
    registry.expand_mixture(["brige"])
  registry.register_mixture(registry.Mixture("typo_mix", (("bridge", 1.0), ("brdge", 1.0)), source="t.json"))
  with pytest.raises(ValueError, match=r"mixture 'typo_mix' \(t\.json\) names unknown dataset 'brdge'"):
    registry.expand_mixture(["typo_mix"])
  items = registry.expand_mixture([("oxe_standard", 2.0)])
  assert {i.name for i in items} == set(STANDARD_SET) and all(i.balance for i in items)
  assert dict((i.name, i.weight) for i in items)["taco_play"] == 4.0
  assert registry.expand_mixture(["bridge"])[0].weight == 1.0  # A bare name: weight 1.


def test_feature_checks_name_dataset_role_and_key(rt1_root):
  features = tfds.features.FeaturesDict.from_config(str(rt1_root / "rt1_style" / "1.0.0"))
  base = dict(name="chk", directory="d", cameras={"primary": "observation/image"},
              proprio_key="observation/base_pose", action_normalize_mask=(True,) * 7)
  cases = [
      (dict(action_key=("action/world_vector", "action/rotation_delt", "action/gripper_closedness_action")),
       r"'chk' \(python\): action\[1\] key 'action/rotation_delt' is not a step feature"),
      (dict(action_key=RT1_ACTION, action_normalize_mask=(True,) * 6),
       r"has 7 dims but action_normalize_mask has 6"),
      (dict(action_key=(registry.Part("action/world_vector", dims=(1, 5)),) + RT1_ACTION[1:]),
       r"action\[0\] key 'action/world_vector' has 3 dims; dims \[1, 5\] fall outside it"),
      (dict(action_key=RT1_ACTION, cameras={"primary": "observation/base_pose"}),
       r"camera primary key 'observation/base_pose' is not an RGB image"),
      (dict(action_key=("observation/image",), action_normalize_mask=(True,)),
       r"action key 'observation/image': expected a numeric scalar or vector"),
      (dict(action_key=RT1_ACTION, language_key="observation/base_pose"),
       r"language key 'observation/base_pose' is float32"),
  ]
  for kw, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      registry.validate_features(registry.DatasetSpec(**{**base, **kw}), features)


@pytest.mark.parametrize("name", STANDARD_SET)
def test_standard_set_matches_published_features(name, bridge_dir):
  """Each standard entry against the published feature spec (a typo fails here, without data)."""
  spec = registry.get_spec(name)
  directory = bridge_dir if name == "bridge" else FIXTURES / name
  widths = registry.validate_features(spec, tfds.features.FeaturesDict.from_config(str(directory)))
  assert spec.cameras.get("primary") and spec.action_kind is not None
  assert widths.action_dim == len(spec.action_normalize_mask) <= 8
  assert spec.source.endswith("openx.json")


def test_oxe_standard_mixture_and_kinds():
  m = registry.get_mixture("oxe_standard")
  weights = dict(m.datasets)
  assert set(weights) == set(STANDARD_SET) and m.balance
  assert (weights["fractal20220817_data"], weights["language_table"], weights["droid"]) == (0.54087122203, 0.1, 0.06)
  report = pipeline.conventions_report([n for n, _ in m.datasets])
  assert "mixes action conventions" in report and "gripper=relative: fractal20220817_data, kuka" in report
  assert pipeline.conventions_report(["bridge", "taco_play", "stanford_hydra"]) is None


def test_keys_with_slash_and_codepoint_language():
  step = {"observation": {"clip_function_input/base_pose_tool_reached": np.arange(3), "x": 1}}
  np.testing.assert_array_equal(
      registry.get_step_value(step, "observation/clip_function_input/base_pose_tool_reached"), [0, 1, 2])
  with pytest.raises(KeyError):
    registry.get_step_value(step, "observation/clip_function_input")
  codes = np.zeros(16, np.int32)
  codes[:9] = [ord(c) for c in "push é ∆ "]
  assert registry.decode_language(codes, "codepoints") == "push é ∆ "
  assert registry.decode_language(b"pick", "text") == "pick"


def test_mixed_conventions_are_recorded_with_the_normalizer(rt1_root, syn_data_dir, tmp_path, monkeypatch):
  import shutil
  shutil.copytree(rt1_root / "rt1_style", syn_data_dir / "rt1_style", dirs_exist_ok=True)
  path = _write(tmp_path / "k.json", {"datasets": {"rt1_kind": _rt1_entry()}})
  cfg = synthetic.data_cfg(syn_data_dir, (("rt1_kind", 1.0), ("metaworld_demos", 1.0)),
                           registry_files=str(path), proprio_dim=8)
  warned = []
  monkeypatch.setattr(pipeline.logging, "warning", lambda msg, *a: warned.append(msg % a if a else msg))
  p = pipeline.make_pipeline(cfg, split="train", batch_size=4, seed=0, train=False)
  assert p.normalizer.action_kinds == {"rt1_kind": "eef/delta/rotation=euler/gripper=relative",
                                       "metaworld_demos": "eef/delta/rotation=none/gripper=effort"}
  assert p.normalizer.from_dict(p.normalizer.to_dict()).action_kinds == p.normalizer.action_kinds
  assert len(warned) == 1 and "rt1_kind" in warned[0] and "metaworld_demos" in warned[0]
  narrow = synthetic.data_cfg(syn_data_dir, (("rt1_kind", 1.0),), registry_files=str(path), proprio_dim=4)
  with pytest.raises(ValueError, match=r"'rt1_kind': proprio has 8 dims, more than data.proprio_dim=4"):
    pipeline.make_pipeline(narrow, split="train", batch_size=4, seed=0, train=False)


def test_inputs_refuse_composite_proprio_for_live_observations():
  spec = registry.DatasetSpec(name="comp", directory="d", cameras={},
                              proprio_key=("a", "b"), action_key=None)
  with pytest.raises(ValueError, match=r"'comp': proprio \['a', 'b'\] is composite"):
    spec.proprio_from_vector(np.zeros((2, 3), np.float32))
  simple = registry.DatasetSpec(name="s", directory="d", cameras={}, proprio_key="a",
                                action_key=None, proprio_dims=(1, 3))
  np.testing.assert_array_equal(simple.proprio_from_vector(np.arange(8.0).reshape(2, 4)), [[1, 2], [5, 6]])
