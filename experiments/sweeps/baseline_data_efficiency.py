"""The VLA baseline at N in {2, 5, 20} labeled demos per MT10 task, 3 seeds: the reference row of
every claim (shared/PROTOCOL.md). ~13 min of training + ~3 min of evaluation per run on 2 idle cores
(AMD EPYC with AVX-512 bf16, session 9). Version 3: the preset of the baseline_quality sweep's
winner (the conv trunk ``protocol.STEM``, one history frame, 4000 steps: 66% at N=20, seed 0).
Version 2: protocol frames are not augmented (seed 0: 44%, 56%, 56% at N = 2, 5, 20). Version 1,
with random crops and colour jitter: 49-50% at every N, seed 0."""

from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="baseline_data_efficiency",
    version=3,
    description=__doc__,
    cells=tuple(
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             method="vla_l1", n_demos=n)
        for n in (2, 5, 20)),
)
