"""scripts/bench_data.py writes only into a scratch directory of its own."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import bench_data  # noqa: E402


def _listing(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*"))}


def test_bench_data_setup_leaves_existing_datasets_alone(bridge_dir, tmp_path):
  # A user's data_dir with its own Bridge dataset, given as the scratch dir by mistake.
  user = tmp_path / "bridge_dataset" / "1.0.0"
  user.mkdir(parents=True)
  (user / "dataset_info.json").write_text('{"mine": true}')
  before = _listing(tmp_path)
  data_dir, report = bench_data.prepare_data(bridge_dir, scratch=tmp_path)
  assert report["episodes"] == 50
  assert data_dir.parent == tmp_path and data_dir.name.startswith("wam_bench_")
  assert (data_dir / "bridge_dataset" / "1.0.0" / "dataset_info.json").exists()
  after = {k: v for k, v in _listing(tmp_path).items() if not k.startswith(data_dir.name)}
  assert after == before  # Everything it wrote is inside its own fresh directory.
  bench_data.cleanup(data_dir)
  assert not data_dir.exists() and _listing(tmp_path) == before
