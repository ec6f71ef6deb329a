"""The families side by side (issue 15): the VLA baseline and each world-action family at equal
labeled data (N=20 demos per MT10 task) and the same action-free video pool, L1 heads, each at its
preset's steps inside the protocol's budget (VLA 4000 at one frame; families 2000 at two frames:
BUILD_NOTES, "Every protocol preset against its budget"), 3 seeds. Family 1: video pretraining then adaptation; family 3: joint prediction (joint
readout) and its video_weight=0 ablation; family 2: latent actions learned from the video pool,
a policy pretrained to predict them, then fine-tuned on the demos. The pretraining stages (video model,
latent-action model, latent policy) learn from the action-free pool only and are trained once, at
seed 0, for every seed (``stage_seed``; the protocol reuses pretraining across seeds). Family 4
(hybrid) is the instruction_following sweep (claim 4). Added in session 27: family 2's strongest
latent recipe, ``k8cn`` (frame gap 8 + the copy-normalized reconstruction: the latent_actions sweep's
best at N=2), as the same three stages at N=20 (``latent_action_k8cn`` -> ``latent_policy_k8cn`` ->
``latent_finetune_k8cn_n20``), the same cells and configs as that sweep's chain. Added in session 31:
``joint_wam_pooled``, the joint WAM with the VLA preset's pooled instruction and learning rate
(``vla_baseline.POOLED_INSTRUCTION``; the VLA gained +6.8 points at N=20 from it): does a family gain the
same? And ``joint_wam_text_pool`` / ``joint_wam_lr1e-3``: each half of that recipe alone. Added in session
32: ``video_wam_pooled``, the same recipe on the video WAM (restored from the same video pretraining)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from experiments.configs.vla_baseline import POOLED_INSTRUCTION
from experiments.sweeps import latent_actions
from wam_jax.ablations.sweep import Cell, Sweep

N = 20

SWEEP = Sweep(
    name="families",
    version=4,  # v4: the pretraining stages on the pool only, trained once for every seed (session 10)
               # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=(
        Cell(name="vla", config=f"experiments/configs/vla_baseline.py:mt10_n{N}", overrides=BYTE_TOKENS, method="vla",
             n_demos=N),
        Cell(name="video_pretrain", config="experiments/configs/video_wam.py:pretrain_mt10", stage_seed=0,
             method="video_pretrain"),
        Cell(name="video_wam", config=f"experiments/configs/video_wam.py:policy_mt10_n{N}",
             init_from="video_pretrain", method="video_wam", n_demos=N),
        # The VLA preset's instruction recipe on the video WAM (the joint WAM gained +9.8 from it; session 32).
        Cell(name="video_wam_pooled", config=f"experiments/configs/video_wam.py:policy_mt10_n{N}",
             overrides=POOLED_INSTRUCTION, init_from="video_pretrain", method="video_wam_pooled", n_demos=N),
        Cell(name="joint_wam", config=f"experiments/configs/joint_wam.py:mt10_n{N}", method="joint_wam", n_demos=N),
        Cell(name="joint_wam_no_video", config=f"experiments/configs/joint_wam.py:mt10_n{N}",
             overrides={"model.video_weight": 0.0}, method="joint_wam_no_video", n_demos=N),
        Cell(name="joint_wam_pooled", config=f"experiments/configs/joint_wam.py:mt10_n{N}",
             overrides=POOLED_INSTRUCTION, method="joint_wam_pooled", n_demos=N),
        # Which half of the recipe: the pooled instruction alone, the learning rate alone.
        *(Cell(name=f"joint_wam_{name}", config=f"experiments/configs/joint_wam.py:mt10_n{N}",
               overrides={key: POOLED_INSTRUCTION[key]}, method=f"joint_wam_{name}", n_demos=N)
          for name, key in (("text_pool", "model.text_pool"), ("lr1e-3", "train.learning_rate"))),
        Cell(name="latent_action", config="experiments/configs/idm_wam.py:latent_mt10", stage_seed=0,
             method="latent_action"),
        Cell(name="latent_policy", config="experiments/configs/idm_wam.py:latent_policy_mt10", stage_seed=0,
             init_from="latent_action", method="latent_policy"),
        Cell(name="latent_finetune", config=f"experiments/configs/idm_wam.py:finetune_mt10_n{N}",
             init_from="latent_policy", method="latent_actions", n_demos=N),
    ) + latent_actions.variant_chain(
        "k8cn", {"data.future_offset": 8, "model.recon_norm": "copy"}, {"data.future_offset": 8}, n_demos=(N,)),
)
