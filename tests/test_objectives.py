"""Vectorised objectives vs independent references: loops, closed forms, finite differences."""

import itertools

import pytest
import torch
from helpers import make_batch
from reference import (
    clipped_loss_loop,
    conspo_coefficients_loop,
    conspo_loss_loop,
    grpo_score_gap_loop,
)

from conspo import objectives as obj
from conspo import score_gap

GROUP_SIZES = [2, 3, 4, 8]
CASES = list(itertools.product(GROUP_SIZES, [True, False], [0, 1, 3]))  # G, binary rewards, zero-length rows


# --- sequence scores ----------------------------------------------------------------


def test_sequence_scores_is_masked_mean_and_ignores_padding_values():
    logps = torch.tensor([[-1.0, -3.0, float("-inf")], [-2.0, float("nan"), float("nan")], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = obj.sequence_scores(logps, mask)
    assert torch.equal(scores, torch.tensor([-2.0, -2.0, 0.0]))
    assert torch.equal(obj.sequence_scores(logps, mask, normalize_by_length=False), torch.tensor([-4.0, -2.0, 0.0]))


# --- ConSPO -------------------------------------------------------------------------


@pytest.mark.parametrize("G,binary,zero_rows", CASES)
@pytest.mark.parametrize("margin,tau", [(0.0, 0.3), (0.25, 1.0), (-0.1, 0.05)])
def test_conspo_loss_matches_loop_reference(G, binary, zero_rows, margin, tau):
    logps, _, mask, rewards = make_batch(6, G, 7, seed=G * 10 + zero_rows, binary=binary, zero_length_rows=zero_rows)
    threshold = 0.5 if binary else 0.4
    loss, _ = obj.conspo_loss(
        logps, mask, rewards, G, margin=margin, tau=tau, positive_threshold=threshold, positive_rule="threshold"
    )
    ref = conspo_loss_loop(logps, mask, rewards, G, margin, tau, threshold, rule="threshold")
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)


def test_conspo_sum_score_ablation_matches_loop():
    logps, _, mask, rewards = make_batch(5, 4, 6, seed=3)
    loss, _ = obj.conspo_loss(logps, mask, rewards, 4, margin=0.1, tau=2.0, score="sum")
    torch.testing.assert_close(loss, conspo_loss_loop(logps, mask, rewards, 4, 0.1, 2.0, normalize=False))


@pytest.mark.parametrize("G,binary,zero_rows", CASES)
def test_conspo_token_gradient_matches_loop_reference(G, binary, zero_rows):
    logps, _, mask, rewards = make_batch(4, G, 5, seed=G + 100 * zero_rows, binary=binary, zero_length_rows=zero_rows)
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    loss, _ = obj.conspo_loss(a, mask, rewards, G, margin=0.2, tau=0.5)
    assert_token_gradients_equal(loss, conspo_loss_loop(b, mask, rewards, G, 0.2, 0.5), a, b)


def assert_token_gradients_equal(loss, ref, ours, theirs):
    """Back-propagate both losses: equal token gradients, or, where the reference is a constant (no valid
    group), an exactly zero gradient of ours."""
    loss.backward()
    if ref.requires_grad:
        ref.backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
    else:
        assert torch.count_nonzero(ours.grad) == 0


@pytest.mark.parametrize("G,binary,zero_rows", CASES)
@pytest.mark.parametrize("margin,tau", [(0.0, 0.3), (0.3, 0.7)])
def test_coefficients_equal_autograd_and_closed_form_loop(G, binary, zero_rows, margin, tau):
    logps, _, mask, rewards = make_batch(6, G, 6, seed=7 * G + zero_rows, binary=binary, zero_length_rows=zero_rows)
    threshold = 0.5 if binary else 0.6
    present = mask.bool().any(-1)
    scores = obj.sequence_scores(logps, mask).requires_grad_(True)
    # Autograd through the loss, with scores as the leaf: make token_logps a function of scores.
    # s_i = mean_t x_{i,t}; setting x_{i,t} = s_i on the mask reproduces the scores exactly.
    tokens = scores[:, None].expand_as(logps)
    loss, _ = obj.conspo_loss(
        tokens, mask, rewards, G, margin=margin, tau=tau, positive_threshold=threshold, positive_rule="threshold"
    )
    (grad,) = (
        torch.autograd.grad(loss, scores, allow_unused=False) if loss.requires_grad else (torch.zeros_like(scores),)
    )
    coeffs = obj.conspo_coefficients(
        scores.detach(),
        rewards,
        G,
        margin=margin,
        tau=tau,
        positive_threshold=threshold,
        positive_rule="threshold",
        present=present,
    )
    torch.testing.assert_close(coeffs, grad, rtol=1e-10, atol=1e-13)
    # ...and the closed form written out one element at a time, on the present rows.
    keep = present.clone()
    if zero_rows == 0:
        loop = conspo_coefficients_loop(scores.detach(), rewards, G, margin, tau, threshold, rule="threshold")
        torch.testing.assert_close(coeffs, loop, rtol=1e-10, atol=1e-13)
    assert torch.count_nonzero(coeffs[~keep]) == 0


def test_coefficients_match_finite_differences():
    G = 4
    logps, _, mask, rewards = make_batch(3, G, 1, seed=11)
    mask = torch.ones_like(mask)  # one token per row: the token log-prob is the score
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=torch.float64)
    scores = logps[:, 0].clone()
    coeffs = obj.conspo_coefficients(scores, rewards, G, margin=0.15, tau=0.4)
    h = 1e-6
    for i in range(len(scores)):
        up, down = scores.clone(), scores.clone()
        up[i] += h
        down[i] -= h
        f_up = obj.conspo_loss(up[:, None], mask, rewards, G, margin=0.15, tau=0.4)[0]
        f_down = obj.conspo_loss(down[:, None], mask, rewards, G, margin=0.15, tau=0.4)[0]
        assert abs(float((f_up - f_down) / (2 * h)) - float(coeffs[i])) < 1e-7


