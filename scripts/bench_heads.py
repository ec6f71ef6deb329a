r"""Action heads on one preset: train-step time relative to L1, and chunk latency vs sampling steps.

  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_heads.py \
      --config=experiments/configs/vla_baseline.py:tiny --heads=l1,diffusion,flow,discrete,discrete_ar \
      --sampling_steps=1,5,10,50 --steps=10 --rounds=3 --infer_calls=100

* Train step: the trainer's own compiled step (``bench_train.JaxTrainCase``) with
  ``config.model.head.name`` switched, all heads interleaved in ``--rounds``
  rounds (``bench_train.time_rounds``), best round median; ratio to ``l1``.
* Latency: jitted ``registry.predict_actions`` at batch 1, numpy in and out
  (``bench_train.jax_inference``: the whole policy call, backbone included),
  median and p95 over ``--infer_calls``, once per --sampling_steps value for the
  heads with a sampling loop (``config.model.head.num_sampling_steps``).

The flags of bench_train.py (--config, --batch_size, --steps, --rounds,
--warmup, --infer_calls) apply; its other flags are ignored here.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import bench_train  # noqa: E402  (its flags and timing helpers)

# name -> (config.model.head.name, fields of config.model.head.<name>)
VARIANTS = {"discrete_ar": ("discrete", {"autoregressive": True})}

_HEADS = flags.DEFINE_list("heads", ["l1", "diffusion", "flow", "discrete", "discrete_ar"],
                           f"Heads (config.model.head.name) or variants {sorted(VARIANTS)}; l1 is the reference.")
_SAMPLING_STEPS = flags.DEFINE_list("sampling_steps", ["1", "5", "10", "50"],
                                    "Sampling steps timed at batch 1 (heads with a sampling loop).")
_DTYPE = flags.DEFINE_string("dtype", "", "config.train.compute_dtype ('' keeps the preset's).")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON result line to this file.")


def head_config(config, head: str, sampling_steps: int = 0):
  """A copy of ``config`` with the head (or variant) chosen and optionally its sampling steps."""
  from wam_jax.models import heads
  config = config.copy_and_resolve_references()
  name, fields = VARIANTS.get(head, (head, {}))
  config.model.head.name = name
  if fields:
    config.model.head[name].update(fields)
  if sampling_steps:
    config.model.head.num_sampling_steps = sampling_steps
  if _DTYPE.value:
    config.train.compute_dtype = _DTYPE.value
  heads.check_head_config(config.model.head)
  return config


def main(argv):
  del argv
  from wam_jax.data.fake_batch import make_batch
  from wam_jax.models import heads
  import jax

  base = bench_train._CONFIG.value
  names = _HEADS.value if "l1" in _HEADS.value else ["l1"] + _HEADS.value
  batch_np = make_batch(base, bench_train._BATCH.value, seed=0)
  devices = jax.devices()[:1]
  result = {"argv": sys.argv[1:], "load_start": bench_train.load_avg(), "jax": jax.__version__}

  cases = []
  for head in names:
    config = head_config(base, head)
    case = bench_train.JaxTrainCase(config, config.train.compute_dtype, batch_np, devices)
    case.label = head
    print(f"{head}: compiled in {case.compile_s:.1f}s, {case.flops / 1e9:.2f} GFLOPs/step, {case.params:,} params",
          flush=True)
    cases.append(case)
  medians, _ = bench_train.time_rounds(cases, bench_train._STEPS.value, bench_train._ROUNDS.value,
                                       bench_train._WARMUP.value)
  ref = min(medians["l1"])
  train = {c.label: {"ms": round(min(medians[c.label]), 1), "vs_l1": round(min(medians[c.label]) / ref, 3),
                     "gflops": round(c.flops / 1e9, 2), "params": c.params} for c in cases}
  del cases

  latency = {}
  for head in names:
    name = VARIANTS.get(head, (head,))[0]
    steps_list = [int(s) for s in _SAMPLING_STEPS.value] if heads.has_sampling_steps(name) else [0]
    for steps in steps_list:
      config = head_config(base, head, steps)
      times = bench_train.jax_inference(config, config.train.compute_dtype, batch_np, bench_train._INFER_CALLS.value)
      latency[f"{head}@{steps}" if steps else head] = {
          "median_ms": round(statistics.median(times), 2), "p95_ms": round(bench_train.percentile(times, 95), 2)}
      print(f"  latency {head} steps={steps or '-'}: median {statistics.median(times):.2f} ms", flush=True)

  result.update(train_step=train, latency=latency, load_end=bench_train.load_avg())
  print(f"\n| head | train step ms | vs l1 | GFLOPs/step | params | latency ms (batch 1), median [p95] by sampling steps |")
  print("|---|---|---|---|---|---|")
  for head in names:
    lat = ", ".join(f"{k.split('@')[1] if '@' in k else '-'}: {v['median_ms']} [{v['p95_ms']}]"
                    for k, v in latency.items() if k == head or k.startswith(head + "@"))
    t = train[head]
    print(f"| {head} | {t['ms']} | {t['vs_l1']:.2f}x | {t['gflops']} | {t['params']:,} | {lat} |")
  line = json.dumps(result)
  print(line)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
