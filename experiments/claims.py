r"""The four claims of shared/PROTOCOL.md as comparisons of finished sweep runs -> claims.md.

  .venv/bin/python experiments/claims.py --sweeps_root=runs/sweeps --out=experiments/results/claims

Each row is a method cell against its reference cell (``wam_jax/ablations/compare.py``): the
difference in pooled success with Newcombe's 95% interval, per-seed differences, and the verdict
(supported / contradicted / unresolved; "not run" until both sides have a finished run). A sweep's
workdir is ``<sweeps_root>/<sweep>_v<version>`` (as ``runs/queue_session9.sh`` runs them); its runs
finished on other machines are read from their committed records (``--records_root``,
``wam_jax/ablations/records.py``). Reads files only: rerun it whenever more runs have finished.
"""

import dataclasses
import importlib

from absl import app
from absl import flags

from experiments.sweeps.joint_wam_data_efficiency import VNORM_WEIGHTS
from wam_jax.ablations import compare
from wam_jax.ablations.compare import Comparison, Side

_ROOT = flags.DEFINE_string("sweeps_root", "runs/sweeps", "Directory holding the sweeps' workdirs.")
_OUT = flags.DEFINE_string("out", "", "Where to write claims.md ('' = print only).")
_RECORDS = flags.DEFINE_string("records_root", "experiments/results", "Where the sweeps' committed run records "
                               "are (<root>/<sweep>/records/v<version>/, wam_jax/ablations/records.py): runs "
                               "finished on other machines; '' = the workdirs only.")


def workdir(sweep: str) -> str:
  """``<sweep>_v<version>``: the shipped sweep's current version."""
  return f"{sweep}_v{importlib.import_module(f'experiments.sweeps.{sweep}').SWEEP.version}"


# The long, goal-driven MT10 tasks (issue 11: called out for claim 3).
LONG_TASKS = ("pick-place-v3", "push-v3", "peg-insert-side-v3")


def consistency() -> list[tuple[str, Side]]:
  """Claim 3's frame measurement: the joint WAM cells whose evaluation records rollout consistency,
  and the video WAM's (pretrained predictor, co-trained), the same measurement with a real prior."""
  joint, video = workdir("joint_wam_data_efficiency"), workdir("video_wam_data_efficiency")
  return ([(f"joint WAM, N={n}", Side(joint, f"joint_wam_n{n}")) for n in (2, 5, 20)]
          + [(f"joint WAM, video heard (x{w}), N={n}", Side(joint, f"joint_wam_vnorm{w}_n{n}"))
             for w in VNORM_WEIGHTS for n in (2, 5, 20)]
          + [(f"video WAM, N={n}", Side(video, f"video_wam_n{n}")) for n in (2, 5, 20)])


# The world-action families at N=20 side by side (the families sweep's cells; issue 15).
FAMILY_CELLS = ("video_wam", "joint_wam", "latent_finetune", "latent_finetune_k8cn_n20", "joint_wam_pooled",
                "video_wam_pooled")


# baseline_quality's cell that runs the cnn_bc.py:mt10_n20 preset as it stands (session 28).
CNN_CELL = "cnn_bc_history1_lr1e-3_steps8000"


def best_family(root, records_root=None) -> str:
  """Claim 4's "best world-action family": the families cell with the highest pooled success at N=20
  (its finished runs and records); the video WAM while none has finished."""
  best = compare.best(root, [Side(workdir("families"), c) for c in FAMILY_CELLS], records_root)
  return best.cell if best else FAMILY_CELLS[0]


