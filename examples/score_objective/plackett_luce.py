"""Your own sequence-score objective: a Plackett-Luce listwise loss over rewards, trained exactly by every engine.

The objective is only the function below: a loss of one score per completion (here the length-normalised
log-likelihood, ``score="mean_logp"``) and the rewards of its group. Registering it makes it an ``--objective``
for the native trainer and the TRL plug-in (and the verl plug-in, when this module is imported in every process);
its gradient coefficients come from autograd, so micro-batches, token budgets and data-parallel ranks stay exact.

    python examples/score_objective/plackett_luce.py            # native trainer, tiny model, addition task
    python examples/score_objective/plackett_luce.py trl 20     # the same through TRL (ConSPOTrainer)
"""

import sys

import torch

from conspo.score_objectives import ScoreObjective, register_score_objective


def plackett_luce_loss(scores, rewards, present, group_size, *, tau: float = 1.0):
    """-log P(the group's completions are drawn best reward first), ties drawn as one tier (Plackett-Luce):
    L_g = sum_{k: r_k above the group's lowest reward} [ log sum_{j: r_j <= r_k} exp(s_j/tau) - s_k/tau ],
    averaged over the groups whose rewards differ. Rows not ``present`` (empty completions) take no part."""
    s, r, p = (scores / tau).view(-1, group_size), rewards.view(-1, group_size), present.view(-1, group_size)
    lowest = torch.where(p, r, torch.full_like(r, float("inf"))).min(1, keepdim=True).values
    picked = p & (r > lowest)  # completion k is drawn before some other one
    rest = (r[:, None, :] <= r[:, :, None]) & p[:, None, :] | ~picked[:, :, None]  # (group, k, j): j still in the draw
    log_rest = torch.logsumexp(torch.where(rest, s[:, None, :], torch.full_like(rest, -torch.inf, dtype=s.dtype)), 2)
    terms = torch.where(picked, log_rest - s, torch.zeros_like(s))
    loss = terms.sum() / picked.any(1).sum().clamp(min=1)
    return loss, {
        "objective/loss": float(loss.detach()),
        "plackett_luce/group_frac": float(picked.any(1).float().mean()),
    }


PLACKETT_LUCE = register_score_objective(
    ScoreObjective(name="plackett_luce", loss=plackett_luce_loss, score="mean_logp")
)

if __name__ == "__main__":
    from conspo.cli import run_training
    from conspo.config import TrainConfig

    engine, steps = (sys.argv[1] if len(sys.argv) > 1 else "native"), int(sys.argv[2]) if len(sys.argv) > 2 else 50
    print(run_training(TrainConfig(objective="plackett_luce", engine=engine, steps=steps, threads=1)))
