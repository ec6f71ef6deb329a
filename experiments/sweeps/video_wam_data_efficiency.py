"""Claim 1 (shared/PROTOCOL.md): does video pretraining pay off at N in {2, 5, 20} labeled demos per
MT10 task? The video world model pretrained once on the action-free video pool (a stage shared by
every N and seed, as the protocol reuses pretraining; not evaluated); per N and seed, the
video-backbone WAM adapted from it, the same architecture from scratch (the control that isolates
the pretraining; both see the pool at weight 0.3 beside the demos), and the VLA baseline at equal
labeled data and policy budget (~15 min: the VLA 4000 steps at one frame, the WAM 2000 at two; the
reference row, as baseline_data_efficiency)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

N_DEMOS = (2, 5, 20)


def _cells(n):
  return (
      Cell(name=f"video_wam_n{n}", config=f"experiments/configs/video_wam.py:policy_mt10_n{n}",
           init_from="video_pretrain", method="video_wam", n_demos=n),
      Cell(name=f"video_wam_scratch_n{n}", config=f"experiments/configs/video_wam.py:policy_mt10_n{n}",
           overrides={"train.init_from": ""}, method="video_wam_scratch", n_demos=n),
      Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
           overrides=BYTE_TOKENS, method="vla_l1", n_demos=n),
  )


SWEEP = Sweep(
    name="video_wam_data_efficiency",
    version=4,  # v4: one video pretraining on the pool only, shared by every N and seed (session 10)
               # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=(Cell(name="video_pretrain", config="experiments/configs/video_wam.py:pretrain_mt10", stage_seed=0,
                method="video_pretrain"),)
    + tuple(c for n in N_DEMOS for c in _cells(n)),
)
