"""Test-session setup shared by every test module.

* 8 host CPU devices, so sharding tests use real meshes (single-device tests
  build a 1-device mesh explicitly).
* absl flags marked parsed: grain worker processes read flags at start-up.
* Headless MuJoCo through EGL.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BRIDGE_DIR = REPO.parent / "shared" / "data" / "bridge_debug" / "bridge_dataset" / "1.0.0"


@pytest.fixture(scope="session")
def bridge_dir():
  if not BRIDGE_DIR.exists():
    pytest.fail(f"real Bridge sample missing at {BRIDGE_DIR} (CI copies ../shared beside the repo)")
  return BRIDGE_DIR


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (``-n 2 --dist loadgroup``, the README's test command) each test file runs
  on one worker, so a module's compiled fixtures are built once; tests/export shares session
  fixtures (a trained run, its exported artifact) across files, so it is one group."""
  for item in items:
    path = pathlib.Path(str(item.fspath)).relative_to(REPO)
    group = "tests/export" if path.parts[:2] == ("tests", "export") else str(path)
    item.add_marker(pytest.mark.xdist_group(group))
