"""A policy server: an exported artifact behind a websocket, msgpack messages.

One connection is one session (its own history and key stream, as a local
``ExportedPolicy``). The server speaks first; every request gets exactly one
reply, in order:

  server -> {"type": "hello", "protocol": 1, "session": int, "manifest": {...}}
  client -> {"type": "infer", "obs": {...}, "instruction": str,
             "reset": bool (optional: reset first), "observed": [obs, ...] (optional: steps
             executed since the last request, oldest first), "id": any (optional, echoed)}
  server -> {"type": "actions", "actions": float32 [K, A], "timing": {...}, "id": ...}
  client -> {"type": "observe", "obs": {...}}  or  {"type": "reset"}
  server -> {"type": "ok", "timing": {...}}
  server -> {"type": "error", "error": "<what, naming the field>", "field": str | None, "id": ...}

A request is checked whole before any of it is applied: an error reply leaves the
session as it was, and the connection stays open. ``timing`` (ms): ``server``
(message received -> reply ready), ``decode``, ``prepare`` (schema checks,
resize, tokenization), ``queue`` (waiting for the inference thread), ``infer``
(the function call, shared by the batch), and ``batch`` (requests in that call).

Inference runs on one thread, never on the event loop, so slow calls never stall
other sessions' I/O. With ``max_batch > 1`` it takes whatever requests are waiting
(up to ``max_batch``, waiting at most ``batch_wait_ms`` for more) and runs them
as one call, padded to a power of two so only a few shapes are ever compiled.
A batch of one is bitwise a local ``ExportedPolicy``; in a larger batch,
matmuls may round differently (~1e-7) and a generative head draws the batch's
noise from its first request's key.

``GET /healthz`` answers JSON (status, sessions, request and error counts, RSS,
whether model code is loaded). Messages larger than ``max_message_bytes`` get
an error reply; beyond twice that, websockets closes the connection (code 1009).
"""

import asyncio
import http
import json
import queue
import sys
import threading
import time
from typing import Callable, Optional

import numpy as np
from websockets.asyncio.server import serve

from wam_jax.export import loader, schema, wire

PROTOCOL = 1
MAX_OBSERVED = 64
_REQUEST_FIELDS = {
    "infer": {"type", "obs", "instruction", "reset", "observed", "id"},
    "observe": {"type", "obs", "id"},
    "reset": {"type", "id"},
}


class RequestError(ValueError):
  """A request the server refuses; ``field`` names the offending part."""

  def __init__(self, message: str, field: Optional[str] = None):
    super().__init__(message)
    self.field = field


def default_max_message_bytes(manifest: dict) -> int:
  """Room for an infer request carrying a full history of observations, x4, at least 1 MiB."""
  size = int(manifest["preprocessing"]["image_size"])
  obs = 1024
  for key, field in manifest["observation"].items():
    if key.startswith(schema.IMAGE_PREFIX):
      h, w = (d or max(size, 512) for d in field["shape"][:2])
      obs += h * w * 3
  return max(1 << 20, 4 * (int(manifest["preprocessing"]["history"]) + 1) * obs)


def _rss_mb() -> float:
  try:
    with open("/proc/self/statm") as f:
      import os  # pylint: disable=g-import-not-at-top
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return float("nan")