def test_coefficient_surrogate_reproduces_parameter_gradient():
    """grad of sum_i c_i s_i(theta) == grad of L(theta): the coefficient mode is exact."""
    G = 4
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    features = torch.randn(3 * G, 6, 3, generator=gen, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0], dtype=torch.float64)
    mask = (torch.rand(3 * G, 6, generator=gen) < 0.8).long()
    mask[:, 0] = 1

    def token_logps():
        logits = features @ theta.T  # (B, T, 8): a toy policy over an 8-token vocabulary
        return torch.log_softmax(logits, -1)[..., 2]

    loss, _ = obj.conspo_loss(token_logps(), mask, rewards, G, margin=0.1, tau=0.5)
    (g_direct,) = torch.autograd.grad(loss, theta)
    scores = obj.sequence_scores(token_logps(), mask)
    coeffs = obj.conspo_coefficients(scores.detach(), rewards, G, margin=0.1, tau=0.5)
    # the surrogate, back-propagated in two "micro-batches" that split groups apart
    g_sur = torch.zeros_like(theta)
    for rows in (slice(0, 5), slice(5, 12)):
        s_part = obj.sequence_scores(token_logps()[rows], mask[rows])
        (g,) = torch.autograd.grad((coeffs[rows] * s_part).sum(), theta)
        g_sur += g
    torch.testing.assert_close(g_sur, g_direct, rtol=1e-10, atol=1e-12)


