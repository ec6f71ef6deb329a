"""Claim 1 (shared/PROTOCOL.md): does video pretraining pay off at N in {2, 5, 20} labeled demos per
MT10 task? Per N and seed: the video world model pretrained on the N-demo set's frames + the
action-free video pool (a stage, not evaluated), the video-backbone WAM adapted from it, the same
architecture from scratch (the control that isolates the pretraining), and the VLA baseline at
equal labeled data and policy budget (~15 min: the VLA 4000 steps at one frame, the WAM 2000 at two;
the reference row, as baseline_data_efficiency)."""

from wam_jax.ablations.sweep import Cell, Sweep

N_DEMOS = (2, 5, 20)


def _cells(n):
  return (
      Cell(name=f"video_pretrain_n{n}", config=f"experiments/configs/video_wam.py:pretrain_mt10_n{n}",
           method="video_pretrain", n_demos=n),
      Cell(name=f"video_wam_n{n}", config=f"experiments/configs/video_wam.py:policy_mt10_n{n}",
           init_from=f"video_pretrain_n{n}", method="video_wam", n_demos=n),
      Cell(name=f"video_wam_scratch_n{n}", config=f"experiments/configs/video_wam.py:policy_mt10_n{n}",
           overrides={"train.init_from": ""}, method="video_wam_scratch", n_demos=n),
      Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
           method="vla_l1", n_demos=n),
  )


SWEEP = Sweep(
    name="video_wam_data_efficiency",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=tuple(c for n in N_DEMOS for c in _cells(n)),
)
