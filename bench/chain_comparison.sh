#!/usr/bin/env bash
# Learning efficiency on the chain task (issue 12): a learning-rate sweep per objective (2 seeds),
# then the objectives at their own best rate and ConSPO's ablations (3 seeds). Every run starts
# from the same cached chain base and has the same budget. Two lanes run side by side with one
# torch thread each (a 2-core machine), each pulling the next job from one shared queue.
#
#   bench/chain_comparison.sh sweep                 # phase 1: objectives x learning rates x 2 seeds
#   BEST="conspo=3e-5 grpo=1e-4 ..." bench/chain_comparison.sh final   # phase 2, rates from phase 1
#   .venv/bin/python bench/summarize_compare.py runs/chain/sweep     # tables (and --plot for curves)
#
# Settings: LRS, OBJECTIVES, SEEDS_SWEEP (2), SEEDS_FINAL (3), OUT (runs/chain); the budget and base
# are --task chain's defaults (conspo/config.py TASK_DEFAULTS: 200 steps of 8 prompts x G=8).
# Cost: about 8-10 minutes per run on one thread beside another run, so the sweep (5 objectives x
# 3 rates x 2 seeds = 30 runs) takes about 2.5 hours and the final phase (5 x 3 + 7 ablations x 3)
# about 3 hours on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/chain}
LRS=${LRS:-"1e-5 3e-5 1e-4"}
OBJECTIVES=${OBJECTIVES:-"conspo grpo dr_grpo dapo gspo"}
common=(--task chain --threads 1 --no-progress)
queue=$(mktemp)
trap 'rm -f "$queue" "$queue.lock"' EXIT

phase=${1:?usage: chain_comparison.sh sweep|final}
if [[ $phase == sweep ]]; then
  for lr in $LRS; do
    for objective in $OBJECTIVES; do
      echo "compare --objectives $objective --seeds ${SEEDS_SWEEP:-2} --lr $lr --output-dir $OUT/sweep/$objective-lr$lr" >> "$queue"
    done
  done
elif [[ $phase == final ]]; then
  : "${BEST:?set BEST to objective=lr pairs chosen from the sweep, e.g. BEST=\"conspo=3e-5 grpo=1e-4\"}"
  for pair in $BEST; do
    objective=${pair%%=*} lr=${pair#*=}
    echo "compare --objectives $objective --seeds ${SEEDS_FINAL:-3} --lr $lr --output-dir $OUT/final/objectives-$objective" >> "$queue"
  done
  lr=${BEST#*conspo=}; lr=${lr%% *}
  for ablation in "--score sum" "--tau 0.1" "--tau 1.0" \
                  "--margin-schedule linear --margin-end 0.1" "--margin-schedule linear --margin-end 0.3" \
                  "--margin-schedule cosine --margin-end 0.3" "--margin-schedule step --margin-end 0.3"; do
    name=$(echo "$ablation" | tr -d '-' | tr ' ' '_')
    echo "compare --objectives conspo --seeds ${SEEDS_FINAL:-3} --lr $lr $ablation --output-dir $OUT/final/abl_$name" >> "$queue"
  done
else
  echo "unknown phase $phase (sweep | final)" >&2; exit 2
fi

next_job() {  # pop the first line of the queue (under a lock: two lanes share it)
  flock "$queue.lock" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue"
}
lane() {
  while job=$(next_job) && [[ -n $job ]]; do
    echo "[$(date +%T)] lane $1: conspo $job"
    # shellcheck disable=SC2086
    $PY -m conspo $job "${common[@]}" || echo "[$(date +%T)] lane $1: FAILED: $job"
  done
}
mkdir -p "$OUT"
# build (or find) the cached base once, so that the two lanes do not both warm it up
$PY -m conspo train --task chain --steps 1 --threads 2 --no-progress --overwrite --output-dir "$OUT/base" > "$OUT/base.log" 2>&1
lane a > "$OUT/$phase.lane_a.log" 2>&1 &
lane b > "$OUT/$phase.lane_b.log" 2>&1 &
wait
$PY bench/summarize_compare.py "$OUT/$phase"
