"""Experiment, not a feature: `conspo train --task chain` with RL rewarding only the exact worked chain.

The chain task verifies the final answer only, so a right total reached after leaving the chain scores
1 and a faithful continuation of a slip scores 0 (docs/experiments/chain.md). This asks what changes
when that incentive is gone: during RL a completion scores 1 only when it is the worked chain itself;
held-out accuracy (the problems of the held-out split) is still the final-answer check, so the runs
compare with ordinary ones. The swap is done by wrapping ChainTask.score in this process only.

    .venv/bin/python bench/chain_exact_reward.py train --task chain --lr 3e-5 --steps 200 --eval-every 25 \\
        --seed 0 --threads 1 --output-dir runs/chain/exact-3e-5
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conspo.cli import main  # noqa: E402
from conspo.tasks.chain import ChainTask  # noqa: E402

final_answer_score = ChainTask.score


def exact_chain_score(self, problems, completions):
    """Held-out batches: the usual final-answer reward. Training batches: 1 for the worked chain only.
    (The task's logged metrics, exact_chain_frac and right_answer_wrong_chain_frac, are unchanged.)"""
    rewards = final_answer_score(self, problems, completions)
    if not hasattr(self, "heldout_ids"):  # once per task, not per scored batch
        self.heldout_ids = {p.id for p in self.heldout_problems()}
    if all(p.id in self.heldout_ids for p in problems):
        return rewards
    return [1.0 if c.strip() == self.solution(p) else 0.0 for p, c in zip(problems, completions, strict=True)]


if __name__ == "__main__":
    ChainTask.score = exact_chain_score
    sys.exit(main(sys.argv[1:]))
