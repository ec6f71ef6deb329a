"""The first steps of tiny presets' loss curves, this checkout against an earlier revision (issue 17 item 5).

  JAX_PLATFORMS=cpu .venv/bin/python scripts/compare_loss_curves.py --base=cf3e6b8~1 \
      --presets=vla_baseline.py:tiny,video_wam.py:pretrain_tiny --steps=300

A speed change to a shared block must not change what the model learns. For each preset this trains
the same config with ``experiments/train.py`` from a detached worktree of ``--base`` and from this
checkout (uncommitted changes included), at the same seeds, on the same data root (``$WAM_DATA_DIR``, else
``<workdir>/data``: the embedded sample is generated once and read by both). It then

- checks the two runs were the same experiment: the identity fields of their ``config.json`` must be
  equal (``trainer.config_changes``, the rule resume uses); a preset that changed between the
  revisions is reported, not compared;
- compares ``train/loss`` in windows of ``--window`` steps, both sides at the preset's seed +
  0..``--seeds``-1, against the seed-to-seed spread of one side (the rule and why:
  ``wam_jax/training/loss_curves.py``).

Writes ``<out>/loss_curves.md`` (a table per preset), ``<out>/loss_curves.png`` (both curves per
preset) and ``<out>/loss_curves.json``. Runs already finished in ``--workdir`` are reused, so an
interrupted comparison resumes (a base run is keyed by its commit and seed, this checkout's by a hash
of its training code, committed and not, and seed). Exit status 1 if a preset is out of the bound or
not comparable.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags

from wam_jax.training import loss_curves

_BASE = flags.DEFINE_string("base", None, "Git revision of the previous code.", required=True)
_PRESETS = flags.DEFINE_list("presets", ["vla_baseline.py:tiny", "video_wam.py:pretrain_tiny"],
                             "config_file.py:preset under experiments/configs.")
_STEPS = flags.DEFINE_integer("steps", 300, "Train steps per run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Runs per side, at the preset's seed + 0, 1, ... (at least 2).")
_WINDOW = flags.DEFINE_integer("window", 50, "Steps per compared window of the loss curve.")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.02, "Mean absolute relative window difference always accepted.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/wam_loss_curves", "Worktree, data root and runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/numerics", "Where the table, plot and JSON go.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _git(*args: str, cwd=REPO) -> str:
  return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def base_tree(rev: str, workdir: pathlib.Path) -> tuple[pathlib.Path, str]:
  """A detached worktree of ``rev`` under ``workdir`` (made once per commit) and its full hash."""
  commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
  tree = workdir / f"tree_{commit[:12]}"
  if not (tree / "experiments" / "train.py").exists():
    _git("worktree", "add", "--detach", "--force", str(tree), commit)
  return tree, commit


def train(tree: pathlib.Path, preset: str, run: pathlib.Path, steps: int, data_root: pathlib.Path,
          seed: int | None = None) -> None:
  """``experiments/train.py`` of ``tree`` on ``preset`` for ``steps`` at ``seed`` (None: the preset's);
  logs every step, no eval."""
  if loss_curves.losses(run).get(steps) is not None:
    return  # finished earlier
  file, name = preset.split(":")
  cmd = [sys.executable, "experiments/train.py", f"--config=experiments/configs/{file}:{name}",
         f"--workdir={run}", f"--config.train.steps={steps}", "--config.train.log_every=1",
         f"--config.train.val_every={steps}", f"--config.train.ckpt_every={steps}",
         "--config.train.summary_every=0", "--config.eval.at_end=False"]
  if seed is not None:
    cmd.append(f"--config.seed={seed}")
  env = {**os.environ, "PYTHONPATH": str(tree), "WAM_DATA_DIR": str(data_root)}
  print(f"[{preset}] training {steps} steps from {tree} -> {run}", flush=True)
  log = run.parent / f"{run.name}.log"
  run.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "w") as f:
    proc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise RuntimeError(f"[{preset}] {' '.join(cmd)} failed in {tree} (exit {proc.returncode}); see {log}")


def markdown(preset: str, commits: tuple[str, str], result: dict, tolerance: float) -> str:
  lines = [f"### {preset}: base {commits[0][:10]} vs head {commits[1]}", ""]
  if result.get("config_changes"):
    lines.append("Not comparable, the preset changed between the revisions: " + ", ".join(
        f"`{k}` {v[0]!r} -> {v[1]!r}" for k, v in result["config_changes"].items()))
    return "\n".join(lines)
  n = result["seeds"]
  lines += [f"First step's loss (same init, same batch), largest relative difference over the {n} seeds: "
            f"{result['first_step_rel_diff']:+.2e}.", "",
            f"| steps | base mean loss ({n} seeds) | head mean loss ({n} seeds) | head vs base |", "|---|---|---|---|"]
  lines += [f"| {r['steps']} | {r['a']:.5f} | {r['b']:.5f} | {r['rel_diff']:+.2%} |" for r in result["windows"]]
  verdict = "within" if result["within_tolerance"] else "OUT OF"
  lines += ["", f"Mean absolute window difference of the seed-means {result['mean_abs_rel_diff']:.2%}; two seeds of "
            f"one side differ by {result['seed_spread']:.2%} (S); bound max(2 S / sqrt({n}), {tolerance:.0%}) = "
            f"{result['bound']:.2%}: {verdict} it."]
  return "\n".join(lines)


def plot(curves: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
  for ax, (preset, sides) in zip(axes[0], curves.items()):
    for side, color in (("base", "tab:blue"), ("head", "tab:orange")):
      for i, curve in enumerate(sides[side]):
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], color=color, lw=0.8, alpha=0.7,
                label=f"{side} ({len(sides[side])} seeds)" if i == 0 else None)
    ax.set(title=preset, xlabel="step", ylabel="train/loss", yscale="log")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  from wam_jax.training import trainer  # pylint: disable=g-import-not-at-top
  if _SEEDS.value < 2:
    raise app.UsageError(f"--seeds={_SEEDS.value}: at least 2 (the seed spread is the yardstick)")
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  data_root = pathlib.Path(os.environ.get("WAM_DATA_DIR") or workdir / "data").absolute()
  tree, base_commit = base_tree(_BASE.value, workdir)
  # This checkout's runs are keyed by what trains: the code of the package, configs and train.py.
  code = ("wam_jax", "experiments/configs", "experiments/train.py")
  untracked = _git("ls-files", "--others", "--exclude-standard", "--", *code).split()
  diff = _git("diff", "HEAD", "--", *code) + "".join(f"\n{f}\n" + (REPO / f).read_text() for f in untracked)
  head = _git("rev-parse", "HEAD") + ("+uncommitted" if diff else "")
  trees = " ".join(_git("rev-parse", f"HEAD:{path}") for path in code)
  head_key = hashlib.sha1((trees + diff).encode()).hexdigest()[:12]
  results, curves, tables = {}, {}, []
  for preset in _PRESETS.value:
    slug = preset.replace(".py:", "_")
    runs = {side: [workdir / slug / f"{side}_{key}_s{k}" for k in range(_SEEDS.value)]
            for side, key in (("base", base_commit[:12]), ("head", head_key))}
    configs = {}
    for k in range(_SEEDS.value):
      for side, src in (("base", tree), ("head", REPO)):
        # Seed 0 is the preset's own; the next ones count up from it, as that revision's config has it.
        train(src, preset, runs[side][k], _STEPS.value, data_root, configs[side]["seed"] + k if k else None)
        configs.setdefault(side, json.loads((runs[side][0] / "config.json").read_text()))
    changes = trainer.config_changes(configs["base"], configs["head"])
    curves[preset] = {side: [loss_curves.losses(r) for r in rs] for side, rs in runs.items()}
    result = {"config_changes": {k: [str(a), str(b)] for k, (a, b) in changes.items()}}
    if not changes:
      result.update(loss_curves.compare(curves[preset]["base"], curves[preset]["head"], _WINDOW.value, _TOLERANCE.value))
    results[preset] = result
    tables.append(markdown(preset, (base_commit, head), result, _TOLERANCE.value))
    print(tables[-1], flush=True)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  argv_line = " ".join(["scripts/compare_loss_curves.py", *sys.argv[1:]])
  (out / "loss_curves.md").write_text(f"`JAX_PLATFORMS=cpu .venv/bin/python {argv_line}`\n\n" + "\n\n".join(tables) + "\n")
  (out / "loss_curves.json").write_text(json.dumps(
      {"base": base_commit, "head": head, "steps": _STEPS.value, "window": _WINDOW.value,
       "tolerance": _TOLERANCE.value, "presets": results,
       "curves": {p: {s: [{str(k): v for k, v in c.items()} for c in cs] for s, cs in sides.items()}
                  for p, sides in curves.items()}},
      indent=1))
  plot(curves, out / "loss_curves.png")
  if not all(r.get("within_tolerance") for r in results.values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
