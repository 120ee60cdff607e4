"""The default positive rule (group_mean): the threshold rule's positives for 0/1 rewards, a signal for graded ones.

docs/design.md section 2 states the decision; these tests are its evidence.
"""

import itertools

import pytest
import torch
from reference import conspo_loss_loop

from conspo import objectives as obj
from conspo import reward_shaping as shaping


def _sets(rewards, present, G, rule, threshold=0.5):
    return obj.contrastive_sets(
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(present),
        G,
        positive_threshold=threshold,
        positive_rule=rule,
    )


@pytest.mark.parametrize("G", [2, 3, 4, 5, 6])
def test_default_picks_exactly_the_threshold_positives_for_binary_rewards_in_every_group(G):
    """Every 0/1 reward vector of a group, with every pattern of empty completions: the same positive,
    negative and valid sets as the threshold rule at 0.5 (and at any threshold in (0, 1])."""
    assert obj.DEFAULT_POSITIVE_RULE == "group_mean"
    groups = [
        (r, p) for r in itertools.product([0.0, 1.0], repeat=G) for p in itertools.product([True, False], repeat=G)
    ]
    rewards = [x for r, _ in groups for x in r]
    present = [x for _, p in groups for x in p]
    default = obj.contrastive_sets(torch.tensor(rewards), torch.tensor(present), G)  # the default rule
    for threshold in (0.5, 1e-6, 1.0):
        threshold_sets = _sets(rewards, present, G, "threshold", threshold)
        for a, b in zip(default, threshold_sets):
            assert torch.equal(a, b)
    assert default[2].any() and not default[2].all()  # both valid and invalid groups were compared


# (name, rewards of one group of 4, positives under threshold 0.5, positives under group_mean); None: no valid group
DECISION_CASES = [
    ("0/1", [1.0, 0.0, 0.0, 1.0], [0, 3], [0, 3]),
    ("0/1 all right", [1.0, 1.0, 1.0, 1.0], None, None),
    ("0/1 + format: only the format differs", [1.2, 1.0, 1.0, 1.0], None, [0]),
    ("0/1 + format: wrong answers differ in format", [0.2, 0.0, 0.0, 0.0], None, [0]),
    ("0/1 + format: mixed", [1.2, 1.0, 0.2, 0.0], [0, 1], [0, 1]),
    ("graded, all below 0.5", [0.18, 0.02, 0.1, 0.05], None, [0, 2]),
    ("reward-model scores", [-1.3, 0.4, 2.1, -0.2], [2], [1, 2]),
    ("reward-model scores, all below the bar", [-1.3, -0.4, -2.1, -0.2], None, [1, 3]),
    ("ties", [0.3, 0.3, 0.7, 0.7], [2, 3], [2, 3]),
    ("all tied", [0.3, 0.3, 0.3, 0.3], None, None),
]


@pytest.mark.parametrize("name,rewards,threshold_pos,mean_pos", DECISION_CASES, ids=[c[0] for c in DECISION_CASES])
def test_decision_table(name, rewards, threshold_pos, mean_pos):
    """Why group_mean is the default: the same positives as the threshold where the threshold splits the group,
    and a split where it does not (format-only differences, graded or reward-model scores), none for ties."""
    for rule, expected in (("threshold", threshold_pos), ("group_mean", mean_pos)):
        pos, neg, valid = _sets(rewards, [True] * 4, 4, rule)
        if expected is None:
            assert not valid.any(), (rule, name)
        else:
            assert valid.all() and pos[0].nonzero().flatten().tolist() == expected, (rule, name)
            assert neg[0].nonzero().flatten().tolist() == [i for i in range(4) if i not in expected]


def test_graded_rewards_below_half_move_the_default_gradient_and_not_the_threshold_one():
    torch.manual_seed(0)
    G, T = 4, 5
    logps = -torch.rand(2 * G, T, dtype=torch.float64)
    mask = torch.ones(2 * G, T)
    rewards = torch.tensor([0.18, 0.02, 0.1, 0.05, 0.0, 0.12, 0.12, 0.03], dtype=torch.float64)
    for rule, moves in (("group_mean", True), ("threshold", False)):
        x = logps.clone().requires_grad_(True)
        loss, metrics = obj.conspo_loss(x, mask, rewards, G, positive_rule=rule)
        if loss.requires_grad:
            loss.backward()
        grad = x.grad if x.grad is not None else torch.zeros_like(x)
        assert bool(grad.abs().sum() > 0) is moves, rule
    y = logps.clone().requires_grad_(True)
    default, _ = obj.conspo_loss(y, mask, rewards, G)
    torch.testing.assert_close(default, conspo_loss_loop(logps, mask, rewards, G, 0.0, 0.3), rtol=1e-10, atol=1e-12)


def test_a_format_bonus_moves_nothing_under_the_threshold_rule_and_moves_the_default():
    """Per reward: accuracy (0/1) + a 0.2 format bonus, two groups, one of them differing only in format."""
    accuracy = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    fmt = [0.2, 0.0, 0.0, 0.0, 0.2, 0.0, 0.2, 0.0]
    per_reward = torch.tensor([accuracy, fmt], dtype=torch.float64).T
    present = torch.ones(8, dtype=torch.bool)
    assert shaping.rewards_that_move_the_update(per_reward, present, 4, positive_rule="threshold") == [True, False]
    assert shaping.rewards_that_move_the_update(per_reward, present, 4) == [True, True]
    # a reward constant within every group moves nothing, whatever the rule or objective
    flat = torch.tensor([accuracy, [0.5] * 4 + [0.1] * 4], dtype=torch.float64).T
    assert shaping.rewards_that_move_the_update(flat, present, 4) == [True, False]
    assert shaping.rewards_that_move_the_update(flat, present, 4, couples_group=False) == [True, False]
    assert shaping.rewards_that_move_the_update(per_reward, present, 4, couples_group=False) == [True, True]
    # weights count: a zero weight moves nothing; None (no score) rows are left out, not read as 0
    assert shaping.rewards_that_move_the_update(per_reward, present, 4, weights=torch.tensor([1.0, 0.0])) == [
        True,
        False,
    ]
    with_none = per_reward.clone()
    with_none[4:8, 1] = float("nan")  # group 1 unscored by the bonus: group 0 still differs only in format
    assert shaping.rewards_that_move_the_update(with_none, present, 4) == [True, True]


def test_combine_rewards_is_trl_nansum():
    per_reward = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [0.5, 0.25]], dtype=torch.float64)
    total = shaping.combine_rewards(per_reward, torch.tensor([1.0, 2.0]))
    assert total[0] == 1.0 and torch.isnan(total[1]) and total[2] == 1.0