def test_conspo_direction_raises_positives_and_lowers_negatives():
    scores = torch.tensor([-1.0, -1.0, -2.0, -0.5], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    c = obj.conspo_coefficients(scores, rewards, 4, margin=0.0, tau=1.0)
    assert (c[rewards == 1] < 0).all() and (c[rewards == 0] > 0).all()  # descent raises s_pos, lowers s_neg
    # the worse-separated positive (-2.0) gets the larger push; the higher-scoring negative gets more suppression
    assert abs(c[2]) > abs(c[0])
    assert c[3] > c[1]


def test_conspo_metrics():
    scores = torch.tensor([[-1.0], [-3.0], [-2.0], [-0.5], [-1.0], [-1.0]], dtype=torch.float64)
    mask = torch.ones(6, 1)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # group 0 valid, group 1 all positive
    _, m = obj.conspo_loss(scores, mask, rewards, 3, margin=0.1, tau=0.5)
    assert m["conspo/valid_group_frac"] == 0.5
    assert m["conspo/pos_score_mean"] == pytest.approx(-1.0)
    assert m["conspo/neg_score_mean"] == pytest.approx(-2.5)
    assert m["conspo/score_gap"] == pytest.approx(1.5)
    assert m["conspo/pos_above_all_neg_frac"] == 1.0
    share = 1 / (
        1
        + (torch.exp(torch.tensor(-3.0 / 0.5)) + torch.exp(torch.tensor(-2.0 / 0.5)))
        / torch.exp(torch.tensor(-1.1 / 0.5))
    )
    assert m["conspo/pos_softmax_share"] == pytest.approx(float(share))
    assert m["conspo/margin"] == 0.1 and m["conspo/tau"] == 0.5


# --- positive_rule="group_mean" (graded rewards) ----------------------------------------


def _graded_batch(n_groups, G, T, *, seed, binary, zero_rows):
    """make_batch with one group of all-equal rewards (no positive under group_mean) and one with ties."""
    logps, _, mask, rewards = make_batch(n_groups, G, T, seed=seed, binary=binary, zero_length_rows=zero_rows)
    rewards = rewards.clone()
    rewards[G : 2 * G] = 0.7
    if G >= 3:
        rewards[2 * G : 3 * G] = torch.tensor([0.2, 0.6, 0.6, 0.9, 0.1, 0.4, 0.3, 0.8][:G], dtype=rewards.dtype)
    return logps, mask, rewards


@pytest.mark.parametrize("G,binary,zero_rows", CASES)
@pytest.mark.parametrize("margin,tau", [(0.0, 0.3), (0.25, 1.0)])
def test_group_mean_rule_loss_and_token_gradient_match_loop_reference(G, binary, zero_rows, margin, tau):
    logps, mask, rewards = _graded_batch(6, G, 7, seed=3 * G + zero_rows, binary=binary, zero_rows=zero_rows)
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    loss, _ = obj.conspo_loss(a, mask, rewards, G, margin=margin, tau=tau, positive_rule="group_mean")
    ref = conspo_loss_loop(b, mask, rewards, G, margin, tau, rule="group_mean")
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    assert_token_gradients_equal(loss, ref, a, b)


@pytest.mark.parametrize("G,binary,zero_rows", CASES)
def test_group_mean_coefficients_equal_autograd_and_closed_form_loop(G, binary, zero_rows):
    logps, mask, rewards = _graded_batch(6, G, 6, seed=5 * G + zero_rows, binary=binary, zero_rows=zero_rows)
    present = mask.bool().any(-1)
    scores = obj.sequence_scores(logps, mask).requires_grad_(True)
    tokens = scores[:, None].expand_as(logps)  # token log-probs equal to the score: s_i is unchanged
    loss, _ = obj.conspo_loss(tokens, mask, rewards, G, margin=0.2, tau=0.5, positive_rule="group_mean")
    (grad,) = torch.autograd.grad(loss, scores) if loss.requires_grad else (torch.zeros_like(scores),)
    coeffs = obj.conspo_coefficients(
        scores.detach(), rewards, G, margin=0.2, tau=0.5, positive_rule="group_mean", present=present
    )
    torch.testing.assert_close(coeffs, grad, rtol=1e-10, atol=1e-13)
    if zero_rows == 0:
        loop = conspo_coefficients_loop(scores.detach(), rewards, G, 0.2, 0.5, rule="group_mean")
        torch.testing.assert_close(coeffs, loop, rtol=1e-10, atol=1e-13)
    assert torch.count_nonzero(coeffs[~present]) == 0


def test_group_mean_rule_sets():
    rewards = torch.tensor(
        [
            0.2,
            0.5,
            0.8,
            0.5,  # mean 0.5: only 0.8 is above it (0.5 is not strictly above)
            0.7,
            0.7,
            0.7,
            0.7,  # all equal: no positive, group not valid
            9.0,
            0.1,
            0.3,
            0.2,
        ],  # row 8 empty: left out of the mean (0.2), so 0.3 is positive
        dtype=torch.float64,
    )
    present = torch.ones(12, dtype=torch.bool)
    present[8] = False
    pos, neg, valid = obj.contrastive_sets(rewards, present, 4, positive_rule="group_mean")
    assert valid.tolist() == [True, False, True]
    assert pos.reshape(-1).nonzero().flatten().tolist() == [2, 10]
    assert neg.reshape(-1).nonzero().flatten().tolist() == [0, 1, 3, 9, 11]
    binary = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0])  # 0/1 rewards: the same sets as the threshold rule
    for a, b in zip(
        obj.contrastive_sets(binary, present, 4, positive_rule="group_mean"),
        obj.contrastive_sets(binary, present, 4, positive_threshold=0.5, positive_rule="threshold"),
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="positive_rule must be one of threshold, group_mean, got 'median'"):
        obj.contrastive_sets(binary, present, 4, positive_rule="median")


def test_group_mean_rule_reaches_the_objective_registry_and_normalizer():
    logps, mask, rewards = _graded_batch(4, 4, 5, seed=2, binary=False, zero_rows=0)
    conspo = obj.get_objective("conspo")
    options = conspo.options({"positive_rule": "group_mean", "tau": 0.5, "eps_low": 0.2})
    assert options == {"positive_rule": "group_mean", "tau": 0.5}
    loss, metrics = conspo.loss(logps, logps, mask, rewards, 4, **options)
    torch.testing.assert_close(loss, conspo_loss_loop(logps, mask, rewards, 4, 0.0, 0.5, rule="group_mean"))
    assert conspo.normalizer(mask, rewards, 4, **options) == metrics["conspo/valid_group_frac"] * 4 == 3.0


