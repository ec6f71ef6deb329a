"""Issue 15, "baseline quality": why does the VLA reach only ~50% of MT10 at N=20 when a plain small
CNN trained for ~8 minutes reaches about three quarters (shared/PROTOCOL.md)? One seed per suspect,
each a config override of ``vla_baseline.py:mt10_n20``, evaluated like the protocol (200 episodes).

Suspects: random-crop augmentation (crops of 85-100% move the goal and the objects in the image but
not the hand's proprio coordinates, which the goal-driven tasks need to agree), 16 patch tokens
per 64 px frame (patch 16: a goal dot is a fraction of one token), and the number of steps. The
reference cell is the baseline's own N=20 run (reused from baseline_data_efficiency)."""

from wam_jax.ablations.sweep import Cell, Sweep

PRESET = "experiments/configs/vla_baseline.py:mt10_n20"
NO_AUGMENT = {"data.augment.enabled": False}

SWEEP = Sweep(
    name="baseline_quality",
    version=1,
    description=__doc__,
    seeds=(0,),
    cells=(
        Cell(name="vla_l1_n20", config=PRESET, method="reference", n_demos=20),
        Cell(name="no_augment", config=PRESET, overrides=NO_AUGMENT, method="no_augment", n_demos=20),
        Cell(name="patch8", config=PRESET, overrides={"model.patch_size": 8}, method="patch8", n_demos=20),
        Cell(name="no_augment_patch8", config=PRESET, overrides={**NO_AUGMENT, "model.patch_size": 8},
             method="no_augment_patch8", n_demos=20),
        Cell(name="no_augment_steps4000", config=PRESET, overrides={**NO_AUGMENT, "train.steps": 4000},
             method="no_augment_steps4000", n_demos=20),
    ),
)
