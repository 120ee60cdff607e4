#!/usr/bin/env bash
# Learning efficiency on the chain task (issue 12): a learning-rate sweep per objective (2 seeds),
# then each objective at its own best rate and ConSPO's ablations (3 seeds). Every run starts from
# the same cached chain base and has the same budget (STEPS optimizer steps of 8 prompts x G=8).
# Two lanes run side by side with one torch thread each (a 2-core machine), each pulling the next
# run from one queue file; a phase started while the lanes run only adds its runs to their queue.
#
#   bench/chain_comparison.sh sweep                                     # objectives x rates x seeds 0 1
#   BEST="conspo=1e-6 grpo=1e-5 ..." bench/chain_comparison.sh final     # seeds 2-4 at each best rate + ablations
#   .venv/bin/python bench/summarize_compare.py runs/chain/sweep          # the sweep's table
#
# The final phase runs every objective at its own best rate with fresh seeds (FINAL_SEEDS, not the seeds the
# rate was chosen on) and every ConSPO ablation at ConSPO's rate with the same seeds, so each
# ablation is paired with the ConSPO row seed by seed (same prompts and first samples).
# Settings (environment): STEPS (100), EVAL_EVERY (25), LRS, OBJECTIVES, OUT (runs/chain), ABLATIONS
# (ConSPO's option sets, separated by '|'; empty: none), FINAL_SEEDS ("2 3 4"), ABLATION_SEEDS
# (FINAL_SEEDS), BASE_OPTIONS (options of the chain base's warm-up for every run; empty: the defaults;
# the runs of docs/experiments/chain.md section 2: "--sft-lr 2e-3 --sft-steps 1500 --sft-stop-accuracy 0.5"), and
# DAPO: the options that make DAPO complete (dynamic sampling, overlong filtering and soft overlong
# punishment with its buffer just past the longest correct chain: 5 of the task's 70 tokens).
# Cost: about 1.5 minutes per 100-step run on one thread, two at a time: the sweep (40 runs) about half
# an hour, the final phase (36 runs) about half an hour on a 2-core machine. The runs of 2026-11-29
# (docs/experiments/chain.md section 2): `sweep`, then `final` with each objective's best rate from the sweep.
# The runs on the present chain default base (docs/experiments/chain.md section 3): OUT=runs/chain2 STEPS=300 EVAL_EVERY=50,
# `sweep` with LRS="1e-6 3e-6 1e-5", then `final` with FINAL_SEEDS=2 ABLATION_SEEDS="0 1 2" and two ablations.
# The sequence-score comparison (ConSPO, DisCO, REAL, GRPO, Dr.GRPO; NOT RUN YET, docs/experiments/chain.md
# section 4): a 3-rate sweep on seeds 0 1, then 3 fresh seeds at each objective's own best rate, no ablations:
#   OUT=runs/chain_score STEPS=300 EVAL_EVERY=50 LRS="1e-6 3e-6 1e-5" OBJECTIVES="conspo disco real grpo dr_grpo" \
#     ABLATIONS= bench/chain_comparison.sh sweep
#   .venv/bin/python bench/summarize_compare.py runs/chain_score/sweep        # pick each objective's best rate
#   OUT=runs/chain_score STEPS=300 EVAL_EVERY=50 ABLATIONS= FINAL_SEEDS="2 3 4" \
#     BEST="conspo=R disco=R real=R grpo=R dr_grpo=R" bench/chain_comparison.sh final
#   .venv/bin/python -m conspo compare --from-runs runs/chain_score/final --reference conspo   # paired 95% CIs
# (OBJECTIVES="... disco_ratio" adds DisCO's likelihood-ratio variant.) About 30 sweep runs and 15 final runs
# of ~4.5 minutes each on one thread, two lanes: about 70 + 35 minutes on an otherwise idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/chain}
STEPS=${STEPS:-100}
EVAL_EVERY=${EVAL_EVERY:-25}
LRS=${LRS:-"1e-6 3e-6 1e-5 3e-5"}
OBJECTIVES=${OBJECTIVES:-"conspo grpo dr_grpo dapo gspo"}
DAPO=${DAPO:-"--dynamic-sampling --mask-truncated --overlong-buffer 5"}
FINAL_SEEDS=${FINAL_SEEDS:-"2 3 4"}
ABLATION_SEEDS=${ABLATION_SEEDS:-$FINAL_SEEDS}
ABLATIONS=${ABLATIONS-"--score sum|--tau 0.1|--tau 1.0|--margin-schedule linear --margin-end 0.1|--margin-schedule linear --margin-end 0.3|--margin-schedule cosine --margin-end 0.3|--margin-schedule step --margin-end 0.3"}
read -r -a base_options <<< "${BASE_OPTIONS:-}"  # e.g. the first chain default's warm-up (docs/experiments/chain.md section 2)
common=(--task chain --steps "$STEPS" --eval-every "$EVAL_EVERY" --threads 1 --no-progress "${base_options[@]}")
mkdir -p "$OUT"
queue=$OUT/queue

