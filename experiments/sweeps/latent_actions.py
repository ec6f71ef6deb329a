"""Claim 2, latent-action part (shared/PROTOCOL.md): do latent actions learned from unlabeled video
help when labels are scarce (N in {2, 5} demos per MT10 task)? Two stages trained once on the
action-free video pool only, shared by both N and every seed (the protocol reuses pretraining): the
latent-action model, and a policy pretrained to predict its latent actions from (o_t, l_t); then
per N and seed, that policy fine-tuned to real actions on the N demos (2000 steps, ~9 min), beside
the VLA baseline on the same labels (the reference row, as baseline_data_efficiency).

The ``*_k8`` cells are the same three stages with the latent-action model (and the latent policy that
reads it) on transitions over a frame gap of k=8 instead of 4: the first setting whose code the
latent probe found to carry the motion beyond the task (BUILD_NOTES, "What the latent code carries").

The ``*_cn`` cells are the same three stages with the latent-action model's reconstruction
copy-normalized (``model.recon_norm='copy'``: the decoder's error over copying the last frame's, so
the motion is not drowned by regularisers of fixed size); probed at step 1000, its code adds 5.8
points of R^2 beyond the task against 1.9 (BUILD_NOTES, session 20).
The ``*_k8cn`` cells combine both (frame gap 8 and the copy-normalized reconstruction): probed at
step 1000 its code adds 15.6 points beyond the task (k=8 alone 7.1; BUILD_NOTES, session 21).

The other two claim-2 methods (a VLA on labels + IDM pseudo-labels, and plan-with-video-act-with-
IDM) are the idm_claim2 sweep (label and eval cells)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

N_DEMOS = (2, 5)


def variant_chain(tag: str, lam_overrides: dict, policy_overrides: dict = None, n_demos: tuple = N_DEMOS) -> tuple:
  """The three stages again with the latent-action model changed by ``lam_overrides`` (and the latent
  policy that reads it by ``policy_overrides``): cells ``latent_action_<tag>`` ->
  ``latent_policy_<tag>`` -> ``latent_finetune_<tag>_n<N>`` for each N of ``n_demos``."""
  return ((Cell(name=f"latent_action_{tag}", config="experiments/configs/idm_wam.py:latent_mt10", stage_seed=0,
                overrides=lam_overrides, method=f"latent_action_{tag}"),
           Cell(name=f"latent_policy_{tag}", config="experiments/configs/idm_wam.py:latent_policy_mt10",
                stage_seed=0, init_from=f"latent_action_{tag}", overrides=policy_overrides or {},
                method=f"latent_policy_{tag}"))
          + tuple(Cell(name=f"latent_finetune_{tag}_n{n}", config=f"experiments/configs/idm_wam.py:finetune_mt10_n{n}",
                       init_from=f"latent_policy_{tag}", method=f"latent_actions_{tag}", n_demos=n)
                  for n in n_demos))


SWEEP = Sweep(
    name="latent_actions",
    version=4,  # v4: the latent policy on the pool only, both stages trained once for every N and seed (session 10)
               # v3: protocol presets read frames through the conv trunk protocol.STEM; the VLA: one frame, 4000 steps (session 9)
               # v2: the protocol presets train on unaugmented frames (session 8)
    description=__doc__,
    cells=(Cell(name="latent_action", config="experiments/configs/idm_wam.py:latent_mt10", stage_seed=0,
                method="latent_action"),
           Cell(name="latent_policy", config="experiments/configs/idm_wam.py:latent_policy_mt10", stage_seed=0,
                init_from="latent_action", method="latent_policy"))
    + tuple(c for n in N_DEMOS for c in (
        Cell(name=f"latent_finetune_n{n}", config=f"experiments/configs/idm_wam.py:finetune_mt10_n{n}",
             init_from="latent_policy", method="latent_actions", n_demos=n),
        Cell(name=f"vla_l1_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
             overrides=BYTE_TOKENS, method="vla_l1", n_demos=n),
    ))
    + variant_chain("k8", {"data.future_offset": 8}, {"data.future_offset": 8})
    + variant_chain("cn", {"model.recon_norm": "copy"})
    + variant_chain("k8cn", {"data.future_offset": 8, "model.recon_norm": "copy"}, {"data.future_offset": 8}),
)
