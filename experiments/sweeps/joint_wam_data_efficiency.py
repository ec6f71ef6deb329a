"""Claims 1 and 3 for family 3 (shared/PROTOCOL.md): at N in {2, 5, 20} labeled demos per MT10 task
plus the action-free video pool (its rows add only the video loss), the joint WAM (joint readout,
regression frames, L1 head), the same network with video_weight = 0 (actions only: isolates the
video objective), the joint WAM with its video loss scaled to be heard (``video.loss_norm='copy'``
at video_weight 3, 10 and 100: at the shipped weight of 1 the action loss's gradient is ~10^3 times the
video loss's and the frame head stays at copy-last; BUILD_NOTES.md, "The video loss never reached
the trunk"), and the VLA baseline at equal steps and labels (the reference row, as
baseline_data_efficiency). Evaluation reports the rollout consistency of the joint model's
predicted t+k frames beside success; per-task success on pick-place, push and peg-insert-side is
the long-horizon part of claim 3."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from experiments.configs.vla_baseline import POOLED_INSTRUCTION
from wam_jax.ablations.sweep import Cell, Sweep

N_DEMOS = (2, 5, 20)
# video_weight with the copy-normalized video loss (1.0 = copying). At N=2, seed 0, x10 and x100 learned
# frames (held-out PSNR 24.2 / 24.4 dB vs copying's 23.4) and lost 10 / 24 points of success to the
# actions-only twin, their video gradient 4x / 25x the action's at the end; x3 maps the middle.
VNORM_WEIGHTS = (3, 10, 100)

SWEEP = Sweep(
    name="joint_wam_data_efficiency",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=tuple(c for n in N_DEMOS for c in (
        Cell(name=f"joint_wam_n{n}", config=f"experiments/configs/joint_wam.py:mt10_n{n}",
             method="joint_wam", n_demos=n),
        Cell(name=f"joint_wam_no_video_n{n}", config=f"experiments/configs/joint_wam.py:mt10_n{n}",
             overrides={"model.video_weight": 0.0}, method="joint_wam_no_video", n_demos=n),
        *(Cell(name=f"joint_wam_vnorm{w}_n{n}", config=f"experiments/configs/joint_wam.py:mt10_n{n}",
               overrides={"model.video.loss_norm": "copy", "model.video_weight": float(w),
                          "train.grad_norm_of": "video_loss_vs_copy,action_loss"},
               method=f"joint_wam_vnorm{w}", n_demos=n) for w in VNORM_WEIGHTS),
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             overrides=BYTE_TOKENS, method="vla_l1", n_demos=n),
        # The VLA preset's instruction recipe (families:joint_wam_pooled: +9.8 at N=20), at every N (session 31).
        Cell(name=f"joint_wam_pooled_n{n}", config=f"experiments/configs/joint_wam.py:mt10_n{n}",
             overrides=POOLED_INSTRUCTION, method="joint_wam_pooled", n_demos=n),
    )),
)
