"""Overlong completions (DAPO): the soft overlong punishment and truncation masking, for every objective and
both engines. The native update's exactness with masked rows is in tests/test_update.py, the equality with TRL's
loss on masked rows in tests/test_trl_oracle.py."""

import dataclasses

import pytest
import torch
from helpers import make_batch
from reference import clipped_loss_loop, conspo_loss_loop

from conspo import objectives as obj
from conspo import reward_shaping as shaping
from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.integrations.trl_engine import trl_arguments, trl_reward_functions
from conspo.rollout import Rollouts
from conspo.train import overlong_shaping

# --- the soft overlong punishment ------------------------------------------------------


def _eq13(n, l_max, l_cache):
    """DAPO (arXiv 2503.14476) Eq. 13, case by case."""
    if n <= l_max - l_cache:
        return 0.0
    if n <= l_max:
        return (l_max - l_cache - n) / l_cache
    return -1.0


@pytest.mark.parametrize("l_max,l_cache", [(20480, 4096), (6, 2), (10, 10), (7, 1)])  # the paper's, ours, edges
def test_overlong_penalty_is_dapos_formula_and_trls_function(l_max, l_cache):
    trl_rewards = pytest.importorskip("trl.rewards")
    edge = l_max - l_cache
    lengths = sorted(
        {0, 1, max(edge - 1, 0), edge, edge + 1, (edge + l_max) // 2, l_max - 1, l_max, l_max + 1, l_max + 50}
    )
    ours = shaping.overlong_penalty(torch.tensor(lengths), l_max, l_cache)
    assert ours.dtype == torch.float64
    assert ours.tolist() == [_eq13(n, l_max, l_cache) for n in lengths]
    trl = trl_rewards.get_soft_overlong_punishment(l_max, l_cache)([[7] * n for n in lengths])
    assert ours.tolist() == trl
    assert {0.0, -1.0} <= set(trl) and (l_cache == 1 or any(-1 < v < 0 for v in trl)), "every case is exercised"
    scaled = shaping.overlong_penalty(torch.tensor(lengths), l_max, l_cache, factor=0.5)
    assert scaled.tolist() == [0.5 * v for v in trl]


def test_overlong_penalty_off_and_bad_buffer():
    assert torch.count_nonzero(shaping.overlong_penalty(torch.tensor([0, 5, 6, 9]), 6, 0)) == 0
    with pytest.raises(ValueError, match=r"buffer must be an int in \[0, max_length=6\], got 7"):
        shaping.overlong_penalty(torch.tensor([1]), 6, 7)


def _rollouts(lengths, truncated):
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return Rollouts(
        torch.ones(len(lengths), 1, dtype=torch.long),
        torch.ones(len(lengths), 1, dtype=torch.long),
        mask.clone(),
        mask,
        torch.tensor(truncated),
        ["x"] * len(lengths),
    )


def test_native_trainer_adds_the_penalty_to_the_task_reward():
    rollouts = _rollouts([2, 5, 6, 4], [False, False, True, False])
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    off = TrainConfig()
    assert overlong_shaping(off, rollouts, rewards, 6) == (rewards, {})
    cfg = TrainConfig(overlong_buffer=2, overlong_penalty_factor=0.5)
    shaped, metrics = overlong_shaping(cfg, rollouts, rewards, 6)
    expected = torch.tensor([1.0, 1.0 - 0.25, 0.0 - 0.5, 0.0])  # lengths 5 and 6 are inside the buffer (4, 6]
    assert torch.equal(shaped, expected) and shaped.dtype == rewards.dtype
    assert metrics == {"reward/overlong_penalty_mean": pytest.approx(-0.75 / 4)}


# --- truncated rows masked, for every objective ------------------------------------------


def _clip_defaults(name):
    defaults = obj.get_objective(name).option_defaults
    return defaults["eps_low"], defaults["eps_high"]


@pytest.mark.parametrize("name", [n for n, o in obj.OBJECTIVES.items() if o.normalizer is not None])
@pytest.mark.parametrize("G,binary", [(4, True), (3, False)])
def test_truncated_rows_get_no_gradient_and_the_rest_match_the_loop_reference(name, G, binary):
    """float64: masked rows get exactly zero gradient; the loss and the other rows' gradients are those of the loop
    reference (written from the formulas) on the batch whose truncated rows are empty completions."""
    logps, old, mask, rewards = make_batch(5, G, 6, seed=G + 2, binary=binary, zero_length_rows=1)
    if name == "gspo":  # sequence ratios near 1 so that both sides of the tiny clip range occur
        old = logps + 1e-3 * torch.randn(logps.shape, dtype=logps.dtype, generator=torch.Generator().manual_seed(G))
    truncated = torch.zeros(len(rewards), dtype=torch.bool)
    truncated[[2, 3, G + 1, 3 * G, 3 * G + 1, 3 * G + 2]] = True
    kept = shaping.mask_truncated_rows(mask, truncated)
    assert torch.count_nonzero(kept[truncated]) == 0 and torch.equal(kept[~truncated], mask[~truncated])
    objective = obj.get_objective(name)
    opts = {"max_completion_length": 6} if name == "dr_grpo" else {}
    x = logps.clone().requires_grad_(True)
    loss, _ = objective.loss(x, old, kept, rewards, G, **opts)
    loss.backward()
    assert torch.count_nonzero(x.grad[truncated]) == 0
    assert torch.count_nonzero(x.grad[~truncated]) > 0, "the comparison is not vacuous"
    y = logps.clone().requires_grad_(True)
    if name == "conspo":  # the registry's defaults: margin 0, tau 0.3, threshold 0.5
        ref = conspo_loss_loop(y, kept, rewards, G, 0.0, 0.3)
    else:
        ref = clipped_loss_loop(
            name, y, old, kept, rewards, G, *_clip_defaults(name), max_len=opts.get("max_completion_length")
        )
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    ref.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    # the normalisers see the masked rows too: micro-batches of whole groups add up to the full-batch gradient
    z = logps.clone().requires_grad_(True)
    total = objective.normalizer(kept, rewards, G)
    for rows in (slice(0, G), slice(G, 3 * G), slice(3 * G, 5 * G)):
        share = objective.normalizer(kept[rows], rewards[rows], G)
        if share:
            part, _ = objective.loss(z[rows], old[rows], kept[rows], rewards[rows], G, **opts)
            (part * share / total).backward()
    torch.testing.assert_close(z.grad, x.grad, rtol=1e-10, atol=1e-14)


def test_conspo_truncated_row_leaves_the_group_sets():
    """A truncated negative leaves N_g: the group loses its only negative and |V| shrinks."""
    logps = torch.tensor([[-1.0], [-2.0], [-1.5], [-0.5], [-3.0], [-2.0]], dtype=torch.float64)
    mask = torch.ones(6, 1, dtype=torch.long)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    truncated = torch.tensor([False, True, False, False, False, False])
    kept = shaping.mask_truncated_rows(mask, truncated)
    _, before = obj.conspo_loss(logps, mask, rewards, 3)
    loss, after = obj.conspo_loss(logps, kept, rewards, 3)
    assert (before["conspo/valid_group_frac"], after["conspo/valid_group_frac"]) == (1.0, 0.5)
    torch.testing.assert_close(loss, obj.conspo_loss(logps[3:], mask[3:], rewards[3:], 3)[0])


# --- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(overlong_penalty_factor=0.5), "overlong_penalty_factor=0.5: is only used with overlong_buffer > 0"),
        (
            dict(overlong_buffer=4, overlong_penalty_factor=0.0),
            "overlong_penalty_factor=0.0: must be a finite number > 0",
        ),
        (dict(overlong_buffer=-1), "overlong_buffer=-1: must be >= 0"),
        (
            dict(overlong_buffer=9, max_new_tokens=8),
            "overlong_buffer=9: must be at most the generation limit (8 tokens)",
        ),
    ],
)
def test_bad_overlong_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**options).validate()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_buffer_is_checked_against_the_tasks_default_limit():
    cfg = TrainConfig(overlong_buffer=7)
    cfg.validate()  # max_new_tokens 0: the task's default, known once the task is built
    cfg.check_generation_limit(7)
    with pytest.raises(ConfigError, match=r"overlong_buffer=7: must be at most the generation limit \(6 tokens\)"):
        cfg.check_generation_limit(6)


