"""Claim 2, the two inverse-dynamics methods (shared/PROTOCOL.md): with N in {2, 5} labeled demos
per MT10 task, does an IDM trained on the demos make the action-free video pool useful? Per N and
seed:

- idm_n{N}: the IDM on the N demos (a stage: held-out action error, no closed loop);
- label_n{N}: the video pool pseudo-labelled by that IDM (a label cell: scripts/label_video.py);
- vla_pseudo_n{N}: the VLA baseline trained on the demos + the labelled pool (weights 1:1);
- video_pretrain: the video world model on the action-free pool, once for every N and seed (a
  stage, the same run as video_wam_data_efficiency's: linked from there when finished);
- plan_idm_n{N}: plan with that video model, act with the IDM (an eval cell: eval.py --policy=plan_idm,
  the protocol's 200 episodes, no training);
- vla_n{N}: the VLA on the demos only (the reference row, as baseline_data_efficiency: linked);
- label_oracle / vla_oracle_n{N} (added in session 27): the pool labelled by the scripted expert on
  each step's stored state (label_video.py --expert) and the VLA on the demos + that pool: the upper
  bound of pseudo-labelling, the pool's coverage without the IDM's label noise. Where vla_pseudo_n{N}
  lands between vla_n{N} and vla_oracle_n{N} says whether the labels or the extra scenes limit it.

- idm_state_n{N} / label_state_n{N} / vla_state_pseudo_n{N} (added in session 29): the same three steps
  with an IDM that also reads the robot's proprio at t+k (``model.use_future_proprio``). The oracle showed
  that the labels limit pseudo-labelling at N=2; the pool records the hand's state at every step (only the
  actions are dropped), as robot logs without actions usually do, and where the hand went is most of
  what the actions did. Not a video-only method: it cannot label human or web video, or plan.
The latent-action method of claim 2 is the latent_actions sweep."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

N_DEMOS = (2, 5)
ORACLE = "metaworld_video_pool_oracle"


def _cells(n):
  demos, labelled = f"metaworld_mt10_n{n}", f"metaworld_video_pool_labeled_n{n}"
  return (
      Cell(name=f"idm_n{n}", config=f"experiments/configs/idm_wam.py:idm_mt10_n{n}", method="idm", n_demos=n),
      Cell(name=f"label_n{n}", kind="label", init_from=f"idm_n{n}", method="pseudo_labels", n_demos=n),
      Cell(name=f"vla_pseudo_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
           overrides={**BYTE_TOKENS, "data.mixture": ((demos, 1.0), (labelled, 1.0))},
           data_from={labelled: f"label_n{n}"},
           method="vla_pseudo_labels", n_demos=n),
      Cell(name=f"plan_idm_n{n}", kind="eval", init_from=f"idm_n{n}", video_from="video_pretrain",
           method="plan_idm", n_demos=n),
      Cell(name=f"vla_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}", overrides=BYTE_TOKENS,
           method="vla_l1", n_demos=n),
      Cell(name=f"vla_oracle_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
           overrides={**BYTE_TOKENS, "data.mixture": ((demos, 1.0), (ORACLE, 1.0))}, data_from={ORACLE: "label_oracle"},
           method="vla_oracle_labels", n_demos=n),
      Cell(name=f"idm_state_n{n}", config=f"experiments/configs/idm_wam.py:idm_mt10_n{n}",
           overrides={"model.use_future_proprio": True}, method="idm_state", n_demos=n),
      Cell(name=f"label_state_n{n}", kind="label", init_from=f"idm_state_n{n}", method="state_pseudo_labels",
           n_demos=n),
      Cell(name=f"vla_state_pseudo_n{n}", config=f"experiments/configs/vla_baseline.py:mt10_n{n}",
           overrides={**BYTE_TOKENS, "data.mixture": ((demos, 1.0), (labelled, 1.0))},
           data_from={labelled: f"label_state_n{n}"},
           method="vla_state_pseudo_labels", n_demos=n),
  )


SWEEP = Sweep(
    name="idm_claim2",
    version=3,  # v3: one video pretraining on the pool only, for every N and seed (session 10)
               # v2: protocol presets read frames through the conv trunk protocol.STEM (session 9)
    description=__doc__,
    cells=(Cell(name="video_pretrain", config="experiments/configs/video_wam.py:pretrain_mt10", stage_seed=0,
                method="video_pretrain"),
           Cell(name="label_oracle", kind="label", overrides={"expert": True}, method="oracle_labels"))
    + tuple(c for n in N_DEMOS for c in _cells(n)),
)
