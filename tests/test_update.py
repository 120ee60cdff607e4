"""The native update (conspo/update.py): the micro-batched and token-budgeted gradient equals the full-batch
gradient of every objective, in float64, with old log-probs, a KL term and masked truncated rows."""

import pytest
import torch

from conspo.models import build_char_tokenizer, build_tiny_model
from conspo.objectives import OBJECTIVES, get_objective
from conspo.rollout import generate, token_logprobs
from conspo.update import accumulate_gradients


@pytest.fixture(scope="module")
def policy_and_batch():
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden=32, layers=2, ffn=64, heads=2).double()
    G = 4
    rollouts = generate(model, tokenizer, ["12+34=", "5+6=", "99+1=", "7+70="], num_generations=G, max_new_tokens=5)
    rewards = torch.tensor(
        [1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float64
    )  # group 1 and 3 have no contrast
    return model, rollouts, rewards, G


def _grad(model, **kwargs):
    model.zero_grad(set_to_none=True)
    metrics = accumulate_gradients(model, **kwargs)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), metrics


def _full_batch_grad(model, name, rollouts, rewards, G, options):
    """The reference: the objective's loss on the whole batch in one graph, autograd."""
    model.zero_grad(set_to_none=True)
    logps = token_logprobs(model, rollouts)
    loss, _ = get_objective(name).loss(logps, logps.detach(), rollouts.completion_mask, rewards, G, **options)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "micro,mode",
    [
        (0, "whole"),
        (4, "whole"),
        (8, "auto"),
        (3, "coefficients"),
        (5, "auto"),
        (16, "coefficients"),
        (1, "coefficients"),
    ],
)
def test_conspo_micro_batch_gradients_equal_full_batch(policy_and_batch, micro, mode):
    model, rollouts, rewards, G = policy_and_batch
    options = {
        "margin": 0.1,
        "tau": 0.3,
        "positive_threshold": 0.5,
        "positive_rule": "threshold",
        "score": "mean",
    }
    reference = _full_batch_grad(model, "conspo", rollouts, rewards, G, options)
    grad, metrics = _grad(
        model,
        objective_name="conspo",
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        micro_batch_size=micro,
        group_mode=mode,
    )
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert metrics["conspo/valid_group_frac"] == 0.5


@pytest.mark.parametrize(
    "split",
    [
        dict(micro_batch_size=4, group_mode="whole"),
        dict(micro_batch_size=3, group_mode="coefficients"),
        dict(max_tokens_per_micro_batch=40, group_mode="auto"),
    ],
)
def test_conspo_group_mean_rule_micro_batch_gradients_equal_full_batch(policy_and_batch, split):
    """positive_rule reaches every route of the native update (in-graph per micro-batch, normaliser, coefficients)."""
    model, rollouts, _, G = policy_and_batch
    rewards = torch.tensor(
        [0.2, 0.9, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.1, 0.8, 0.4, 0.6, 1, 1, 1, 1], dtype=torch.float64
    )  # graded; groups 1 and 3 all equal: no positive under group_mean
    options = {"margin": 0.1, "tau": 0.3, "positive_rule": "group_mean"}
    reference = _full_batch_grad(model, "conspo", rollouts, rewards, G, options)
    grad, metrics = _grad(
        model, objective_name="conspo", rollouts=rollouts, rewards=rewards, group_size=G, options=options, **split
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert metrics["conspo/valid_group_frac"] == 0.5
    threshold = _full_batch_grad(
        model, "conspo", rollouts, rewards, G, {"margin": 0.1, "tau": 0.3, "positive_rule": "threshold"}
    )
    assert (threshold - reference).abs().max() > 1e-6, "the rules pick different positives here (0.5 in group 0)"


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n != "conspo"])
@pytest.mark.parametrize("micro", [0, 4, 8])
def test_clipped_objectives_micro_batch_gradients_equal_full_batch(policy_and_batch, name, micro):
    model, rollouts, rewards, G = policy_and_batch
    options = {"max_completion_length": 5} if name == "dr_grpo" else {}
    reference = _full_batch_grad(model, name, rollouts, rewards, G, options)
    grad, _ = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        micro_batch_size=micro,
        group_mode="auto",
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)


