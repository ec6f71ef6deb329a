"""Claim 4 (shared/PROTOCOL.md): do hybrids balance instruction following and dynamics?

Two measurements on MT10 at N=20, 3 seeds, each model evaluated twice on the same episode seeds:
(a) the instruction decides: reach, push and pick-place start from scenes a policy cannot tell
apart (BUILD_NOTES.md, "claim 4": `scripts/instruction_pairs.py`, nearest-neighbour ratio
1.01-1.02), so a policy that ignores its instruction cannot succeed on more than about one of
the three; read their per-task success; (b) unseen paraphrases of every instruction (the extra
evaluation `paraphrase`: `experiments/report.py DIR --eval=paraphrase`), read beside (a).
Rows: the VLA baseline (its run is reused from baseline_data_efficiency), the hybrid VLA-WAM
restored from the LLM -> VLM ladder (runs/vlm_tiny, trained once), and the hybrid without the
ladder (the same network from scratch): the ladder's contribution to (a) and (b)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

N = 20

SWEEP = Sweep(
    name="instruction_following",
    version=3,  # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    extra_evals={"paraphrase": {"instructions": "paraphrase"}},
    cells=(
        Cell(name=f"vla_l1_n{N}", config=f"experiments/configs/vla_baseline.py:mt10_n{N}", method="vla_l1",
             overrides=BYTE_TOKENS, n_demos=N),
        Cell(name=f"hybrid_n{N}", config=f"experiments/configs/hybrid.py:mt10_n{N}", method="hybrid", n_demos=N),
        Cell(name=f"hybrid_scratch_n{N}", config=f"experiments/configs/hybrid.py:mt10_n{N}",
             overrides={"train.init_from": "", "train.init_from_map": ""}, method="hybrid_scratch", n_demos=N),
    ),
)
