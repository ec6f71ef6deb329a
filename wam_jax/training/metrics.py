"""Metrics that explain themselves: JSONL + TensorBoard + a progress line, FLOPs and MFU.

MFU definition (stated, so numbers compare): model FLOPs of one train step from
the compiled step's ``cost_analysis()`` (XLA's count of the real program,
forward + backward + optimizer, summed over devices) divided by step time and
by the peak of the hardware the step ran on: on CPU the *measured* fp32 matmul
peak of this machine (all cores; ``wam_jax.training.peak``), on TPU/GPU the
chip's datasheet bf16 peak times the chip count.
"""

import json
import pathlib
import sys
import time
from typing import Mapping

import numpy as np


def compiled_flops(compiled, num_devices: int) -> float:
  """Total FLOPs of one call of a compiled SPMD function (XLA counts one device's program)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0)) * num_devices


def lowered_flops(lowered) -> float:
  """Total FLOPs of a lowered (not yet partitioned) function: XLA's count of the global program."""
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


class MetricsWriter:
  """Writes scalars to ``metrics.jsonl`` and TensorBoard event files, images to TensorBoard."""

  def __init__(self, workdir, enabled: bool = True):
    self.enabled = enabled
    self.workdir = pathlib.Path(workdir)
    self._jsonl = None
    self._tb = None
    if enabled:
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      except ImportError:  # TensorBoard is optional; JSONL is the record.
        self._tb = None

  def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = ""):
    if not self.enabled:
      return
    row = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)

  def images(self, step: int, images: Mapping[str, np.ndarray]):
    """uint8 [N, H, W, 3] per name."""
    if self.enabled and self._tb is not None:
      for name, img in images.items():
        self._tb.add_images(name, np.asarray(img), step, dataformats="NHWC")

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A one-line progress report: step, loss, steps/s, examples/s, MFU, ETA."""

  def __init__(self, total_steps: int, batch_size: int, flops_per_step: float, peak_flops: float,
               start_step: int = 0, stream=sys.stdout):
    self.total, self.batch_size = total_steps, batch_size
    self.flops, self.peak = flops_per_step, peak_flops
    self.stream = stream
    self._t, self._step = time.perf_counter(), start_step

  def update(self, step: int, metrics: Mapping[str, float]) -> dict:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    steps_per_s = (step - self._step) / dt
    self._t, self._step = now, step
    rates = {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * self.batch_size}
    if self.flops and self.peak:
      rates["mfu"] = self.flops * steps_per_s / self.peak
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    mfu = f" mfu {100 * rates['mfu']:.1f}%" if "mfu" in rates else ""
    print(f"step {step:>6d}/{self.total} | loss {metrics.get('loss', float('nan')):.4f} | "
          f"{steps_per_s:.2f} steps/s | {rates['examples_per_s']:.0f} ex/s |{mfu} | "
          f"ETA {_fmt_eta(eta)}", file=self.stream, flush=True)
    return rates


def _fmt_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{s:02d}"