def _full_batch_grad_with(model, name, rollouts, rewards, G, options, old, beta, ref_model):
    """Reference with old log-probs and a KL term, in one graph."""
    from conspo.objectives import kl_k3

    model.zero_grad(set_to_none=True)
    logps = token_logprobs(model, rollouts)
    mask = rollouts.completion_mask
    loss, _ = get_objective(name).loss(logps, old, mask, rewards, G, **options)
    if beta:
        with torch.no_grad():
            ref = token_logprobs(ref_model, rollouts)
        loss = loss + beta * kl_k3(logps, ref, mask)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("budget", [1, 40, 90, 10_000])
def test_token_budget_micro_batches_give_the_full_batch_gradient(policy_and_batch, name, budget):
    """Micro-batches by token budget, each trimmed to its own padding, with old log-probs and a KL term."""
    import copy

    model, rollouts, rewards, G = policy_and_batch
    options = {"conspo": {"margin": 0.1, "tau": 0.3}, "dr_grpo": {"max_completion_length": 5}}.get(name, {})
    gen = torch.Generator().manual_seed(1)
    old = token_logprobs(model, rollouts).detach() + 0.05 * torch.randn(
        rollouts.completion_mask.shape, generator=gen, dtype=torch.float64
    )
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    reference = _full_batch_grad_with(model, name, rollouts, rewards, G, options, old, 0.05, ref_model)
    grad, _ = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        max_tokens_per_micro_batch=budget,
        old_token_logps=old,
        beta=0.05,
        ref_logprobs=lambda part: token_logprobs(ref_model, part),
    )
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("split_groups", [False, True])
@pytest.mark.parametrize("budget", [1, 30, 64, 200])
def test_token_budget_batches_cover_every_row_once_within_budget(policy_and_batch, split_groups, budget):
    from conspo.update import row_lengths, token_budget_batches, without_padding

    _, rollouts, _, G = policy_and_batch
    batches = token_budget_batches(rollouts, G, budget, split_groups=split_groups)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(rollouts)))
    unit = 1 if split_groups else G
    for rows in batches:
        part = without_padding(rollouts.rows(rows))
        padded = len(rows) * (part.prompt_ids.shape[1] + part.completion_ids.shape[1])
        assert padded <= budget or len(rows) == unit, "only a unit too large on its own may exceed the budget"
        assert part.prompt_mask[:, 0].any() and part.completion_mask[:, -1].any(), "trimmed to its own padding"
        if not split_groups:
            assert rows.view(-1, G).eq(rows.view(-1, G)[:, :1] + torch.arange(G)).all(), "whole groups in order"
            assert (rows.view(-1, G)[:, 0] % G == 0).all()
    assert max(row_lengths(rollouts)) > min(row_lengths(rollouts)), "the batch must have ragged rows to mean anything"


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("split", [dict(micro_batch_size=4), dict(max_tokens_per_micro_batch=40)])
def test_mask_truncated_update_is_the_full_batch_gradient_of_the_masked_loss(policy_and_batch, name, split):
    """Truncated rows as empty completions, under micro-batching (one micro-batch of whole groups is all truncated;
    ConSPO under a token budget takes the coefficient route)."""
    import dataclasses

    from conspo.reward_shaping import mask_truncated_rows

    model, rollouts, rewards, G = policy_and_batch
    truncated = torch.zeros(len(rollouts), dtype=torch.bool)
    truncated[[0, 5, 10, 12, 13, 14, 15]] = True  # row 10 is group 2's only negative; group 3 entirely
    rollouts = dataclasses.replace(rollouts, truncated=truncated)
    options = {"conspo": {"margin": 0.1, "tau": 0.3}, "dr_grpo": {"max_completion_length": 5}}.get(name, {})
    masked = dataclasses.replace(rollouts, completion_mask=mask_truncated_rows(rollouts.completion_mask, truncated))
    reference = _full_batch_grad(model, name, masked, rewards, G, options)
    grad, metrics = _grad(
        model,
        objective_name=name,
        rollouts=rollouts,
        rewards=rewards,
        group_size=G,
        options=options,
        mask_truncated=True,
        **split,
    )
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    assert (_full_batch_grad(model, name, rollouts, rewards, G, options) - reference).abs().max() > 1e-8
    if name == "conspo":
        assert metrics["conspo/valid_group_frac"] == 0.25  # group 2 lost its only negative


def test_split_groups_refused_for_clipped_objectives(policy_and_batch):
    model, rollouts, rewards, G = policy_and_batch
    with pytest.raises(ValueError, match="whole groups"):
        accumulate_gradients(model, "grpo", rollouts, rewards, G, {}, micro_batch_size=3)
