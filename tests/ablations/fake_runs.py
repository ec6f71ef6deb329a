"""A stand-in for the harness's run command, for tests of what the harness starts and skips."""

import sys


def finishing_command(started: list):
  """``sweep.command`` replacement: records "<cell>/seed_<s>" in ``started`` and returns a command
  that leaves a finished run (a checkpoint and an evaluation) in the run directory at once."""
  def command(cell, seed, run_dir):
    started.append(f"{cell.name}/seed_{seed}")
    code = ("import pathlib; d = pathlib.Path(%r); (d / 'checkpoints' / '100000').mkdir(parents=True); "
            "(d / 'eval').mkdir(); (d / 'eval' / 'results.json').write_text('{}')" % str(run_dir))
    return [sys.executable, "-c", code]
  return command