class _InferenceThread:
  """Runs the artifact's function on one thread; batches waiting requests."""

  def __init__(self, artifact: loader.Artifact, max_batch: int, batch_wait_ms: float):
    self.artifact = artifact
    self.max_batch = max(1, int(max_batch))
    self.batch_wait = max(0.0, batch_wait_ms) / 1e3
    self.queue = queue.Queue()
    self.calls = 0
    self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

  def buckets(self) -> list[int]:
    """Batch sizes compiled: powers of two below max_batch, and max_batch."""
    sizes, b = [], 1
    while b < self.max_batch:
      sizes.append(b)
      b *= 2
    return sizes + [self.max_batch]

  def start(self):
    self._thread.start()

  def stop(self):
    self.queue.put(None)
    self._thread.join(timeout=30)

  def submit(self, inputs: dict, rng: np.ndarray) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    self.queue.put((inputs, rng, future, loop, time.perf_counter()))
    return future

  def _take_batch(self, first) -> list:
    batch = [first]
    deadline = time.perf_counter() + self.batch_wait
    while len(batch) < self.max_batch:
      try:
        item = self.queue.get(timeout=max(0.0, deadline - time.perf_counter())) if self.batch_wait \
            else self.queue.get_nowait()
      except queue.Empty:
        break
      if item is None:  # Stop after this batch.
        self.queue.put(None)
        break
      batch.append(item)
    return batch

  def _loop(self):
    while True:
      first = self.queue.get()
      if first is None:
        return
      batch = self._take_batch(first)
      start = time.perf_counter()
      n = len(batch)
      size = next(b for b in self.buckets() if b >= n)
      rows = list(range(n)) + [0] * (size - n)  # Pad with copies of the first request.
      try:
        inputs = {k: np.stack([batch[i][0][k] for i in rows]) for k in batch[0][0]}
        actions, rng = self.artifact.run(inputs, np.stack([batch[i][1] for i in rows]))
        error = None
      except Exception as e:  # noqa: BLE001 (reported to every waiting request)
        error = e
      infer_ms = 1e3 * (time.perf_counter() - start)
      self.calls += 1
      for i, (_, _, future, loop, queued) in enumerate(batch):
        result = error if error is not None else (actions[i], rng[i], dict(
            queue=1e3 * (start - queued), infer=infer_ms, batch=n))
        loop.call_soon_threadsafe(_resolve, future, result)


def _resolve(future: asyncio.Future, result):
  if future.done():  # The client went away.
    return
  if isinstance(result, Exception):
    future.set_exception(result)
  else:
    future.set_result(result)


