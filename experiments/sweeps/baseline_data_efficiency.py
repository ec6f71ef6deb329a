"""The VLA baseline at N in {2, 5, 20} labeled demos per MT10 task, 3 seeds: the reference row of
every claim (shared/PROTOCOL.md). ~6 min of training + ~3 min of evaluation per run on 2 cores
(AMD EPYC with AVX-512 bf16, session 8). Version 2: protocol frames are not augmented (version 1,
with random crops and colour jitter: 49-50% at every N, seed 0)."""

from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="baseline_data_efficiency",
    version=2,
    description=__doc__,
    cells=tuple(
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             method="vla_l1", n_demos=n)
        for n in (2, 5, 20)),
)