# --- degenerate and extreme batches ----------------------------------------------------


@pytest.mark.parametrize("name", list(obj.OBJECTIVES))
@pytest.mark.parametrize(
    "case", ["all_positive", "all_negative", "all_zero_length", "extreme_scores", "one_row_groups"]
)
def test_degenerate_batches_are_finite(name, case):
    G = 1 if case == "one_row_groups" else 4
    logps, old, mask, rewards = make_batch(3, G, 5, seed=1)
    if case == "all_positive":
        rewards = torch.ones_like(rewards)
    elif case == "all_negative":
        rewards = torch.zeros_like(rewards)
    elif case == "all_zero_length":
        mask = torch.zeros_like(mask)
    elif case == "extreme_scores":
        logps = logps * 1e4
        logps[::2] = -1e-9
        old = logps.detach().clone()
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x = logps.to(dtype).clone().requires_grad_(True)
        loss, metrics = obj.get_objective(name).loss(x, old.to(dtype), mask, rewards.to(dtype), G)
        loss.backward()
        assert torch.isfinite(loss), (dtype, loss)
        assert torch.isfinite(x.grad).all(), dtype
        assert all(isinstance(v, float) and v == v for v in metrics.values()), metrics
        if case in ("all_positive", "all_negative", "all_zero_length", "one_row_groups"):
            assert float(loss.detach()) == 0.0 and torch.count_nonzero(x.grad) == 0


def test_conspo_extreme_scores_saturate_correctly():
    # positive far above the negative: loss -> 0; far below: loss -> (s_neg - s_pos + m)/tau
    mask = torch.ones(2, 1)
    rewards = torch.tensor([1.0, 0.0])
    good = obj.conspo_loss(torch.tensor([[-1.0], [-5000.0]]), mask, rewards, 2, tau=0.1)[0]
    bad = obj.conspo_loss(torch.tensor([[-5000.0], [-1.0]]), mask, rewards, 2, tau=0.1, margin=0.5)[0]
    assert float(good) == 0.0
    assert float(bad) == pytest.approx((-1.0 + 5000.0 + 0.5) / 0.1, rel=1e-6)


# --- GRPO family -----------------------------------------------------------------------

CLIPPED = [
    ("grpo", obj.grpo_loss, 0.2, 0.2),
    ("dr_grpo", obj.dr_grpo_loss, 0.2, 0.2),
    ("dapo", obj.dapo_loss, 0.2, 0.28),
    ("gspo", obj.gspo_loss, 3e-4, 4e-4),
]


@pytest.mark.parametrize("kind,fn,eps_low,eps_high", CLIPPED)
@pytest.mark.parametrize("G,binary,zero_rows", CASES)
def test_clipped_losses_match_loop_reference(kind, fn, eps_low, eps_high, G, binary, zero_rows):
    logps, old, mask, rewards = make_batch(5, G, 6, seed=G + zero_rows, binary=binary, zero_length_rows=zero_rows)
    if kind == "gspo":  # sequence ratios near 1 so that both sides of the tiny clip range occur
        old = logps + 1e-3 * torch.randn(logps.shape, dtype=logps.dtype, generator=torch.Generator().manual_seed(G))
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    loss, metrics = fn(a, old, mask, rewards, G)
    ref = clipped_loss_loop(kind, b, old, mask, rewards, G, eps_low, eps_high)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    if ref.requires_grad:
        loss.backward()
        ref.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert 0.0 <= metrics["clip/region_frac"] <= 1.0


def test_dr_grpo_uses_max_completion_length():
    logps, old, mask, rewards = make_batch(3, 4, 5, seed=2)
    loss, _ = obj.dr_grpo_loss(logps, old, mask, rewards, 4, max_completion_length=64)
    ref = clipped_loss_loop("dr_grpo", logps, old, mask, rewards, 4, 0.2, 0.2, max_len=64)
    torch.testing.assert_close(loss, ref)


def test_clip_fractions_count_clipped_tokens():
    logps = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]], dtype=torch.float64))
    old = torch.zeros_like(logps)
    mask = torch.ones(2, 2)
    rewards = torch.tensor([1.0, 0.0])
    _, m = obj.grpo_loss(logps, old, mask, rewards, 2)
    assert m["clip/high_frac"] == 0.25 and m["clip/low_frac"] == 0.25 and m["clip/region_frac"] == 0.5


