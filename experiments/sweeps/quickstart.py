"""README command 1: a small world-action run beside the VLA baseline, on the embedded MetaWorld data.

Three runs, one seed: the video world model pretrained on action-free video + demo frames
(`video_pretrain`, no evaluation), the video-backbone WAM adapted from it (`video_wam`, L1 head,
restored by parameter path), and the VLA baseline (`vla`) at the same policy steps. Both
policies are evaluated closed loop on the same tasks and episode seeds; `experiments/report.py`
prints them side by side. Shortened from the tiny presets (1500 + 1000 steps) to fit ~15 min on
2 cores: a demonstration of the pipeline, not the protocol's numbers (BUILD_NOTES.md has those).
"""

from wam_jax.ablations.sweep import Cell, Sweep

PRETRAIN_STEPS, POLICY_STEPS = 300, 400

SWEEP = Sweep(
    name="quickstart",
    version=1,
    description=__doc__,
    seeds=(0,),
    cells=(
        Cell(name="video_pretrain", config="experiments/configs/video_wam.py:pretrain_tiny",
             overrides={"train.steps": PRETRAIN_STEPS, "train.val_every": 100, "train.ckpt_every": 100},
             method="video_pretrain"),
        Cell(name="video_wam", config="experiments/configs/video_wam.py:policy_tiny", init_from="video_pretrain",
             overrides={"train.steps": POLICY_STEPS, "train.val_every": 200, "train.ckpt_every": 100},
             method="video_wam"),
        Cell(name="vla", config="experiments/configs/vla_baseline.py:tiny",
             overrides={"train.steps": POLICY_STEPS, "train.val_every": 200, "train.ckpt_every": 100},
             method="vla"),
    ),
)
