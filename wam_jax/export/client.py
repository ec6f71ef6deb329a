"""A policy served by ``scripts/serve.py``, as a local policy: ``RemotePolicy(address)``.

The evaluator's interface (``reset``, ``__call__(obs, instruction) -> [K, A]``,
``observe``). ``reset`` and ``observe`` are sent along with the next query
(``"reset"`` and ``"observed"`` in the infer request), so each chunk costs one
round trip; the server applies them in order, so the session's history is
exactly a local policy's. Errors come back as ``RemotePolicyError`` with the
server's message (it names the field).

  policy = RemotePolicy("ws://127.0.0.1:8000")
  chunk_KA = policy(obs, instruction)   # policy.last_timing: server-side ms
"""

import json
import pathlib
import urllib.parse
import urllib.request
from typing import Optional

import numpy as np
from websockets.sync.client import connect

from wam_jax.export import wire


class RemotePolicyError(ValueError):
  """The server refused a request; ``field`` names what was wrong when known."""

  def __init__(self, message: str, field: Optional[str] = None):
    super().__init__(message)
    self.field = field


def _ws_url(address: str) -> str:
  if "://" not in address:
    address = "ws://" + address
  return address


def http_url(address: str, path: str) -> str:
  parts = urllib.parse.urlsplit(_ws_url(address))
  scheme = "https" if parts.scheme == "wss" else "http"
  return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def health(address: str, timeout: float = 5.0) -> dict:
  """The server's ``/healthz`` JSON (raises OSError if it does not answer)."""
  with urllib.request.urlopen(http_url(address, "/healthz"), timeout=timeout) as r:
    return json.loads(r.read())


def manifest_of(source: str) -> dict:
  """The manifest of an exported policy directory, or of the policy a server at ``source`` serves."""
  path = pathlib.Path(source) / "manifest.json"
  if path.exists():
    return json.loads(path.read_text())
  with RemotePolicy(source) as remote:
    return remote.manifest


class RemotePolicy:
  """One session on a policy server."""

  def __init__(self, address: str = "ws://127.0.0.1:8000", timeout: float = 60.0,
               open_timeout: float = 10.0):
    self.address = _ws_url(address)
    self.timeout = timeout
    self._ws = connect(self.address, open_timeout=open_timeout, max_size=None, compression=None)
    hello = wire.unpack(self._ws.recv(timeout=timeout))
    if not isinstance(hello, dict) or hello.get("type") != "hello":
      raise RemotePolicyError(f"{self.address} did not greet as a policy server: {str(hello)[:200]}")
    self.manifest = hello["manifest"]
    self.session = hello["session"]
    self.history = int(self.manifest["preprocessing"]["history"])
    self._reset_pending = False
    self._observed = []
    self.last_timing = {}

  def reset(self) -> None:
    self._reset_pending = True
    self._observed = []

  def observe(self, obs: dict) -> None:
    self._observed.append(obs)
    del self._observed[:-self.history]  # Only the newest ``history`` can still matter.

  def __call__(self, obs: dict, instruction: str):
    request = dict(type="infer", obs=obs, instruction=instruction)
    if self._reset_pending:
      request["reset"] = True
    if self._observed:
      request["observed"] = self._observed
    reply = self.request(request)
    self._reset_pending, self._observed = False, []  # Applied (a refused request changes nothing).
    return np.array(reply["actions"])  # Writable, like a local policy's chunk.

  def request(self, request: dict) -> dict:
    """Sends one request, returns its reply; raises RemotePolicyError for an error reply."""
    self._ws.send(wire.pack(request))
    reply = wire.unpack(self._ws.recv(timeout=self.timeout))
    if reply.get("type") == "error":
      raise RemotePolicyError(f"policy server: {reply.get('error')}", reply.get("field"))
    self.last_timing = reply.get("timing", {})
    return reply

  def close(self) -> None:
    self._ws.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