@pytest.mark.parametrize("G,zero_rows", [(2, 0), (4, 1), (8, 3), (5, 0)])
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28)])
def test_grpo_equals_score_gap_reformulation(G, zero_rows, eps_low, eps_high):
    logps, old, mask, rewards = make_batch(7, G, 6, seed=G * 3 + zero_rows, zero_length_rows=zero_rows)
    loss, _ = obj.grpo_loss(logps, old, mask, rewards, G, eps_low=eps_low, eps_high=eps_high)
    gap = score_gap.grpo_score_gap(logps, old, mask, rewards, G, eps_low=eps_low, eps_high=eps_high)
    assert abs(float(loss) - float(gap.loss)) < 1e-8
    assert abs(float(gap.loss) - grpo_score_gap_loop(logps, old, mask, rewards, G, eps_low, eps_high)) < 1e-8
    assert set(gap.metrics()) == {"grpo/weight_mean", "grpo/pos_score_mean", "grpo/neg_score_mean"}


def test_score_gap_rejects_non_binary_rewards():
    logps, old, mask, _ = make_batch(2, 4, 3)
    with pytest.raises(ValueError, match="binary"):
        score_gap.grpo_score_gap(logps, old, mask, torch.full((8,), 0.5, dtype=torch.float64), 4)


def test_group_advantages_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    std = torch.tensor([1.0, 0, 0, 0]).std(unbiased=True)
    torch.testing.assert_close(obj.group_advantages(r, 4), (r - 0.25) / (std + 1e-4))
    torch.testing.assert_close(obj.group_advantages(r, 4, scale_by_std=False), r - 0.25)
    assert torch.count_nonzero(obj.group_advantages(torch.ones(4), 2)) == 0


def test_kl_k3_is_zero_at_reference_and_positive_elsewhere():
    logps, _, mask, _ = make_batch(2, 2, 4)
    assert float(obj.kl_k3(logps, logps, mask)) == 0.0
    assert float(obj.kl_k3(logps, logps + 0.3, mask)) > 0.0


# --- registry and validation ----------------------------------------------------------


def test_registry_names_and_unknown_name_error():
    assert set(obj.OBJECTIVES) == {"conspo", "grpo", "dr_grpo", "dapo", "gspo", "disco", "disco_ratio", "real"}
    assert obj.get_objective("conspo").couples_group and not obj.get_objective("grpo").couples_group
    with pytest.raises(ValueError, match="conspo, grpo, dr_grpo, dapo, gspo, disco, disco_ratio, real"):
        obj.get_objective("ppo")


def test_layout_errors_are_clear():
    logps, old, mask, rewards = make_batch(2, 3, 4)
    with pytest.raises(ValueError, match="whole number of groups"):
        obj.conspo_loss(logps, mask, rewards, 4)
    with pytest.raises(ValueError, match="rewards must be"):
        obj.grpo_loss(logps, old, mask, rewards[:-1], 3)
    with pytest.raises(ValueError, match="tau must be > 0"):
        obj.conspo_loss(logps, mask, rewards, 3, tau=0.0)
    with pytest.raises(ValueError, match="group_size"):
        obj.dapo_loss(logps, old, mask, rewards, 0)


@pytest.mark.parametrize("name", [n for n, o in obj.OBJECTIVES.items() if o.normalizer is not None])
def test_normalizer_makes_micro_batch_accumulation_exact(name):
    """sum over micro-batches of loss_k * n_k / n equals the full-batch loss (and gradient)."""
    G = 4
    logps, old, mask, rewards = make_batch(6, G, 5, seed=21, zero_length_rows=2)
    objective = obj.get_objective(name)
    opts = {"max_completion_length": 5} if name == "dr_grpo" else {}
    full = logps.clone().requires_grad_(True)
    loss, _ = objective.loss(full, old, mask, rewards, G, **opts)
    loss.backward()
    parts = logps.clone().requires_grad_(True)
    n = objective.normalizer(mask, rewards, G)
    total = 0.0
    for rows in (slice(0, 8), slice(8, 12), slice(12, 24)):
        n_k = objective.normalizer(mask[rows], rewards[rows], G)
        if n_k == 0:
            continue
        part, _ = objective.loss(parts[rows], old[rows], mask[rows], rewards[rows], G, **opts)
        (part * n_k / n).backward()
        total += float(part.detach()) * n_k / n
    assert total == pytest.approx(float(loss.detach()), rel=1e-12)
    torch.testing.assert_close(parts.grad, full.grad, rtol=1e-10, atol=1e-14)
