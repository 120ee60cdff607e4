#!/usr/bin/env bash
# ConSPO or the matching GRPO run on verl 0.9.x: Qwen2.5-Math-1.5B on MATH, vLLM rollouts.
#
#   bash examples/verl/run_math.sh conspo            # or: grpo
#   bash examples/verl/run_math.sh conspo trainer.total_training_steps=50   # extra Hydra overrides
#
# Environment: MODEL (default Qwen/Qwen2.5-Math-1.5B), DATA (default ~/data/conspo_math: parquet
# files written by prepare_math.py on first use), N_GPUS (default 8), CONSPO_DATA_DIR (the shared
# JSONL sets; default: conspo's own lookup). Needs verl 0.9.x with vLLM on GPUs, and conspo:
#   pip install 'verl[vllm]==0.9.1' && pip install -e '.[verl]'
set -euo pipefail

ALGO=${1:?usage: run_math.sh conspo|grpo [hydra overrides...]}
shift
case "$ALGO" in conspo|grpo) ;; *) echo "unknown algorithm '$ALGO' (conspo or grpo)" >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
DATA=${DATA:-$HOME/data/conspo_math}
N_GPUS=${N_GPUS:-8}

if [[ ! -f "$DATA/train.parquet" ]]; then
    python "$HERE/prepare_math.py" --out "$DATA" ${CONSPO_DATA_DIR:+--data-dir "$CONSPO_DATA_DIR"}
fi

overrides() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$1"; }
mapfile -t ARGS < <(overrides "$HERE/common.overrides"; overrides "$HERE/$ALGO.overrides")

if [[ "$ALGO" == conspo ]]; then
    # verl imports the modules named here in every process that imports verl (driver, Ray workers
    # on this node); conspo.overrides also passes it to Ray's runtime_env for other nodes.
    export VERL_USE_EXTERNAL_MODULES=conspo.integrations.verl
    python -c "import conspo.integrations.verl as p, verl; print('conspo plug-in OK for verl', verl.__version__)"
fi

exec python -m verl.trainer.main_ppo \
    "${ARGS[@]}" \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/math500.parquet" \
    actor_rollout_ref.model.path="$MODEL" \
    reward.custom_reward_function.path="$HERE/reward.py" \
    trainer.n_gpus_per_node="$N_GPUS" \
    "$@"
