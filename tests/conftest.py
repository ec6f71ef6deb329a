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


def xdist_scope(nodeid: str) -> str:
  """The work unit of a test under pytest-xdist: its file, except that tests/export is one unit
  (its files share session fixtures: a trained run and its exported artifact)."""
  path = nodeid.split("::", 1)[0]
  return "tests/export" if path.startswith("tests/export/") else path


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: plain pytest runs without xdist
def pytest_xdist_make_scheduler(config, log):
  """``-n 2 --dist loadfile`` (the README's test command) with ``xdist_scope``'s units, so a
  module's compiled fixtures are built once, on one worker. (pytest-xdist's ``loadgroup`` marks
  do nothing under pytest 9.2: xdist 3.8 renames a test through ``item._nodeid``, which pytest 9.2
  no longer reads; measured in session 24.)"""
  if config.getvalue("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

  class ByFile(LoadFileScheduling):
    def _split_scope(self, nodeid):
      return xdist_scope(nodeid)

  return ByFile(config, log)