class PolicyServer:
  """Serves one artifact to many sessions (see the module docstring for the protocol)."""

  def __init__(self, artifact: loader.Artifact, *, max_batch: int = 1, batch_wait_ms: float = 0.0,
               max_message_bytes: Optional[int] = None, max_sessions: int = 64, seed: int = 0,
               log: Callable[[str], None] = print):
    self.artifact = artifact
    self.max_message_bytes = int(max_message_bytes or default_max_message_bytes(artifact.manifest))
    self.max_sessions = max_sessions
    self.seed = seed
    self.log = log
    self.worker = _InferenceThread(artifact, max_batch, batch_wait_ms)
    self.sessions = 0
    self.total_sessions = 0
    self.requests = 0
    self.errors = 0
    self.started = time.time()
    self._hello_manifest = artifact.manifest

  # --- HTTP: health --------------------------------------------------------

  def health(self) -> dict:
    return dict(status="ok", protocol=PROTOCOL, policy=str(self.artifact.directory),
                backend=self.artifact.backend, sessions=self.sessions, total_sessions=self.total_sessions,
                requests=self.requests, errors=self.errors, inference_calls=self.worker.calls,
                max_batch=self.worker.max_batch, max_message_bytes=self.max_message_bytes,
                rss_mb=round(_rss_mb(), 1), uptime_s=round(time.time() - self.started, 1),
                model_code_loaded="wam_jax.models" in sys.modules)

  def _process_request(self, connection, request):
    path = request.path.split("?", 1)[0]
    if path == "/healthz":
      response = connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
      response.headers["Content-Type"] = "application/json"
      return response
    if path != "/":
      return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path[:100]!r}: the policy "
                                "websocket is at /, health at /healthz\n")
    if self.sessions >= self.max_sessions:
      return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                f"server busy: {self.sessions} sessions (max {self.max_sessions})\n")
    return None

  # --- Websocket sessions ----------------------------------------------------

  async def _session(self, ws):
    self.sessions += 1
    self.total_sessions += 1
    session_id = self.total_sessions
    policy = loader.ExportedPolicy(self.artifact, seed=self.seed)
    try:
      await ws.send(wire.pack(dict(type="hello", protocol=PROTOCOL, session=session_id,
                                   manifest=self._hello_manifest)))
      async for message in ws:
        received = time.perf_counter()
        reply = await self._reply(policy, message, received)
        await ws.send(wire.pack(reply))
    finally:
      self.sessions -= 1

  async def _reply(self, policy: loader.ExportedPolicy, message, received: float) -> dict:
    self.requests += 1
    request_id = None
    try:
      if isinstance(message, str):
        raise RequestError("expected a binary msgpack message, got a text frame")
      if len(message) > self.max_message_bytes:
        raise RequestError(f"message of {len(message)} bytes; the limit is {self.max_message_bytes}")
      request = wire.unpack(message)
      decoded = time.perf_counter()
      if not isinstance(request, dict):
        raise RequestError(f"a request must be a map, got {type(request).__name__}")
      request_id = request.get("id")
      if not (request_id is None or isinstance(request_id, (int, str))) or \
          (isinstance(request_id, str) and len(request_id) > 100):
        request_id = None
        raise RequestError("'id' must be an int or a string of at most 100 characters", "id")
      kind = request.get("type")
      if kind not in _REQUEST_FIELDS:
        raise RequestError(f"'type' must be one of {sorted(_REQUEST_FIELDS)}, got {_short(kind)}", "type")
      unknown = set(request) - _REQUEST_FIELDS[kind]
      if unknown:
        raise RequestError(f"unknown fields {sorted(map(str, unknown))[:5]} in a {kind!r} request; known: "
                           f"{sorted(_REQUEST_FIELDS[kind])}", sorted(map(str, unknown))[0])
      timing = dict(decode=1e3 * (decoded - received))
      if kind == "reset":
        policy.reset()
        reply = dict(type="ok")
      elif kind == "observe":
        policy.record(_check(policy, request, "obs"))
        reply = dict(type="ok")
      else:
        reply = await self._infer(policy, request, timing)
      timing["prepare"] = timing.get("prepare", 1e3 * (time.perf_counter() - decoded))
      timing["server"] = 1e3 * (time.perf_counter() - received)
      reply["timing"] = timing
    except (RequestError, schema.ObservationError, wire.WireError) as e:
      self.errors += 1
      reply = dict(type="error", error=str(e)[:2000], field=getattr(e, "field", None))
    except Exception as e:  # noqa: BLE001 (a server bug must not end the session)
      self.errors += 1
      self.log(f"[serve] internal error: {type(e).__name__}: {e}")
      reply = dict(type="error", error=f"internal error: {type(e).__name__}: {str(e)[:500]}", field=None)
    if request_id is not None:
      reply["id"] = request_id
    return reply

  async def _infer(self, policy: loader.ExportedPolicy, request: dict, timing: dict) -> dict:
    start = time.perf_counter()
    if "instruction" not in request:
      raise RequestError("missing 'instruction' (a non-empty string)", "instruction")
    instruction = schema.check_instruction(request["instruction"])
    reset = request.get("reset", False)
    if not isinstance(reset, bool):
      raise RequestError(f"'reset' must be a bool, got {_short(reset)}", "reset")
    observed = request.get("observed", [])
    if not isinstance(observed, list) or len(observed) > MAX_OBSERVED:
      raise RequestError(f"'observed' must be a list of at most {MAX_OBSERVED} observations, got "
                         f"{_short(observed)}", "observed")
    steps = [_check(policy, {"obs": o}, f"observed[{i}]") for i, o in enumerate(observed)]
    step = _check(policy, request, "obs")
    # Checked whole: now apply.
    if reset:
      policy.reset()
    for s in steps + [step]:
      policy.record(s)
    inputs = policy.inputs(instruction)
    timing["prepare"] = 1e3 * (time.perf_counter() - start)
    actions, rng, run = await self.worker.submit(inputs, policy.rng)
    policy.rng = rng
    timing.update(run)
    return dict(type="actions", actions=actions)

  # --- Running ---------------------------------------------------------------

  async def run(self, host: str = "127.0.0.1", port: int = 8000, *, ready: Optional[Callable] = None,
                stop: Optional[asyncio.Event] = None) -> None:
    """Serves until ``stop`` is set. ``ready(port)`` is called once listening."""
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # Bad handshakes are the clients' problem.
    self.worker.start()
    stop = stop or asyncio.Event()
    try:
      async with serve(self._session, host, port, process_request=self._process_request,
                       max_size=2 * self.max_message_bytes, compression=None, ping_interval=None) as srv:
        bound = srv.sockets[0].getsockname()[1]
        if ready:
          ready(bound)
        await stop.wait()
    finally:
      self.worker.stop()


def _check(policy: loader.ExportedPolicy, request: dict, field: str) -> schema.Step:
  if "obs" not in request:
    raise RequestError(f"missing '{field}' (an observation map)", field)
  try:
    return policy.check(request["obs"])
  except schema.ObservationError as e:
    name = e.field if field == "obs" else f"{field}.{e.field}"
    raise schema.ObservationError(name, str(e).split(": ", 1)[1]) from None


def _short(x) -> str:
  text = repr(x)
  return f"{type(x).__name__} {text[:40] + '...' if len(text) > 40 else text}"
