#!/usr/bin/env bash
# The protocol's runs still to do, in the order that decides the claims first; resumable on any machine.
#
#   bash scripts/protocol_queue.sh                 # from a frozen worktree (below): runs, reports, repeats
#   QUEUE_ONLY="video_wam_data_efficiency" bash scripts/protocol_queue.sh   # one sweep's steps only
#   DEADLINE=21:15 bash scripts/protocol_queue.sh   # or DEADLINE=+150m: start no run that would end later
#
# Each step is one `experiments/ablations.py` call (cells x seeds); the harness skips runs finished
# here and runs whose record is committed (finished on another machine: wam_jax/ablations/records.py),
# retraining a pretraining stage only when a run to do needs its checkpoint. After each step the
# sweep's report (and the new records) is written into REPO's experiments/results/<sweep>/: commit it.
# A session ends when the machine does: what finished is in the records, what did not reruns.
# DEADLINE (the machine's end, less the time to commit): each run starts only if its estimate (from
# committed records of the same cell: their wall time on the machines that ran them) says it ends
# before then, with the longest run that restores it; a pretraining stage whose policies cannot
# finish is not started. The ladder (outside the harness) is priced at LADDER_MINUTES (default 45:
# text and image-text preparation, lm.py:tiny ~9 min and vlm.py:tiny 10-25 min, measured on busy cores).
#
# Run it from a frozen checkout so editing REPO meanwhile cannot mix two versions into one run:
#   git worktree add /tmp/wt_queue HEAD && cd /tmp/wt_queue && REPO=/path/to/repo bash scripts/protocol_queue.sh
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
REPO=${REPO:-$HERE}
PY=${PY:-$REPO/.venv/bin/python}
export JAX_PLATFORMS=cpu WAM_DATA_DIR=${WAM_DATA_DIR:-$REPO/wam_data}
SWEEPS=${SWEEPS:-$REPO/runs/sweeps}
cd "$HERE"
# Runs named by relative paths (the ladder's runs/lm_tiny and runs/vlm_tiny, which the hybrid cells
# restore as 'runs/vlm_tiny' from the sweep's working directory) land in REPO's runs/, which outlives
# the frozen worktree (removing the worktree removes the link, not REPO's runs).
if [[ "$HERE" != "$REPO" && ! -e "$HERE/runs" ]]; then ln -s "$REPO/runs" "$HERE/runs"; fi
if [[ -n "${DEADLINE:-}" ]]; then  # resolved once to a date and time for every step (an 'HH:MM'
  # resolved per step rolls over to tomorrow for the steps after it); a bad one stops the queue here
  DEADLINE=$("$PY" -c "import sys, time; sys.path.insert(0, '.'); from experiments.ablations import parse_deadline as p; \
print(time.strftime('%Y-%m-%dT%H:%M', time.localtime(p(sys.argv[1]))))" "$DEADLINE") || exit 2
  echo "[queue] deadline $DEADLINE"
fi

# sweep | seeds | cells ('' = all): claim 1's seeds first, then claim 3's joint WAM whose video loss
# is heard (N=2, seed 0), then seed 0 of every claim that has none (claim 3's N=5 joint rows and its
# heard-video weights 3 and 10, claim 2's pseudo-labels, the ladder and claim 4), then claim 2's latent
# actions with the copy-normalized decoder, then seeds 1-2 of the rest; weight 100 at N=5/20 last (at
# N=2 it lost 24 points to the actions-only twin). One step per sweep and seed set: the harness takes
# a step's runs in cell order (N=2, 5, 20) and keeps both slots busy to the last run, where a step per
# N left one idle. A run that another sweep recorded (the VLA rows every sweep repeats, the families'
# N=20 joint and video WAMs) is recorded for this one too before it starts
# (sweep.link_identical_records): not trained again.
QUEUE=(
  "video_wam_data_efficiency|1,2|"
  "joint_wam_data_efficiency|0|joint_wam_vnorm10_n2,joint_wam_vnorm100_n2"
  "joint_wam_data_efficiency|0|joint_wam_n5,joint_wam_no_video_n5"
  "joint_wam_data_efficiency|0|joint_wam_vnorm3_n2,joint_wam_vnorm10_n5,joint_wam_vnorm3_n5,joint_wam_vnorm10_n20,joint_wam_vnorm3_n20"
  "idm_claim2|0|"
  "LADDER"
  "instruction_following|0|"
  "latent_actions|0|latent_action_k8cn,latent_policy_k8cn,latent_finetune_k8cn_n2,latent_finetune_k8cn_n5"
  "latent_actions|0|latent_action_cn,latent_policy_cn,latent_finetune_cn_n2,latent_finetune_cn_n5"
  "families|1,2|"
  "joint_wam_data_efficiency|1,2|"
  "idm_claim2|1,2|"
  "latent_actions|1,2|"
  "instruction_following|1,2|"
  "baseline_data_efficiency|1,2|"
  "joint_wam_data_efficiency|0|joint_wam_vnorm100_n5,joint_wam_vnorm100_n20"
)

version() { "$PY" -c "import sys; sys.path.insert(0, '.'); from wam_jax.ablations import sweep; print(sweep.load_sweep('$1').version)"; }

for step in "${QUEUE[@]}"; do
  IFS='|' read -r sweep seeds cells <<< "$step"
  if [[ -n "${QUEUE_ONLY:-}" && " ${QUEUE_ONLY} " != *" ${sweep} "* ]]; then continue; fi
  if [[ "$sweep" == "LADDER" ]]; then  # family 4's stages 1-2 (outside the harness: the hybrid restores runs/vlm_tiny)
    [[ -d "$HERE/runs/vlm_tiny/checkpoints" ]] && continue
    if [[ -n "${DEADLINE:-}" ]] && (( $(date +%s) + ${LADDER_MINUTES:-45} * 60 > $(date -d "$DEADLINE" +%s) )); then
      echo "[queue] ladder not started: its ~${LADDER_MINUTES:-45} min (LADDER_MINUTES) would end after $DEADLINE"; continue
    fi
    # the Bridge sample beside REPO (the script's default looks beside this worktree, which is REPO only
    # when not frozen)
    "$PY" scripts/prepare_text.py \
      && "$PY" scripts/prepare_image_text.py --bridge_dir="$REPO/../shared/data/bridge_debug/bridge_dataset/1.0.0" \
      && "$PY" experiments/train.py --config=experiments/configs/lm.py:tiny --workdir=runs/lm_tiny \
      && "$PY" experiments/train.py --config=experiments/configs/vlm.py:tiny --workdir=runs/vlm_tiny
    continue
  fi
  workdir="$SWEEPS/${sweep}_v$(version "$sweep")"
  echo "[queue] $(date +%H:%M) $sweep seeds $seeds cells ${cells:-all} -> $workdir"
  "$PY" experiments/ablations.py --sweep="$sweep" --workdir="$workdir" --seeds="$seeds" ${cells:+--cells=$cells} \
    ${DEADLINE:+--deadline=$DEADLINE}
  "$PY" "$REPO/experiments/report.py" "$workdir" --out="$REPO/experiments/results/$sweep" > /dev/null \
    && echo "[queue] $(date +%H:%M) report + records -> $REPO/experiments/results/$sweep (commit them)"
done
