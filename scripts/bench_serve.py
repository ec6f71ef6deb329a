r"""Latency of an exported policy: StableHLO vs module at batch 1, and through the policy server
on loopback (round trip, requests/s with 1 and N clients, with and without batching).

  python scripts/bench_serve.py --policy=exports/tiny --requests=300 --clients=1,8

Every number is a policy call as the evaluator sees it (checks, resize, tokenization,
normalization, the function, de-normalization), on one fixed observation after warm-up.
Server overhead: local and remote calls alternated (load drifts cancel), median of the differences.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_POLICY = flags.DEFINE_string("policy", None, "Exported policy directory.", required=True)
_REQUESTS = flags.DEFINE_integer("requests", 300, "Timed calls per measurement (after 20 warm-up calls).")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8"], "Concurrent client counts for requests/s.")
_BATCHES = flags.DEFINE_list("max_batch", ["1", "8"], "Server --max_batch settings to measure.")
_PAIRED_ONLY = flags.DEFINE_bool("paired_only", False, "Only the paired local/remote overhead measurement.")
_INSTRUCTION = "open the drawer"


def _stats(seconds) -> dict:
  ms = 1e3 * np.asarray(seconds)
  return dict(median_ms=round(float(np.median(ms)), 3), p95_ms=round(float(np.percentile(ms, 95)), 3),
              mean_ms=round(float(ms.mean()), 3))


def _time_calls(fn, n: int, warmup: int = 20) -> list:
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def _local(policy_dir, obs) -> dict:
  from wam_jax.export import loader  # pylint: disable=g-import-not-at-top
  out = {}
  for backend in ("stablehlo", "module"):
    artifact = loader.Artifact(policy_dir, backend)
    policy = loader.ExportedPolicy(artifact)
    out[backend] = _stats(_time_calls(lambda: policy(obs, _INSTRUCTION), _REQUESTS.value))
    inputs = {k: v[None] for k, v in policy.prepare(obs, _INSTRUCTION).items()}
    rng = policy.rng[None]
    out[f"{backend} function only"] = _stats(_time_calls(lambda: artifact.run(inputs, rng), _REQUESTS.value))
  return out


class _Server:
  def __init__(self, policy_dir, max_batch: int):
    from wam_jax.export import client  # pylint: disable=g-import-not-at-top
    self._tmp = tempfile.TemporaryDirectory()
    port_file = pathlib.Path(self._tmp.name) / "port"
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"),
         f"--policy={policy_dir}", "--port=0", f"--port_file={port_file}", f"--max_batch={max_batch}"],
        env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(f"serve.py exited {self.proc.returncode}")
      if port_file.exists():
        self.address = f"ws://127.0.0.1:{int(port_file.read_text())}"
        try:
          client.health(self.address)
          return
        except OSError:
          pass
      if time.monotonic() > deadline:
        raise TimeoutError("serve.py did not become healthy in 600 s")
      time.sleep(0.1)

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=60)
    self._tmp.cleanup()


def _remote(address, obs, clients: int) -> dict:
  from wam_jax.export import client  # pylint: disable=g-import-not-at-top
  if clients == 1:
    with client.RemotePolicy(address) as remote:
      seconds = _time_calls(lambda: remote(obs, _INSTRUCTION), _REQUESTS.value)
      server_ms = []
      for _ in range(50):
        remote(obs, _INSTRUCTION)
        server_ms.append(remote.last_timing["server"])
    return dict(round_trip=_stats(seconds), requests_per_s=round(len(seconds) / sum(seconds), 1),
                server_side_median_ms=round(float(np.median(server_ms)), 3))
  per_client = max(1, _REQUESTS.value // clients)
  remotes = [client.RemotePolicy(address) for _ in range(clients)]
  for r in remotes:
    for _ in range(5):
      r(obs, _INSTRUCTION)
  barrier = threading.Barrier(clients + 1)
  lat, batches = [], []

  def run(r):
    barrier.wait()
    for _ in range(per_client):
      start = time.perf_counter()
      r(obs, _INSTRUCTION)
      lat.append(time.perf_counter() - start)
      batches.append(r.last_timing["batch"])

  threads = [threading.Thread(target=run, args=(r,)) for r in remotes]
  for t in threads:
    t.start()
  barrier.wait()
  start = time.perf_counter()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  for r in remotes:
    r.close()
  return dict(round_trip=_stats(lat), requests_per_s=round(clients * per_client / wall, 1),
              mean_batch=round(float(np.mean(batches)), 2))


def _paired_overhead(policy_dir, address, obs) -> dict:
  """Local and remote calls alternated, so machine load drifts cancel: median of (remote - local)."""
  from wam_jax.export import client, loader  # pylint: disable=g-import-not-at-top
  local = loader.load(policy_dir)
  with client.RemotePolicy(address) as remote:
    for _ in range(20):
      local(obs, _INSTRUCTION), remote(obs, _INSTRUCTION)
    pairs = []
    for _ in range(_REQUESTS.value):
      t0 = time.perf_counter()
      local(obs, _INSTRUCTION)
      t1 = time.perf_counter()
      remote(obs, _INSTRUCTION)
      pairs.append((t1 - t0, time.perf_counter() - t1))
  pairs = 1e3 * np.asarray(pairs)
  return dict(local_median_ms=round(float(np.median(pairs[:, 0])), 3),
              remote_median_ms=round(float(np.median(pairs[:, 1])), 3),
              overhead_median_ms=round(float(np.median(pairs[:, 1] - pairs[:, 0])), 3),
              overhead_p25_p75_ms=[round(float(q), 3) for q in np.percentile(pairs[:, 1] - pairs[:, 0], [25, 75])])


def main(argv):
  del argv
  from wam_jax.export import schema  # pylint: disable=g-import-not-at-top
  manifest = json.loads((pathlib.Path(_POLICY.value) / "manifest.json").read_text())
  obs = schema.example_observation(manifest, np.random.default_rng(0))
  size = sum(f.stat().st_size for f in pathlib.Path(_POLICY.value).rglob("*") if f.is_file())
  results = dict(policy=_POLICY.value, load_average=os.getloadavg(), artifact_mib=round(size / 2**20, 2),
                 export_seconds=manifest.get("export_seconds"), params=manifest["model"]["num_params"],
                 local={} if _PAIRED_ONLY.value else _local(_POLICY.value, obs), server={})
  print(json.dumps(results["local"], indent=1), flush=True)
  for max_batch in map(int, _BATCHES.value):
    server = _Server(_POLICY.value, max_batch)
    try:
      if max_batch == 1:
        results["paired_overhead"] = _paired_overhead(_POLICY.value, server.address, obs)
        print(f"paired (max_batch=1, 1 client): {json.dumps(results['paired_overhead'])}", flush=True)
      for clients in ([] if _PAIRED_ONLY.value else map(int, _CLIENTS.value)):
        r = _remote(server.address, obs, clients)
        results["server"][f"max_batch={max_batch} clients={clients}"] = r
        print(f"max_batch={max_batch} clients={clients}: {json.dumps(r)}", flush=True)
    finally:
      server.stop()
  results["load_average_end"] = os.getloadavg()
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  app.run(main)
