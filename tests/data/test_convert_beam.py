"""The Beam conversion (DirectRunner) equals the in-process one byte for byte, and resumes by shard.

Skipped when apache_beam is not installed (``pip install -e '.[beam]'``).
"""

import json
import os

import pytest

from wam_jax.data import convert_beam
from wam_jax.data import rlds


def _files(directory):
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_beam_conversion_is_byte_identical_to_in_process(bridge_dir, bridge_ar_root, tmp_path):
  pytest.importorskip("apache_beam")
  dst = tmp_path / "bridge_dataset" / "1.0.0"
  r = convert_beam.convert(bridge_dir, dst, runner="direct")
  assert (r["episodes"], r["shards"], r["skipped"]) == (50, 2, 0)
  assert _files(dst) == _files(bridge_ar_root / "bridge_dataset" / "1.0.0")
  assert not convert_beam.partial_dir(dst).exists()
  with pytest.raises(ValueError, match="exists"):
    convert_beam.convert(bridge_dir, dst, runner="direct")


def test_beam_conversion_resumes_by_shard(bridge_dir, bridge_ar_root, tmp_path):
  pytest.importorskip("apache_beam")
  dst = tmp_path / "out" / "1.0.0"
  info, jobs = rlds.plan_conversion(bridge_dir, dst)
  partial = convert_beam.partial_dir(dst)
  partial.mkdir(parents=True)
  done = convert_beam.convert_one(jobs[0], str(partial))  # A run killed after its first shard ...
  (partial / f".{jobs[1].name}.tmp-dead").write_bytes(b"half a shard")  # ... mid-way through the second.
  before = os.stat(partial / jobs[0].name).st_mtime_ns
  r = convert_beam.convert(bridge_dir, dst, runner="direct")
  assert (r["skipped"], r["episodes"], done["records"]) == (1, 50, 25)
  assert os.stat(dst / jobs[0].name).st_mtime_ns == before  # Not rewritten.
  assert _files(dst) == _files(bridge_ar_root / "bridge_dataset" / "1.0.0")


def test_missing_beam_or_bad_source_is_one_line(tmp_path, bridge_dir, monkeypatch):
  import builtins
  real_import = builtins.__import__
  def no_beam(name, *a, **k):
    if name.startswith("apache_beam"):
      raise ImportError(name)
    return real_import(name, *a, **k)
  monkeypatch.setattr(builtins, "__import__", no_beam)
  with pytest.raises(ValueError, match=r"needs apache-beam: pip install -e '\.\[beam\]'"):
    convert_beam.convert(bridge_dir, tmp_path / "x" / "1.0.0", runner="direct")
  monkeypatch.setattr(builtins, "__import__", real_import)
  pytest.importorskip("apache_beam")
  with pytest.raises(ValueError, match="overlaps src"):
    convert_beam.convert(bridge_dir, bridge_dir / "inside", runner="direct")
  (tmp_path / "ar" / "1.0.0").mkdir(parents=True)
  (tmp_path / "ar" / "1.0.0" / "dataset_info.json").write_text(json.dumps(
      {"name": "ar", "fileFormat": "array_record", "splits": []}))
  with pytest.raises(ValueError, match="already 'array_record', not tfrecord"):
    convert_beam.convert(tmp_path / "ar" / "1.0.0", tmp_path / "y" / "1.0.0", runner="direct")
