"""scripts/convert_rlds.py refuses a --dst that overlaps --src, before touching anything."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tree_digest(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def src(bridge_dir, tmp_path):
  """A writable copy of the TFRecord Bridge sample at <tmp>/data/bridge_dataset/1.0.0."""
  out = tmp_path / "data" / "bridge_dataset" / "1.0.0"
  shutil.copytree(bridge_dir, out)
  for p in [out, *out.iterdir()]:
    os.chmod(p, 0o755 if p.is_dir() else 0o644)
  return out


@pytest.mark.parametrize("where", ["same", "parent", "grandparent", "inside", "symlink"])
def test_overlapping_dst_is_refused_and_source_kept(src, where):
  dst = {"same": src, "parent": src.parent, "grandparent": src.parents[1],
         "inside": src / "converted"}.get(where)
  if where == "symlink":  # Another name for the source itself.
    dst = src.parents[2] / "alias"
    dst.symlink_to(src, target_is_directory=True)
  before = _tree_digest(src.parents[1])
  proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_rlds.py"), f"--src={src}",
                         f"--dst={dst}", "--overwrite"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "overlap" in lines[0] and str(src) in lines[0], proc.stderr[-2000:]
  assert _tree_digest(src.parents[1]) == before  # Nothing deleted, nothing written.
