"""Fixtures for the export tests: one tiny trained run, its artifact, a live server.

The run is the trainer's tiny test config (tests/training/test_trainer.py) for
4 steps on the synthetic MetaWorld-schema data (frames recorded at 48 px,
trained at 32: resizing is exercised), with EMA params.
"""

import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.data.synthetic import syn_data_dir  # noqa: F401  (fixture)
from tests.training.test_trainer import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]
INSTRUCTION = "open the drawer"


@pytest.fixture(scope="session")
def trained_run(syn_data_dir, tmp_path_factory):  # noqa: F811
  from wam_jax.training import trainer
  workdir = tmp_path_factory.mktemp("export_src")
  cfg = tiny_config(syn_data_dir, steps=4)
  trainer.train(cfg, workdir, devices=jax.devices()[:1])
  return workdir


@pytest.fixture(scope="session")
def artifact_dir(trained_run, tmp_path_factory):
  from wam_jax.export import writer
  out = tmp_path_factory.mktemp("exports") / "tiny"
  writer.export_policy(trained_run, out, log=lambda s: None)
  return out


@pytest.fixture(scope="session")
def artifact(artifact_dir):
  """The artifact loaded once (StableHLO): sessions on it share one compiled function."""
  from wam_jax.export import loader
  return loader.Artifact(artifact_dir)


def observations(n: int, seed: int = 0, res: int = 48) -> list[dict]:
  """Schema-valid observations with random content at the recorded resolution."""
  rng = np.random.default_rng(seed)
  return [{"image_primary": rng.integers(0, 256, (res, res, 3), dtype=np.uint8),
           "proprio": rng.normal(size=4).astype(np.float32) * 3,
           "env_state": np.zeros(39, np.float32)} for _ in range(n)]


def drive(policy, obs_seq) -> list[np.ndarray]:
  """A fixed script of queries, observes and resets (as the evaluator drives a policy)."""
  chunks = []
  for i, obs in enumerate(obs_seq):
    if i == 4:
      policy.reset()
    if i % 3 == 2:
      policy.observe(obs)
    else:
      chunks.append(np.asarray(policy(obs, INSTRUCTION)))
  return chunks


class Server:
  """``scripts/serve.py`` in a subprocess; ready when its port file exists and /healthz answers."""

  def __init__(self, policy_dir, tmp_path, *args, deadline_s: float = 300):
    from wam_jax.export import client
    port_file = tmp_path / f"port-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    self.proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "serve.py"), f"--policy={policy_dir}", "--port=0",
         f"--port_file={port_file}", *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + deadline_s
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(f"serve.py exited {self.proc.returncode}:\n{self.proc.stdout.read()[-3000:]}")
      if port_file.exists():
        self.address = f"ws://127.0.0.1:{int(port_file.read_text())}"
        try:
          self.health = client.health(self.address, timeout=5)
          break
        except OSError:
          pass
      if time.monotonic() > deadline:
        self.stop()
        raise TimeoutError(f"serve.py did not become healthy within {deadline_s} s")
      time.sleep(0.1)  # Polling the port file / health endpoint, bounded by the deadline.

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def server(artifact_dir, tmp_path_factory):
  """One server for the server and fuzz tests: batching on (max 4), so both paths are live."""
  srv = Server(artifact_dir, tmp_path_factory.mktemp("serve"), "--max_batch=4", "--batch_wait_ms=50")
  yield srv
  srv.stop()
