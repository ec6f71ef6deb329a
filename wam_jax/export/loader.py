"""An exported policy artifact as a policy: ``load(directory)``.

  policy = wam_jax.export.load("exports/tiny")     # StableHLO; no model code imported
  policy.reset()
  chunk_KA = policy(obs, "open the drawer")         # float32 [K, A], env units
  policy.observe(obs)                                # a step executed from a chunk

The evaluator's policy interface (``wam_jax.evaluation.policy``). By default the
function runs from ``policy.stablehlo`` (``jax.export``), and this module
imports neither model code nor Orbax: only jax, numpy, PIL and the data path's
tokenizer/resize. ``backend="module"`` rebuilds the same function from
``params/`` + ``config.json`` through ``wam_jax.models`` instead.

``Artifact`` is the shared, read-only part (manifest, schema, compiled
function); ``ExportedPolicy`` is one session on it (history and key stream), so a
server holds one artifact and a policy per client. Like
``inference.CheckpointPolicy``, ``reset()`` clears the history and keeps the key
stream, so both give the same chunks call for call.
"""

import collections
import json
import pathlib
from typing import Sequence

import jax
import numpy as np

from wam_jax.data import tokenizer as tokenizer_lib
from wam_jax.export import schema

BACKENDS = ("stablehlo", "module")


class Artifact:
  """A loaded artifact: manifest, observation schema, tokenizer and the compiled function.

  ``run`` is not re-entrant: call it from one thread at a time (the server has one
  inference thread).
  """

  def __init__(self, directory, backend: str = "stablehlo"):
    self.directory = pathlib.Path(directory)
    if backend not in BACKENDS:
      raise ValueError(f"backend={backend!r}; known: {BACKENDS}")
    path = self.directory / "manifest.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: {self.directory} is not an exported policy "
                              "(scripts/export.py writes one)")
    self.manifest = json.loads(path.read_text())
    fmt = (self.manifest.get("format"), self.manifest.get("format_version"))
    if fmt != (schema.FORMAT, schema.FORMAT_VERSION):
      raise ValueError(f"{path}: format {fmt}, this loader reads {(schema.FORMAT, schema.FORMAT_VERSION)}")
    self.backend = backend
    self.spec = schema.ObservationSpec.from_manifest(self.manifest)
    self.history = self.spec.history
    self.tokenizer = tokenizer_lib.from_dict(self.manifest["preprocessing"]["tokenizer"])
    if backend == "stablehlo":
      self._fn = jax.jit(self._deserialize().call)
    else:
      from wam_jax.export import policy_fn  # pylint: disable=g-import-not-at-top  (model code)
      self._fn = policy_fn.module_function(self.directory, self.manifest)

  def _deserialize(self):
    fn = self.manifest["function"]
    exported = jax.export.deserialize(bytearray((self.directory / fn["file"]).read_bytes()))
    platform = jax.default_backend()
    if platform not in exported.platforms:
      raise ValueError(f"{self.directory / fn['file']} was exported for {list(exported.platforms)}, "
                       f"not for this backend {platform!r}: re-export with --platforms={platform}")
    return exported

  def new_rng(self, seed: int) -> np.ndarray:
    """uint32 [2]: the key data a session starts from (that of ``jax.random.key(seed)``)."""
    return np.asarray(jax.random.key_data(jax.random.key(seed, impl="threefry2x32")), np.uint32)

  def run(self, inputs: dict, rng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched function inputs ([B, ...], ``schema.function_inputs`` stacked) and key data
    uint32 [B, 2] -> (actions float32 [B, K, A], next key data uint32 [B, 2])."""
    out = self._fn(inputs, rng)
    return np.asarray(out["actions"]), np.asarray(out["rng"])

  def example_inputs(self, batch: int = 1) -> tuple[dict, np.ndarray]:
    """Zeros of the function's input shapes (for warm-up)."""
    sig = self.manifest["function"]["inputs"]
    inputs = {k: np.zeros([batch] + v["shape"][1:], v["dtype"]) for k, v in sig.items()}
    return inputs, np.zeros((batch, 2), np.uint32)

  def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
    """Compiles the function for these batch sizes now rather than at the first call."""
    for b in batch_sizes:
      self.run(*self.example_inputs(b))


class ExportedPolicy:
  """One session on an ``Artifact``: the last ``history`` observations and a key stream."""

  def __init__(self, artifact: Artifact, seed: int = 0):
    self.artifact = artifact
    self._history = collections.deque(maxlen=artifact.history)
    self.rng = artifact.new_rng(seed)

  @property
  def manifest(self) -> dict:
    return self.artifact.manifest

  def reset(self) -> None:
    self._history.clear()

  def observe(self, obs: dict) -> None:
    """Records a step the policy was not queried on (history = consecutive frames)."""
    self.record(self.check(obs))

  def check(self, obs: dict) -> schema.Step:
    """``obs`` checked against the schema and resized (``ObservationError`` naming the field)."""
    return schema.check_observation(obs, self.artifact.spec)

  def record(self, step: schema.Step) -> None:
    self._history.append(step)

  def inputs(self, instruction: str) -> dict:
    """The function's unbatched inputs for the current history."""
    return schema.function_inputs(self._history, instruction, self.artifact.spec, self.artifact.tokenizer)

  def prepare(self, obs: dict, instruction: str) -> dict:
    """Checks ``obs`` and ``instruction`` (nothing is recorded if either is bad), records
    ``obs`` and returns the function's unbatched inputs."""
    instruction = schema.check_instruction(instruction)
    self.record(self.check(obs))
    return self.inputs(instruction)

  def __call__(self, obs: dict, instruction: str) -> np.ndarray:
    inputs = self.prepare(obs, instruction)
    actions, rng = self.artifact.run({k: v[None] for k, v in inputs.items()}, self.rng[None])
    self.rng = rng[0]
    return actions[0]


def load(directory, backend: str = "stablehlo", seed: int = 0) -> ExportedPolicy:
  """The artifact in ``directory`` as a policy (one session; ``ExportedPolicy(artifact)`` makes
  more sessions on one loaded ``Artifact``)."""
  return ExportedPolicy(Artifact(directory, backend), seed=seed)
