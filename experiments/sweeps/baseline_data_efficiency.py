"""The VLA baseline at N in {2, 5, 20} labeled demos per MT10 task, 3 seeds: the reference row of
every claim (shared/PROTOCOL.md). ~13 min of training + ~3 min of evaluation per run on 2 idle cores
(AMD EPYC with AVX-512 bf16, session 9). Version 3: the preset of the baseline_quality sweep's
winner (the conv trunk ``protocol.STEM``, one history frame, 4000 steps: 66% at N=20, seed 0).
Version 2: protocol frames are not augmented (seed 0: 44%, 56%, 56% at N = 2, 5, 20). Version 1,
with random crops and colour jitter: 49-50% at every N, seed 0. Session 28 adds the protocol's plain
CNN at its preset (``cnn_bc.py:mt10_n{N}``: one frame, 8000 steps at lr 1e-3; 77.5% at N=20 over three
seeds, ~13 min of training idle) as a second line: the strong reference beside the VLA. Its N=20 runs
are baseline_quality's ``cnn_bc_history1_lr1e-3_steps8000`` (the same config: linked, not retrained).
Session 30 adds ``vla_pooled_n{N}``: the preset since then (the instruction as one pooled token, lr 1e-3;
baseline_quality's ``text_pool_lr1e-3``, 74% at N=20 seed 0, is its N=20 seed-0 run, linked). The
``vla_l1_n{N}`` cells keep the runs they hold by pinning the old recipe (``BYTE_TOKENS``): the VLA
every family was compared with, reading the instruction as the families do (32 byte tokens)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="baseline_data_efficiency",
    version=3,
    description=__doc__,
    cells=tuple(
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             overrides=BYTE_TOKENS, method="vla_l1", n_demos=n)
        for n in (2, 5, 20)) + tuple(
        Cell(name=f"cnn_bc_n{n}", config=f"experiments/configs/cnn_bc.py:mt10_n{n}", method="cnn_bc", n_demos=n)
        for n in (2, 5, 20)) + tuple(
        Cell(name=f"vla_pooled_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             method="vla_pooled", n_demos=n)
        for n in (2, 5, 20)),
)
