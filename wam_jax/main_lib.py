"""What the thin entry points in experiments/ call: flag parsing with clear errors, train, evaluate."""

import logging as py_logging
import pathlib
import sys

from absl import app, flags, logging


def _parse_flags(argv):
  """absl parsing, but an unknown or mistyped --config.* field is a one-line error naming it."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    missing = str(e).strip("'\"")
    culprits = [a.split("=")[0] for a in argv if a.startswith("--config.") and missing in a.split("=")[0]]
    where = culprits[0] if culprits else "a --config override"
    print(f"error: {where}: the config has no field {missing!r}", file=sys.stderr)
    sys.exit(2)


def quiet_libraries():
  for name in ("absl", "orbax", "jax._src", "grain"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  logging.set_verbosity(logging.INFO)
  # Orbax and Grain log through absl at INFO: keep ours, drop theirs.
  class _OnlyOurs(py_logging.Filter):
    def filter(self, record):
      return record.levelno >= py_logging.WARNING or "wam_jax" in record.pathname or "experiments" in record.pathname
  py_logging.getLogger("absl").addFilter(_OnlyOurs())
  logging.get_absl_handler().addFilter(_OnlyOurs())


def run(main):
  def _main(argv):
    quiet_libraries()
    return main(argv)
  app.run(_main, flags_parser=_parse_flags)


def check_config_or_exit(config):
  """Semantic config errors (names, shapes, mesh) as one line and exit 2, before any work."""
  import jax
  from wam_jax.training import trainer
  try:
    trainer.check_config(config, jax.device_count())
    if config.eval.get("at_end", False):  # a misspelt eval task must not wait for training to end
      from wam_jax.sim import metaworld as mw
      mw.parse_tasks(tuple(config.eval.tasks) or tuple(config.data.metaworld.tasks))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def train_and_evaluate(config, workdir):
  from wam_jax.training import trainer
  workdir = pathlib.Path(workdir)
  from wam_jax.training import checkpoint as ckpt_lib
  check_config_or_exit(config)
  try:
    final = trainer.train(config, workdir)
  except (trainer.ConfigChangedError, ckpt_lib.IncompatibleCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)  # another run's workdir: nothing was written
    sys.exit(2)
  print(f"training done at step {final.get('step')}: checkpoints in {workdir / 'checkpoints'}, "
        f"metrics in {workdir / 'metrics.jsonl'}, TensorBoard in {workdir / 'tensorboard'}")
  if config.eval.get("at_end", False) and final.get("step") == config.train.steps:
    evaluate_checkpoint(workdir, config)
  return final


def evaluate_checkpoint(workdir, config, out_dir=None) -> dict:
  """Closed-loop MetaWorld evaluation of ``workdir``'s latest checkpoint."""
  import functools
  from wam_jax import inference
  from wam_jax.evaluation import evaluate
  out_dir = pathlib.Path(out_dir or pathlib.Path(workdir) / "eval")
  results = evaluate.evaluate(functools.partial(inference.load_policy, str(workdir)), out_dir=out_dir,
                              policy_name=f"checkpoint:{workdir}", **evaluate.eval_kwargs_from_config(config))
  print(f"closed-loop results: {out_dir / 'results.md'} (JSON: results.json); videos in "
        f"{out_dir / 'videos'}; contact sheet {out_dir / 'contact_sheet.png'}")
  return results
