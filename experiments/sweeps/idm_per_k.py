"""Issue 12, item 1: the inverse-dynamics model's held-out action error per frame gap k.

The IDM reads (o_t, o_t+k) and predicts the chunk a_t..a_t+k-1 (action_horizon = k), trained on
the protocol's N=20 MT10 demos (1000 steps, as idm_wam.py:idm_mt10_n20), for k in {1, 2, 4, 8}.
It is not a policy: the report lists its held-out metrics (val/action_l1, val/action_mse of the
last validation, on whole held-out episodes) per cell and seed instead of closed-loop success."""

from wam_jax.ablations.sweep import Cell, Sweep

N = 20

SWEEP = Sweep(
    name="idm_per_k",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=tuple(
        Cell(name=f"idm_k{k}", config=f"experiments/configs/idm_wam.py:idm_mt10_n{N}",
             overrides={"data.future_offset": k, "data.action_horizon": k}, method="idm", n_demos=N)
        for k in (1, 2, 4, 8)),
)
