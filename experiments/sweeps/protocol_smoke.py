"""The real protocol path end to end in ~30 min on 2 busy cores: the VLA baseline on the MT10 N=2
demos, 200 training steps (not the budget: a path check, not a result), closed-loop evaluation on
5 episodes per MT10 task with the protocol's seeds and settings, 1 seed. Run it before a family's
full sweep."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="protocol_smoke",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    seeds=(0,),
    cells=(
        Cell(name="vla_l1_n2_200steps", config="experiments/configs/vla_baseline.py:mt10_n2",
             overrides={**BYTE_TOKENS, "train.steps": 200, "train.ckpt_every": 100, "train.val_every": 100,
                        "eval.episodes_per_task": 5},
             method="vla_l1", n_demos=2),
    ),
)
