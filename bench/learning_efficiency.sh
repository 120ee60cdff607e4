#!/usr/bin/env bash
# Learning efficiency on the default task: every objective with 3 seeds at the default budget
# (1200 optimizer steps), then ConSPO ablations with 2 seeds. Two lanes run side by side with one
# torch thread each (a 2-core machine); results: runs/bench/*/compare.json, summarised by
# bench/summarize_compare.py. Takes about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench}
common=(--threads 1 --no-progress)
lane_a() {
  $PY -m conspo compare --objectives conspo,grpo,dapo --seeds 3 "${common[@]}" --output-dir "$OUT/objectives_a"
  $PY -m conspo compare --objectives conspo --seeds 2 "${common[@]}" --margin-schedule linear --margin-end 0.2 --output-dir "$OUT/abl_margin_linear"
  $PY -m conspo compare --objectives conspo --seeds 2 "${common[@]}" --tau 0.1 --output-dir "$OUT/abl_tau_0.1"
}
lane_b() {
  $PY -m conspo compare --objectives dr_grpo,gspo --seeds 3 "${common[@]}" --output-dir "$OUT/objectives_b"
  $PY -m conspo compare --objectives conspo --seeds 2 "${common[@]}" --margin-schedule cosine --margin-end 0.2 --output-dir "$OUT/abl_margin_cosine"
  $PY -m conspo compare --objectives conspo --seeds 2 "${common[@]}" --tau 1.0 --output-dir "$OUT/abl_tau_1.0"
  $PY -m conspo compare --objectives conspo --seeds 2 "${common[@]}" --score sum --output-dir "$OUT/abl_score_sum"
}
lane_a > "$OUT.lane_a.log" 2>&1 &
lane_b > "$OUT.lane_b.log" 2>&1 &
wait
$PY bench/summarize_compare.py "$OUT"
