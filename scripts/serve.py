r"""Serves an exported policy over a websocket (protocol: wam_jax/export/server.py).

  python scripts/serve.py --policy=exports/tiny                    # ws://127.0.0.1:8000
  python scripts/serve.py --policy=exports/tiny --port=8100 --max_batch=8 --batch_wait_ms=2

Clients: ``wam_jax.export.client.RemotePolicy("ws://127.0.0.1:8000")`` or
``experiments/eval.py --policy=remote --address=ws://127.0.0.1:8000``. Health:
``curl http://127.0.0.1:8000/healthz``. Binds to 127.0.0.1 unless --host says otherwise.
"""

import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_POLICY = flags.DEFINE_string("policy", None, "Exported policy directory (scripts/export.py --out).", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 exposes the server to the network).")
_PORT = flags.DEFINE_integer("port", 8000, "Port (0: any free port; see --port_file).")
_PORT_FILE = flags.DEFINE_string("port_file", "", "Write the bound port here once listening (atomic).")
_BACKEND = flags.DEFINE_enum("backend", "stablehlo", ["stablehlo", "module"], "How to run the policy.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 1, "Requests run together in one call (1: no batching).")
_BATCH_WAIT = flags.DEFINE_float("batch_wait_ms", 0.0, "How long a batch waits for more requests.")
_MAX_MESSAGE = flags.DEFINE_integer("max_message_bytes", 0, "Largest request (0: from the schema).")
_MAX_SESSIONS = flags.DEFINE_integer("max_sessions", 64, "Concurrent sessions before new ones get 503.")
_SEED = flags.DEFINE_integer("seed", 0, "Each session's key stream starts at this seed.")


def main(argv):
  del argv
  from wam_jax.export import loader, server  # pylint: disable=g-import-not-at-top
  artifact = loader.Artifact(_POLICY.value, backend=_BACKEND.value)
  srv = server.PolicyServer(artifact, max_batch=_MAX_BATCH.value, batch_wait_ms=_BATCH_WAIT.value,
                            max_message_bytes=_MAX_MESSAGE.value or None,
                            max_sessions=_MAX_SESSIONS.value, seed=_SEED.value)
  artifact.warmup(srv.worker.buckets())  # Compile every batch shape before taking clients.

  def ready(port):
    if _PORT_FILE.value:
      tmp = f"{_PORT_FILE.value}.tmp-{os.getpid()}"
      with open(tmp, "w") as f:
        f.write(f"{port}\n")
      os.replace(tmp, _PORT_FILE.value)
    print(f"[serve] {_POLICY.value} ({_BACKEND.value}) on ws://{_HOST.value}:{port} "
          f"(health: http://{_HOST.value}:{port}/healthz)", flush=True)

  async def run():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
      loop.add_signal_handler(sig, stop.set)
    await srv.run(_HOST.value, _PORT.value, ready=ready, stop=stop)

  asyncio.run(run())
  print("[serve] stopped", flush=True)


if __name__ == "__main__":
  app.run(main)
