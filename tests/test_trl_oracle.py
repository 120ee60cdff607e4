"""Oracle: our GRPO-family losses equal TRL's own GRPOTrainer loss on identical tensors.

We call TRL 1.16's real ``GRPOTrainer._compute_loss`` (the code that runs in TRL
training) with a minimal stand-in for the trainer object, whose model forward returns
the per-token log-probs we choose. Advantages are built the way TRL's
``_generate_and_score_completions`` builds them (group mean, TRL's own ``nanstd``,
+1e-4; ``scale_rewards="none"`` for Dr.GRPO).
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from helpers import make_batch

from conspo import objectives as obj
from conspo import reward_shaping as shaping

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from trl.trainer.utils import nanstd  # noqa: E402


class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(token_logps, old, mask, rewards, G, *, loss_type, eps_low, eps_high, level="token", scale=True):
    B, T = token_logps.shape
    grouped = rewards.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    std = nanstd(grouped, dim=1).repeat_interleave(G)
    advantages = rewards - mean
    if scale:
        advantages = advantages / (std + 1e-4)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (token_logps, torch.zeros_like(token_logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=0.0,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, fake._metrics["train"]


CASES = [
    ("grpo", obj.grpo_loss, dict(loss_type="grpo", eps_low=0.2, eps_high=0.2)),
    ("dr_grpo", obj.dr_grpo_loss, dict(loss_type="dr_grpo", eps_low=0.2, eps_high=0.2, scale=False)),
    ("dapo", obj.dapo_loss, dict(loss_type="dapo", eps_low=0.2, eps_high=0.28)),
    ("gspo", obj.gspo_loss, dict(loss_type="grpo", eps_low=3e-4, eps_high=4e-4, level="sequence")),
]


@pytest.mark.parametrize("name,ours,trl_kwargs", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("G,binary,zero_rows", [(2, True, 0), (4, True, 1), (8, False, 0), (3, False, 2)])
def test_matches_trl_grpo_trainer_loss(name, ours, trl_kwargs, G, binary, zero_rows):
    logps, old, mask, rewards = make_batch(6, G, 9, seed=G + 17 * zero_rows, binary=binary, zero_length_rows=zero_rows)
    if name == "gspo":
        old = logps + 2e-3 * torch.randn(logps.shape, dtype=logps.dtype, generator=torch.Generator().manual_seed(3))
    ours_x = logps.clone().requires_grad_(True)
    trl_x = logps.clone().requires_grad_(True)
    loss, metrics = ours(ours_x, old, mask, rewards, G)
    trl_loss, trl_metrics = _trl_loss(trl_x, old, mask.to(logps.dtype), rewards, G, **trl_kwargs)
    # TRL's nanstd computes Bessel's correction count/(count-1) in float32 even for float64
    # rewards (an int tensor divided), so the advantages differ from ours by ~2e-8 relative.
    torch.testing.assert_close(loss, trl_loss, rtol=1e-7, atol=1e-12)
    loss.backward()
    trl_loss.backward()
    torch.testing.assert_close(ours_x.grad, trl_x.grad, rtol=1e-7, atol=1e-12)
    assert float(loss.detach()) != 0.0  # the comparison is not vacuous
    if zero_rows == 0:  # TRL averages clip flags over the same tokens (or sequences)
        assert metrics["clip/region_frac"] == pytest.approx(trl_metrics["clip_ratio/region_mean"][0])


@pytest.mark.parametrize("name,ours,trl_kwargs", CASES, ids=[c[0] for c in CASES])
def test_mask_truncated_matches_trls_mask_truncated_completions(name, ours, trl_kwargs):
    """Our truncated-row mask vs TRL's: TRL 1.16 ``_generate_and_score_completions`` zeroes the completion mask of
    truncated rows (``completion_mask * (~is_truncated).unsqueeze(1).int()``) after computing the advantages from all
    rewards and before counting ``num_items_in_batch``; ``_trl_loss`` does both in that order."""
    G = 4
    logps, old, mask, rewards = make_batch(6, G, 9, seed=29)
    if name == "gspo":
        old = logps + 2e-3 * torch.randn(logps.shape, dtype=logps.dtype, generator=torch.Generator().manual_seed(3))
    truncated = torch.zeros(len(rewards), dtype=torch.bool)
    truncated[[1, 4, 5, 6, 7, 13, 22]] = True  # group 1 entirely
    trl_mask = mask.to(logps.dtype) * (~truncated).unsqueeze(1).int()
    ours_x = logps.clone().requires_grad_(True)
    trl_x = logps.clone().requires_grad_(True)
    loss, _ = ours(ours_x, old, shaping.mask_truncated_rows(mask, truncated), rewards, G)
    trl_loss, _ = _trl_loss(trl_x, old, trl_mask, rewards, G, **trl_kwargs)
    torch.testing.assert_close(loss, trl_loss, rtol=1e-7, atol=1e-12)
    loss.backward()
    trl_loss.backward()
    torch.testing.assert_close(ours_x.grad, trl_x.grad, rtol=1e-7, atol=1e-12)
    assert torch.count_nonzero(ours_x.grad[truncated]) == 0 and torch.count_nonzero(ours_x.grad) > 0
