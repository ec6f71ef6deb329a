r"""Report of a sweep's finished runs: results.csv, runs.csv, results.md and plots (never retrains).

  python experiments/report.py runs/sweeps/baseline                       # -> runs/sweeps/baseline/report/
  python experiments/report.py runs/sweeps/baseline --out=experiments/results/baseline_data_efficiency
  python experiments/report.py runs/sweeps/hybrid --eval=paraphrase     # an extra evaluation (Sweep.extra_evals)

DIR is the --workdir of experiments/ablations.py. Unfinished runs are left out (the table says
how many seeds each cell has). What is read and how it is pooled: wam_jax/ablations/report.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from wam_jax.ablations import report  # noqa: E402

_OUT = flags.DEFINE_string("out", "", "Output directory ('' -> DIR/report).")
_PLOTS = flags.DEFINE_bool("plots", True, "Also draw the PNG plots (matplotlib).")
_EVAL = flags.DEFINE_string("eval", "", "An extra evaluation of the sweep (Sweep.extra_evals, e.g. "
                            "'paraphrase'): tabulate eval_<name>/ instead of eval/ ('' -> DIR/report_<name>).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: experiments/report.py DIR [--out=OUT]: DIR is a sweep --workdir")
  try:
    result = report.write_report(argv[1], _OUT.value or None, plots=_PLOTS.value,
                                 eval_name=_EVAL.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print((result["files"][2]).read_text())
  print("wrote " + ", ".join(str(f) for f in result["files"]))


if __name__ == "__main__":
  app.run(main)
