"""World-model throughput: video WAM and joint WAM train steps beside the VLA, chunk latency per inference path.

  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_video_wam.py --steps=10 --rounds=3

* Train: the trainer's own compiled step (``trainer.setup_training``) of each preset
  on a synthetic batch (wam_jax/data/fake_batch.py), ms/step, examples/s, FLOPs/step from
  ``cost_analysis`` and MFU against the cached fp32 matmul peak (the trainer's
  definition). Cases run in ``--rounds`` interleaved rounds; the best round's
  median is kept (the machine is shared: read ratios).
* PyTorch (``--torch``, default on when torch imports): the replica of
  ``video_wam.py:pretrain_tiny`` in scripts/torch_video_wam.py (same parameters,
  loss and optimizer), eager fp32, timed in the same interleaved rounds as the
  JAX step of that preset; the JAX/PyTorch ms ratio is printed (below 1: JAX
  is faster). Threads and denormal flushing as scripts/bench_train.py.
* Inference: jitted ``registry.predict_actions`` at batch 1 with numpy in/out (as
  ``CheckpointPolicy``), median / p95 over ``--infer_calls``: the VLA tiny,
  video_wam ``skip_video=True`` (one pass), ``skip_video=False`` with the
  regression predictor (one pass, queries see the future), and with the flow
  predictor at each of ``--sampling_steps`` (S generation passes + one readout);
  joint_wam ``tiny`` (joint readout) and ``uwm_tiny`` (decoupled flow) with
  ``skip_video`` True (frame queries left out / fully noised) and False.
  All at the tiny presets' width (128) and random init (latency does not depend
  on training).
Prints one JSON line and a Markdown table.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wam_jax.training import profile  # noqa: E402  (stdlib only at import: no jax yet)

_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per case and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the best median is kept.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Train batch size.")
_CALLS = flags.DEFINE_integer("infer_calls", 100, "Timed batch-1 predict_actions calls per case (0: skip).")
_SAMPLING = flags.DEFINE_list("sampling_steps", ["1", "2", "4"], "Flow predictor generation steps to time.")
_TORCH = flags.DEFINE_boolean("torch", True, "Also time the PyTorch replica of video_wam.py:pretrain_tiny "
                               "(scripts/torch_video_wam.py; needs the torch extra, skipped with a note without it).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads; 0: the number of cores.")
_TORCH_FTZ = flags.DEFINE_boolean("torch_flush_denormal", True,
                                  "Flush denormals to zero in PyTorch, as XLA:CPU does.")
_TRAIN = flags.DEFINE_list("train_cases", ["vla_baseline.py:tiny", "video_wam.py:pretrain_tiny",
                                           "video_wam.py:policy_tiny", "joint_wam.py:tiny"],
                            "Presets whose train step is timed.")
_FAMILIES = flags.DEFINE_list("families", ["video_wam", "joint_wam"], "World-model families whose batch-1 "
                              "latency is timed beside the VLA's (with and without decoding frames).")


def num_datasets(config) -> int:
  return len(config.data.mixture)


class TrainCase:
  def __init__(self, spec):
    self.name = spec
    self._step = profile.compile_step(profile.preset_config(spec), _BATCH.value)
    self.flops = self._step.flops
    self._step.run(2)

  def once(self):
    self._step.run(1)

  def time_round(self) -> float:
    times = []
    for _ in range(_STEPS.value):
      start = time.perf_counter()
      self.once()
      times.append(time.perf_counter() - start)
    return statistics.median(times)


class TorchTrainCase(TrainCase):
  """The PyTorch replica's eager fp32 step (forward, backward, clipping, AdamW) on the JAX case's batch."""

  def __init__(self, jax_case):
    import jax
    import torch
    import torch_video_wam
    import torch_vla
    from wam_jax.data.fake_batch import make_batch
    config = profile.preset_config(torch_video_wam.PRESET)
    torch.manual_seed(0)
    self.name, self.jax_name = f"torch eager fp32 ({jax_case.name})", jax_case.name
    self.model = torch_video_wam.TorchVideoWAM(config, num_datasets(config))
    self.params = torch_vla.num_params(self.model)
    jax_params = sum(x.size for x in jax.tree.leaves(jax_case._step.state.params))
    if self.params != jax_params:
      raise SystemExit(f"parameter counts differ: jax {jax_params:,} torch {self.params:,}")
    self.batch = torch_vla.to_torch(make_batch(config, _BATCH.value, num_datasets=num_datasets(config)))
    self.matmul_flops = torch_vla.train_step_flops(
        torch_video_wam.TorchVideoWAM(config, num_datasets(config), sdpa=False), self.batch)
    self.flops = jax_case.flops  # MFU on the JAX count of the same model, as bench_train.py
    self.threads = torch.get_num_threads()
    self._torch_step = torch_vla.make_train_step(self.model, torch_vla.make_optimizer(self.model, config.train),
                                                 config.train.grad_clip_norm)
    for _ in range(2):
      self.once()

  def once(self):
    self._torch_step(self.batch).item()


def torch_cases(cases) -> list:
  """[TorchTrainCase] beside the JAX case of its preset, or [] with a printed reason."""
  if not _TORCH.value:
    return []
  try:
    import torch
  except ImportError:
    print("torch not installed (pip install -e '.[torch]'): skipping the PyTorch replica")
    return []
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_video_wam
  jax_case = next((c for c in cases if c.name == torch_video_wam.PRESET), None)
  if jax_case is None:
    print(f"{torch_video_wam.PRESET} is not in --train_cases: skipping the PyTorch replica")
    return []
  torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
  torch.set_flush_denormal(_TORCH_FTZ.value)
  case = TorchTrainCase(jax_case)
  print(f"torch {torch.__version__}, {case.threads} threads: {case.params:,} params (= jax), "
        f"{case.matmul_flops / 1e9:.2f} matmul GFLOPs/step (FlopCounterMode) vs jax "
        f"{jax_case.flops / 1e9:.2f} (cost_analysis)", flush=True)
  return [case]

def latency(spec, calls, **model_overrides):
  """Median and p95 ms of a batch-1 chunk (numpy in, numpy out)."""
  import jax
  import numpy as np
  from wam_jax.data.fake_batch import make_batch
  from wam_jax.models import registry
  from wam_jax.training import sharding, trainer
  config = profile.preset_config(spec)
  for key, value in model_overrides.items():  # dotted paths under config.model
    *path, field = key.split(".")
    node = config.model
    for part in path:
      node = node[part]
    node[field] = value
  run = trainer.setup_training(config, sharding.make_mesh((1, 1, 1), jax.devices()[:1]),
                               trainer.abstract_batch(config.data, 1), num_datasets=num_datasets(config))
  params = run.init_state(jax.random.key(0)).params
  predict = jax.jit(lambda p, b, r: registry.predict_actions(run.model, p, b, r))
  batch = {k: v[:1] for k, v in make_batch(config, 2).items()
           if not k.startswith("future") and k not in ("actions", "action_mask", "step")}
  rng = jax.random.key(1)
  for _ in range(5):
    np.asarray(predict(params, batch, rng))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    np.asarray(predict(params, batch, rng))
    times.append(1e3 * (time.perf_counter() - start))
  times.sort()
  return statistics.median(times), times[min(len(times) - 1, int(0.95 * (len(times) - 1)))]


def inference_latencies(calls: int) -> dict:
  """Batch-1 latency (median, p95 ms) of each family's policy call, beside the VLA's ({} if calls == 0)."""
  if not calls:
    return {}
  infer = {"vla tiny": latency("vla_baseline.py:tiny", calls)}
  if "video_wam" in _FAMILIES.value:
    infer.update({"video_wam skip_video": latency("video_wam.py:policy_tiny", calls),
                  "video_wam generate (regression)": latency("video_wam.py:policy_tiny", calls,
                                                             **{"policy.skip_video": False})})
    for s in _SAMPLING.value:
      infer[f"video_wam generate (flow, {s} steps)"] = latency(
          "video_wam.py:policy_tiny", calls, **{"policy.skip_video": False, "video.objective": "flow",
                                                "video.num_sampling_steps": int(s)})
  if "joint_wam" in _FAMILIES.value:  # one pass for both outputs: frame queries left out, or decoded too
    for preset in ("tiny", "uwm_tiny"):
      for skip in (True, False):
        infer[f"joint_wam {preset} {'skip_video' if skip else 'generate'}"] = latency(
            f"joint_wam.py:{preset}", calls, skip_video=skip)
  return infer


def main(argv):
  del argv
  from wam_jax.training import peak
  result = {"argv": sys.argv[1:], "load_start": [round(x, 2) for x in os.getloadavg()]}
  peak_flops = 1e9 * peak.matmul_peak_gflops("float32")
  cases = [TrainCase(spec) for spec in _TRAIN.value]
  cases += torch_cases(cases)  # timed in the same rounds
  best = {c.name: float("inf") for c in cases}
  for _ in range(_ROUNDS.value):
    for c in cases:
      best[c.name] = min(best[c.name], c.time_round())
  result["train"] = {c.name: {"ms_per_step": round(1e3 * best[c.name], 1),
                              "examples_per_s": round(_BATCH.value / best[c.name], 1),
                              "gflops_per_step": round(c.flops / 1e9, 2),
                              "mfu": round(c.flops / best[c.name] / peak_flops, 4)} for c in cases}
  for c in cases:
    if isinstance(c, TorchTrainCase):
      result["torch"] = {"case": c.name, "threads": c.threads, "params": c.params,
                         "matmul_gflops_per_step": round(c.matmul_flops / 1e9, 2),
                         "jax_over_torch_ms": round(best[c.jax_name] / best[c.name], 3)}
  infer = inference_latencies(_CALLS.value)
  result["inference_ms"] = {k: {"median": round(m, 2), "p95": round(p, 2)} for k, (m, p) in infer.items()}
  result["load_end"] = [round(x, 2) for x in os.getloadavg()]
  result["peak_gflops_fp32_cached"] = round(peak_flops / 1e9, 1)
  print(json.dumps(result))
  print("\n| train case (batch %d) | ms/step | ex/s | GFLOP/step | MFU |\n|---|---|---|---|---|" % _BATCH.value)
  for name, r in result["train"].items():
    print(f"| {name} | {r['ms_per_step']} | {r['examples_per_s']} | {r['gflops_per_step']} | {100 * r['mfu']:.1f}% |")
  if "torch" in result:
    r = result["torch"]["jax_over_torch_ms"]
    print(f"\nJAX / PyTorch ms per step, {result['torch']['case']}: {r:.2f} "
          f"(PyTorch / JAX {1 / r:.2f}: JAX {'faster' if r < 1 else 'slower'})")
  if not result["inference_ms"]:
    return
  vla = result["inference_ms"]["vla tiny"]["median"]
  print("\n| inference, batch 1 | median ms | p95 ms | / VLA |\n|---|---|---|---|")
  for name, r in result["inference_ms"].items():
    print(f"| {name} | {r['median']} | {r['p95']} | {r['median'] / vla:.2f}x |")


if __name__ == "__main__":
  app.run(main)
