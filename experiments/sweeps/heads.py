"""Action heads on the VLA baseline: L1 regression against the generative heads (diffusion, flow,
discrete tokens), at N=20 demos per MT10 task, 3 seeds. Each head with its defaults
(config.model.head.<name>.*, wam_jax/models/heads); the L1 cell is the same configuration as
baseline_data_efficiency's vla_l1_n20 (rerun here so the sweep stands alone)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

SWEEP = Sweep(
    name="heads",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=tuple(
        Cell(name=f"vla_{head}_n20", config="experiments/configs/vla_baseline.py:mt10_n20",
             overrides={**BYTE_TOKENS, "model.head.name": head}, method=f"vla_{head}", n_demos=20)
        for head in ("l1", "diffusion", "flow", "discrete")),
)