def comparisons(best: str = FAMILY_CELLS[0]) -> list[Comparison]:
  """Every claim's rows; ``best``: the families cell claim 4 compares the hybrid with (best_family)."""
  base, video, joint = workdir("baseline_data_efficiency"), workdir("video_wam_data_efficiency"), \
      workdir("joint_wam_data_efficiency")
  idm, latent, instr, fam = workdir("idm_claim2"), workdir("latent_actions"), \
      workdir("instruction_following"), workdir("families")
  vla = lambda n: Side(base, f"vla_l1_n{n}")  # the VLA reading the instruction as every family does (32 byte tokens)
  rows = []
  for n in (2, 5, 20):  # 1. video pretraining reduces the robot data needed
    rows += [Comparison("1", f"video WAM vs the same from scratch, N={n}", Side(video, f"video_wam_n{n}"),
                        Side(video, f"video_wam_scratch_n{n}")),
             Comparison("1", f"video WAM vs VLA, N={n}", Side(video, f"video_wam_n{n}"), vla(n)),
             Comparison("1", f"joint WAM vs its video_weight=0 ablation, N={n}", Side(joint, f"joint_wam_n{n}"),
                        Side(joint, f"joint_wam_no_video_n{n}"))]
  for n in (2, 5):  # 2. inverse dynamics helps when labels are scarce
    rows += [Comparison("2", f"VLA on demos + IDM pseudo-labels vs demos only, N={n}",
                        Side(idm, f"vla_pseudo_n{n}"), Side(idm, f"vla_n{n}")),
             Comparison("2", f"upper bound: VLA on demos + the pool's true (expert) labels vs demos only, N={n}",
                        Side(idm, f"vla_oracle_n{n}"), Side(idm, f"vla_n{n}")),
             Comparison("2", f"IDM pseudo-labels vs the pool's true labels, N={n}",
                        Side(idm, f"vla_pseudo_n{n}"), Side(idm, f"vla_oracle_n{n}")),
             Comparison("2", f"VLA on demos + pseudo-labels of an IDM that also reads the state at t+k vs demos "
                        f"only, N={n}", Side(idm, f"vla_state_pseudo_n{n}"), Side(idm, f"vla_n{n}")),
             Comparison("2", f"state-reading IDM pseudo-labels vs the pool's true labels, N={n}",
                        Side(idm, f"vla_state_pseudo_n{n}"), Side(idm, f"vla_oracle_n{n}")),
             Comparison("2", f"plan with video, act with IDM vs VLA, N={n}", Side(idm, f"plan_idm_n{n}"),
                        Side(idm, f"vla_n{n}")),
             Comparison("2", f"latent-action pretraining + fine-tune vs VLA, N={n}",
                        Side(latent, f"latent_finetune_n{n}"), vla(n)),
             Comparison("2", f"latent actions, copy-normalized decoder, + fine-tune vs VLA, N={n}",
                        Side(latent, f"latent_finetune_cn_n{n}"), vla(n)),
             Comparison("2", f"latent actions, k=8 + copy-normalized decoder, + fine-tune vs VLA, N={n}",
                        Side(latent, f"latent_finetune_k8cn_n{n}"), vla(n))]
  for n in (2, 5, 20):  # 3. joint prediction keeps long-horizon behaviour consistent (+ consistency())
    rows += [Comparison("3", f"joint WAM vs VLA, N={n}", Side(joint, f"joint_wam_n{n}"), vla(n)),
             Comparison("3", f"joint WAM vs VLA, long tasks, N={n}", Side(joint, f"joint_wam_n{n}"), vla(n),
                        tasks=LONG_TASKS),
             Comparison("3", f"joint WAM vs its video_weight=0 ablation, long tasks, N={n}",
                        Side(joint, f"joint_wam_n{n}"), Side(joint, f"joint_wam_no_video_n{n}"), tasks=LONG_TASKS)]
    for w in VNORM_WEIGHTS:  # the joint WAM whose video loss reaches the trunk (BUILD_NOTES, session 19)
      heard = Side(joint, f"joint_wam_vnorm{w}_n{n}")
      rows += [Comparison("3", f"joint WAM, video heard (x{w}), vs its video_weight=0 ablation, N={n}", heard,
                          Side(joint, f"joint_wam_no_video_n{n}")),
               Comparison("3", f"joint WAM, video heard (x{w}), vs VLA, N={n}", heard, vla(n)),
               Comparison("3", f"joint WAM, video heard (x{w}), vs VLA, long tasks, N={n}", heard, vla(n),
                          tasks=LONG_TASKS)]
  for n in (2, 5, 20):  # the joint WAM with the VLA preset's instruction recipe (vla_baseline.POOLED_INSTRUCTION)
    rows += [Comparison("3", f"joint WAM with the pooled instruction vs VLA, N={n}",
                        Side(joint, f"joint_wam_pooled_n{n}"), vla(n)),
             Comparison("3", f"joint WAM with the pooled instruction vs the joint WAM with byte tokens, N={n}",
                        Side(joint, f"joint_wam_pooled_n{n}"), Side(joint, f"joint_wam_n{n}"))]
  for eval_name in ("", "paraphrase"):  # 4. hybrids balance instruction following and dynamics
    what = "unseen paraphrases" if eval_name else "training instructions"
    rows += [Comparison("4", f"hybrid vs VLA, {what}", Side(instr, "hybrid_n20"), Side(instr, "vla_l1_n20"),
                        eval_name=eval_name),
             Comparison("4", f"hybrid vs hybrid without the LM/VLM ladder, {what}", Side(instr, "hybrid_n20"),
                        Side(instr, "hybrid_scratch_n20"), eval_name=eval_name)]
  # The families' runs were evaluated with the training instructions only (the sweep has no paraphrase
  # evaluation, and its checkpoints went with their machines): the best family is compared on those.
  rows.append(Comparison("4", f"hybrid vs the best world-action family ({best}, families), training instructions",
                         Side(instr, "hybrid_n20"), Side(fam, best)))
  for cell in FAMILY_CELLS:  # the families side by side at N=20
    rows.append(Comparison("all", f"{cell} vs VLA, N=20", Side(fam, cell), vla(20)))
  # The strongest reference at N=20: the protocol's plain CNN at its preset (baseline_quality, session 28).
  cnn = Side(workdir("baseline_quality"), CNN_CELL)
  rows.append(Comparison("all", "plain CNN (cnn_bc.py preset) vs VLA, N=20", cnn, vla(20)))
  rows += [Comparison("all", f"{cell} vs the plain CNN, N=20", Side(fam, cell), cnn) for cell in FAMILY_CELLS]
  # The VLA preset since session 30 reads the instruction as one pooled token (vla_pooled_n*, 72% at N=20):
  # the strongest VLA. The families still read it as 32 byte tokens, as vla_l1_n* does, so every row
  # against vla_l1_n* above is the like-for-like one; each is repeated against the pooled VLA (but the
  # joint WAM's video-heard variants, one of nine run).
  pooled = lambda side: Side(base, side.cell.replace("vla_l1_", "vla_pooled_"))
  rows += [dataclasses.replace(r, name=r.name.replace("vs VLA", "vs the pooled-instruction VLA"),
                               reference=pooled(r.reference))
           for r in list(rows) if r.reference.sweep == base and r.reference.cell.startswith("vla_l1_")
           and "video heard" not in r.name]
  rows += [Comparison("all", f"pooled-instruction VLA (the preset) vs VLA with byte tokens, N={n}",
                      pooled(vla(n)), vla(n)) for n in (2, 5, 20)]
  # The joint_wam_data_efficiency N=20 cells are the families' joint WAM cells, the same runs (their
  # records linked: sweep.link_identical_records), so the rows above read all three seeds. Each half of
  # the pooled-instruction recipe alone is a families cell only (session 31).
  fam_joint = Side(fam, "joint_wam")
  rows += [Comparison("all", f"joint WAM with {what} alone vs the joint WAM, N=20 (families)", Side(fam, cell),
                      fam_joint)
           for what, cell in (("the pooled instruction", "joint_wam_text_pool"), ("lr 1e-3", "joint_wam_lr1e-3"))]
  rows.append(Comparison("all", "video WAM with the pooled instruction vs the video WAM with byte tokens, N=20 "
                         "(families)", Side(fam, "video_wam_pooled"), Side(fam, "video_wam")))
  return rows


def main(argv):
  del argv
  records_root = _RECORDS.value or None
  rows = compare.write(_ROOT.value, comparisons(best_family(_ROOT.value, records_root)), _OUT.value or None,
                       consistency(), records_root)
  print(compare.markdown(rows, _ROOT.value))


if __name__ == "__main__":
  app.run(main)