enqueue() {  # one run per line: objective, seed, lr, output folder, extra options
  local objective=$1 seed=$2 lr=$3 folder=$4; shift 4
  local extra="$*"
  [[ $objective == dapo ]] && extra="$DAPO $extra"
  echo "compare --objectives $objective --seed $seed --seeds 1 --lr $lr $extra --output-dir $folder" |
    flock "$queue.lock" sh -c 'cat >> "$1"' _ "$queue"
}
next_run() {  # pop the first line of the queue (under the lock: two lanes share it)
  flock "$queue.lock" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue"
}

phase=${1:?usage: chain_comparison.sh sweep|final}
if [[ $phase == sweep ]]; then
  for objective in $OBJECTIVES; do  # objective by objective: ConSPO's rate is known first
    for lr in $LRS; do
      for seed in 0 1; do enqueue "$objective" $seed "$lr" "$OUT/sweep/$objective-lr$lr-seed$seed"; done
    done
  done
elif [[ $phase == final ]]; then
  : "${BEST:?set BEST to objective=lr pairs chosen from the sweep, e.g. BEST=\"conspo=3e-5 grpo=1e-4\"}"
  for pair in $BEST; do
    objective=${pair%%=*} lr=${pair#*=}
    for seed in $FINAL_SEEDS; do enqueue "$objective" $seed "$lr" "$OUT/final/$objective-lr$lr-seed$seed"; done
  done
  conspo_lr=${BEST#*conspo=}; conspo_lr=${conspo_lr%% *}
  IFS='|' read -r -a ablations <<< "$ABLATIONS"
  for ablation in "${ablations[@]}"; do
    name=$(echo "$ablation" | tr -d '-' | tr ' ' '_')
    for seed in $ABLATION_SEEDS; do enqueue conspo $seed "$conspo_lr" "$OUT/final/abl_$name-seed$seed" "$ablation"; done
  done
else
  echo "unknown phase $phase (sweep | final)" >&2; exit 2
fi

lane() {
  while run=$(next_run) && [[ -n $run ]]; do
    echo "[$(date +%T)] lane $1: conspo $run"
    # shellcheck disable=SC2086
    $PY -m conspo $run "${common[@]}" || echo "[$(date +%T)] lane $1: FAILED: $run"
  done
}
exec 9> "$OUT/lanes.lock"
if ! flock -n 9; then
  echo "lanes already running: $phase runs added to $queue"; exit 0
fi
# build (or find) the cached base once, so that the two lanes do not both warm it up
$PY -m conspo train --task chain --steps 1 --threads 1 --no-progress "${base_options[@]}" --overwrite --output-dir "$OUT/base" > "$OUT/base.log" 2>&1
lane a >> "$OUT/lanes.log" 2>&1 &
lane b >> "$OUT/lanes.log" 2>&1 &
wait
echo "[$(date +%T)] queue empty"
