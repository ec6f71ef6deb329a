"""The VLA baseline at N in {2, 5, 20} labeled demos per MT10 task, 3 seeds: the reference row of
every claim (shared/PROTOCOL.md). ~9 min of training + ~4 min of evaluation per run on 2 cores."""

from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="baseline_data_efficiency",
    version=1,
    description=__doc__,
    cells=tuple(
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             method="vla_l1", n_demos=n)
        for n in (2, 5, 20)),
)
