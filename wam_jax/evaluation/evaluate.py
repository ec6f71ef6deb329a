"""Closed-loop MetaWorld evaluation of any policy (see policy.py for the interface).

``evaluate`` runs ``episodes_per_task`` seeded episodes per task (seeds
``seed_offset + i``, disjoint from the dataset generation seeds) in 'spawn'
worker processes, each building its policy once from ``policy_factory``, and
reports per-task and mean success with 95% Wilson intervals, episode lengths and
policy latency, as ``results.json`` + ``results.md`` in ``out_dir`` with a few
rollout GIFs and ``contact_sheet.png``.
"""

import functools
import pathlib
import time
from typing import Callable, Optional, Sequence

import numpy as np

from wam_jax.evaluation import metrics
from wam_jax.evaluation import report
from wam_jax.evaluation import rollout
from wam_jax.sim import metaworld as mw
from wam_jax.sim import workers

_WORKER_POLICY = None


def _init_worker(policy_factory):
  global _WORKER_POLICY
  _WORKER_POLICY = policy_factory()


def _episode_job(task, seed, keep_frames, resolution, camera, rollout_kwargs):
  env = mw.cached_env(task, resolution, camera)
  return rollout.run_episode(env, _WORKER_POLICY, task, seed, keep_frames=keep_frames,
                             **rollout_kwargs)


def evaluate(policy_factory: Callable[[], object], tasks, episodes_per_task: int, *,
             seed_offset: int = 100_000, max_steps: int = 200, execute_steps: int = 4,
             temporal_ensemble: bool = False, ensemble_decay: float = 0.01, num_workers: int = 1,
             out_dir=None, num_videos: int = 2, resolution: int = 64,
             camera: str = mw.DEFAULT_CAMERA, policy_name: Optional[str] = None,
             consistency: bool = True, instructions: str = "train",
             log: Callable[[str], None] = print) -> dict:
  """Evaluates a policy closed-loop; returns the results dict (also written to out_dir).

  Args:
    policy_factory: picklable zero-arg callable returning a policy; called once
      per worker process (once in-process when num_workers <= 1).
    tasks: MetaWorld v3 task names ("a,b" or a sequence).
    episodes_per_task: seeded episodes per task (seeds seed_offset + i).
    max_steps: episode limit; an episode ends at the first success.
    execute_steps: actions executed per predicted chunk (no ensembling).
    temporal_ensemble: query every step, average overlapping predictions (ACT).
    num_videos: episodes per task saved as GIF and in the contact sheet.
    consistency: for a policy that predicts frames (``predicted_frame``), compare the
      frame predicted for t+k at each query with the simulator's frame at t+k
      (``rollout.prediction_errors``): PSNR/MSE per task and along the episode.
    instructions: "train" or "paraphrase": unseen rewordings of the MT10 instructions
      (``metaworld.PARAPHRASES``; shared/PROTOCOL.md claim 4).
  """
  tasks = mw.parse_tasks(tasks)
  mw.check_instructions(tasks, instructions)  # an unknown set or a task without paraphrases
  if max_steps > mw.MAX_ENV_STEPS:
    raise ValueError(f"max_steps {max_steps} > MetaWorld's limit {mw.MAX_ENV_STEPS}")
  rollout_kwargs = dict(max_steps=max_steps, execute_steps=execute_steps,
                        temporal_ensemble=temporal_ensemble, ensemble_decay=ensemble_decay,
                        consistency=consistency, instructions=instructions)
  name = policy_name or _describe(policy_factory)
  log(f"[eval] {name}: {len(tasks)} tasks x {episodes_per_task} episodes, {num_workers} worker(s)")
  start = last_log = time.time()
  episodes = []
  jobs = [(task, seed_offset + i, i < num_videos, resolution, camera, rollout_kwargs)
          for task in tasks for i in range(episodes_per_task)]
  with workers.executor(num_workers, _init_worker, (policy_factory,)) as pool, \
       workers.cancel_on_error(pool):
    for episode in workers.completed(pool, _episode_job, jobs):
      episodes.append(episode)
      if time.time() - last_log > 5 or len(episodes) == len(jobs):
        last_log = time.time()
        wins = sum(e["success"] for e in episodes)
        log(f"[eval] {len(episodes)}/{len(jobs)} episodes, {wins} successes, "
            f"{last_log - start:.0f} s")
  seconds = time.time() - start
  episodes.sort(key=lambda e: (tasks.index(e["task"]), e["seed"]))
  results = _summarize(episodes, tasks, name, seconds, dict(
      seed_offset=seed_offset, num_workers=num_workers, resolution=resolution, camera=camera,
      episodes_per_task=episodes_per_task, **rollout_kwargs))
  if out_dir is not None:
    _write_outputs(pathlib.Path(out_dir), results, episodes)
    log(f"[eval] wrote {out_dir}/results.json, results.md")
  log(report.markdown_table(results))
  return results


