"""Evaluation outputs: results.json, results.md, rollout GIFs, a contact sheet."""

import json
import math
import pathlib

import imageio
import numpy as np
import PIL.Image


def write_results(out_dir, results: dict) -> None:
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
  (out_dir / "results.md").write_text(markdown_table(results))


def _jsonable(x):
  if isinstance(x, (np.integer, np.floating, np.bool_)):
    return x.item()
  raise TypeError(f"not JSON serializable: {type(x)}")


def markdown_table(results: dict) -> str:
  def pct(x):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"
  lines = [f"# Closed-loop evaluation: {results['policy']}", "",
           "| task | success | 95% CI | episodes | mean length | mean length (successes) |",
           "|---|---|---|---|---|---|"]
  for task, r in results["tasks"].items():
    lo, hi = r["ci95"]
    lines.append(f"| {task} | {pct(r['success_rate'])} | {pct(lo)}-{pct(hi)} | {r['episodes']} | "
                 f"{r['mean_length']:.1f} | {_num(r['mean_success_length'])} |")
  m = results["mean"]
  lo, hi = m["ci95"]
  lines.append(f"| **mean** | **{pct(m['success_rate'])}** | {pct(lo)}-{pct(hi)} | {m['episodes']} | "
               f"{m['mean_length']:.1f} | |")
  lat = results["latency"]
  s = results["settings"]
  lines += ["", f"Policy latency per call: mean {lat['mean_ms']:.2f} ms, p50 {lat['p50_ms']:.2f} ms, "
            f"p95 {lat['p95_ms']:.2f} ms over {lat['calls']} calls"
            + "".join(f"; {part} p50 {v['p50_ms']:.2f} ms" for part, v in results.get("latency_parts", {}).items())
            + ".",
            f"Wall time {results['seconds']:.1f} s ({results['episodes_per_minute']:.1f} episodes/min, "
            f"{s['num_workers']} worker(s)). Seeds from {s['seed_offset']}, max {s['max_steps']} steps, "
            f"execute {s['execute_steps']} per chunk, temporal ensemble {s['temporal_ensemble']}, "
            f"{s['resolution']}px {s['camera']}"
            + (", **unseen paraphrased instructions**" if s.get("instructions") == "paraphrase" else "") + ".", ""]
  if "consistency" in results:
    c = results["consistency"]
    lines += ["## Rollout consistency: the predicted t+k frame of each chunk vs the simulator's frame at t+k", "",
              "(copy = the frame at the query, t, taken as the prediction for t+k)", "",
              "| task | PSNR (dB) | copy PSNR (dB) | MSE | copy MSE | frames |", "|---|---|---|---|---|---|"]
    row = lambda name, r: (f"| {name} | {r['psnr_db']:.2f} | {r['copy_psnr_db']:.2f} | {r['mse']:.4f} | "
                           f"{r['copy_mse']:.4f} | {r['frames']} |")
    lines += [row(task, r) for task, r in list(c["tasks"].items()) + [("**mean**", c["mean"])]]
    lines += ["", "| episode steps | PSNR (dB) | copy PSNR (dB) | MSE | copy MSE | frames |", "|---|---|---|---|---|---|"]
    lines += [row(steps, r) for steps, r in c["along_episode"].items()]
    lines.append("")
  return "\n".join(lines)


def _num(x) -> str:
  return "-" if math.isnan(x) else f"{x:.1f}"


def save_gif(path, frames_THWC, scale: int = 2) -> None:
  frames = [np.repeat(np.repeat(f, scale, 0), scale, 1) for f in frames_THWC]
  imageio.mimsave(str(path), frames, duration=40, loop=0)


def contact_sheet(path, episodes, columns: int = 8, scale: int = 2) -> None:
  """One row per episode: ``columns`` evenly spaced frames, first to last."""
  rows = []
  for ep in episodes:
    frames = ep["frames"]
    idx = np.linspace(0, len(frames) - 1, columns).round().astype(int)
    row = np.concatenate([frames[i] for i in idx], axis=1)
    border = np.full((2, row.shape[1], 3), (0, 200, 0) if ep["success"] else (200, 0, 0), np.uint8)
    rows += [row, border]
  sheet = np.concatenate(rows, axis=0)
  PIL.Image.fromarray(np.repeat(np.repeat(sheet, scale, 0), scale, 1)).save(str(path))