@pytest.mark.parametrize("objective", ["dapo", "conspo"])
def test_trl_engine_maps_the_options_to_trls_own(objective):
    def task(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    def args(cfg):
        return trl_arguments(cfg, max_new_tokens=8, output_dir="x", use_cpu=True)

    base = TrainConfig(engine="trl", objective=objective)
    assert args(base)["mask_truncated_completions"] is False and "reward_weights" not in args(base)
    assert trl_reward_functions(base, task, max_new_tokens=8) == [task]
    cfg = dataclasses.replace(base, mask_truncated=True, overlong_buffer=3, overlong_penalty_factor=0.5)
    assert args(cfg)["mask_truncated_completions"] is True and args(cfg)["reward_weights"] == [1.0, 0.5]
    funcs = trl_reward_functions(cfg, task, max_new_tokens=8)
    assert funcs[0] is task and len(funcs) == 2
    assert funcs[1]([[1] * n for n in range(10)]) == shaping.overlong_penalty(torch.arange(10), 8, 3).tolist()


def test_trl_trainer_masks_truncated_rows_and_adds_the_weighted_penalty(tmp_path):
    """One real TRL step (ConSPOTrainer, the engine's reward functions and weights): the rewards TRL sums equal the
    task reward plus our penalty on the same completions, and truncated completions have an all-zero mask."""
    pytest.importorskip("trl")
    from helpers import make_trainer

    seen = []

    def task(prompts, completions, **kwargs):
        seen.append([float(len(c) % 2) for c in completions])
        return seen[-1]

    cfg = TrainConfig(engine="trl", mask_truncated=True, overlong_buffer=3, overlong_penalty_factor=0.5)
    weights = trl_arguments(cfg, max_new_tokens=5, output_dir="x", use_cpu=True)
    trainer, _, _ = make_trainer(
        tmp_path,
        per_device=8,
        G=4,
        gas=1,
        seed=3,
        reward_funcs=trl_reward_functions(cfg, task, max_new_tokens=5),
        reward_weights=weights["reward_weights"],
        mask_truncated_completions=weights["mask_truncated_completions"],
    )
    trainer.train()
    batch = trainer.recorded[0]
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    tokenizer = trainer.processing_class
    is_eos = ids == tokenizer.eos_token_id
    has_eos = is_eos.any(1)
    lengths = torch.where(has_eos, is_eos.int().argmax(1) + 1, 5)  # EOS included, as TRL's completion_ids lists
    assert has_eos.any() and (~has_eos).any(), "both kinds of completion occur"
    assert torch.count_nonzero(mask[~has_eos]) == 0 and torch.equal(mask[has_eos].sum(1), lengths[has_eos])
    expected = torch.tensor(seen[0], dtype=torch.float64) + shaping.overlong_penalty(lengths, 5, 3, factor=0.5)
    torch.testing.assert_close(batch["conspo_rewards"].double(), expected, rtol=1e-6, atol=1e-7)