def _describe(factory) -> str:
  if isinstance(factory, functools.partial):
    args = [repr(a) for a in factory.args] + [f"{k}={v!r}" for k, v in factory.keywords.items()]
    return f"{_describe(factory.func)}({', '.join(args)})"
  return getattr(factory, "__qualname__", None) or repr(factory)


def _summarize(episodes, tasks, name, seconds, settings) -> dict:
  per_task = {t: metrics.task_summary([e for e in episodes if e["task"] == t]) for t in tasks}
  wins = sum(e["success"] for e in episodes)
  lo, hi = metrics.wilson_interval(wins, len(episodes))
  latencies = [x for e in episodes for x in e["latencies_ms"]]
  summary = {
      "policy": name,
      "tasks": per_task,
      "mean": {  # Mean over tasks; the interval pools every episode.
          "success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
          "ci95": [lo, hi], "episodes": len(episodes), "successes": int(wins),
          "mean_length": float(np.mean([e["length"] for e in episodes])),
      },
      "latency": metrics.latency_stats(latencies),
      "latency_parts": {  # a policy's own split of each call (plan_idm: frame generation, IDM)
          part: metrics.latency_stats([x for e in episodes for x in e.get("latency_parts_ms", {}).get(part, [])])
          for part in ((episodes[0].get("latency_parts_ms") or {}) if episodes else {})},
      "seconds": seconds,
      "episodes_per_minute": 60 * len(episodes) / max(seconds, 1e-9),
      "settings": settings,
      "episodes": [{k: e[k] for k in ("task", "seed", "instruction", "success", "length", "frozen_fraction")}
                   for e in episodes],
  }
  if any(e.get("consistency") for e in episodes):
    summary["consistency"] = consistency_summary(episodes, tasks)
  return summary


def consistency_summary(episodes, tasks, bin_steps: int = 40) -> dict:
  """Predicted-vs-real frame errors (``rollout.prediction_errors``) per task and along the
  episode (steps binned by ``bin_steps``, all tasks pooled), each with its count, beside the
  copy-the-last-frame guess; PSNR is the mean of per-frame PSNRs."""
  def stats(rows):
    rows = np.asarray(rows, np.float64).reshape(-1, 5)
    mean = lambda i: float(rows[:, i].mean()) if len(rows) else float("nan")
    return {"psnr_db": mean(1), "mse": mean(2), "copy_psnr_db": mean(3), "copy_mse": mean(4), "frames": len(rows)}
  rows = [r for e in episodes for r in e.get("consistency", [])]
  by_bin = {}
  for r in rows:
    by_bin.setdefault(int(r[0]) // bin_steps, []).append(r)
  return {
      "tasks": {t: stats([r for e in episodes if e["task"] == t for r in e.get("consistency", [])]) for t in tasks},
      "mean": stats(rows),
      "along_episode": {f"{b * bin_steps}-{(b + 1) * bin_steps - 1}": stats(by_bin[b]) for b in sorted(by_bin)},
  }


def _write_outputs(out_dir: pathlib.Path, results: dict, episodes: Sequence[dict]) -> None:
  report.write_results(out_dir, results)
  recorded = [e for e in episodes if e["frames"] is not None]
  if not recorded:
    return
  (out_dir / "videos").mkdir(exist_ok=True)
  for e in recorded:
    outcome = "success" if e["success"] else "fail"
    report.save_gif(out_dir / "videos" / f"{e['task']}_seed{e['seed']}_{outcome}.gif", e["frames"])
  report.contact_sheet(out_dir / "contact_sheet.png", recorded)


def render_settings(data_cfg) -> dict:
  """{"resolution", "camera"} to render MetaWorld at for a policy trained with ``data_cfg``.

  The recipe the training frames were rendered with (data.metaworld), never
  data.image_size: a policy resizes its frames to image_size with the data
  path's own resize (``windows.make_inference_inputs``), so a 64 px recipe
  trained at 128 must see 64 px renders upsampled, not native 128 px renders.
  """
  cfg = data_cfg.metaworld
  return dict(resolution=int(cfg.resolution), camera=cfg.get("camera", mw.DEFAULT_CAMERA))


def eval_kwargs_from_config(config) -> dict:
  """``evaluate`` keyword arguments from a run config's ``eval`` section."""
  ev = config.eval
  return dict(tasks=tuple(ev.tasks) or tuple(config.data.metaworld.tasks),
              episodes_per_task=ev.episodes_per_task, seed_offset=ev.seed_offset,
              max_steps=ev.max_steps, execute_steps=ev.execute_steps,
              temporal_ensemble=ev.temporal_ensemble, num_workers=ev.num_workers,
              num_videos=ev.num_videos, **render_settings(config.data))
