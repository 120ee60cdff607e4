"""examples/score_objective/plackett_luce.py: a user-defined score objective, registered and nothing else, equals its
loop reference and trains with both engines."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import make_batch

from conspo import score_objectives as so
from conspo.objectives import coefficient_surrogate, get_objective

EXAMPLE = Path(__file__).parent.parent / "examples" / "score_objective" / "plackett_luce.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("plackett_luce_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    so.REGISTERED.pop("plackett_luce", None)
    spec.loader.exec_module(module)
    yield module
    so.REGISTERED.pop("plackett_luce", None)


def plackett_luce_loop(scores, rewards, present, G, tau):
    """From the formula, one group and one drawn completion at a time."""
    total, groups = torch.zeros((), dtype=scores.dtype), 0
    for g in range(len(scores) // G):
        rows = [i for i in range(g * G, (g + 1) * G) if present[i]]
        if not rows:
            continue
        lowest = min(float(rewards[i]) for i in rows)
        drawn = [k for k in rows if float(rewards[k]) > lowest]
        for k in drawn:
            rest = [j for j in rows if float(rewards[j]) <= float(rewards[k])]
            total = total + torch.log(sum(torch.exp(scores[j] / tau) for j in rest)) - scores[k] / tau
        groups += bool(drawn)
    return total / max(groups, 1)


@pytest.mark.parametrize("G,binary,tau", [(4, True, 1.0), (5, False, 0.5)])
def test_the_example_equals_its_loop_reference(example, G, binary, tau):
    logps, _, mask, rewards = make_batch(5, G, 6, seed=G, binary=binary, zero_length_rows=2)
    rewards[:G] = 1.0  # an all-equal group takes no part
    present = mask.bool().any(-1)
    scores = so.sequence_score("mean_logp", logps, None, mask)
    x = scores.clone().requires_grad_(True)
    loss, metrics = example.plackett_luce_loss(x, rewards, present, G, tau=tau)
    loss.backward()
    y = scores.clone().requires_grad_(True)
    ref = plackett_luce_loop(y, rewards, present, G, tau)
    ref.backward()
    assert float(ref.detach()) > 1e-3
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(x.grad[:G]) == 0 and torch.count_nonzero(x.grad[~present]) == 0


def test_the_example_is_an_objective_and_its_surrogate_is_exact_for_every_split(example):
    G = 4
    logps, old, mask, rewards = make_batch(3, G, 5, seed=2, binary=False)
    objective = get_objective("plackett_luce")
    assert objective.couples_group and objective.option_defaults == {"tau": 1.0}
    x = logps.clone().requires_grad_(True)
    get_objective("plackett_luce").loss(x, old, mask, rewards, G)[0].backward()
    scores = so.sequence_score("mean_logp", logps, None, mask)
    c, _ = so.score_coefficients(example.PLACKETT_LUCE, scores, rewards, mask.bool().any(-1), G)
    for micro in (1, 5, 12):
        y = logps.clone().requires_grad_(True)
        for start in range(0, len(rewards), micro):
            rows = slice(start, start + micro)
            coefficient_surrogate(c[rows], so.sequence_score("mean_logp", y[rows], None, mask[rows])).backward()
        torch.testing.assert_close(y.grad, x.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "trl"])
def test_the_example_trains_with_both_engines(example, engine, tmp_path, cache_dir):
    """A few steps on the tiny model, groups split across micro-batches natively (the coefficient route)."""
    from conspo.cli import run_training
    from conspo.config import TrainConfig

    if engine == "trl":
        pytest.importorskip("trl")
    out = tmp_path / engine
    split = {"micro_batch_size": 6, "log_samples_every": 0} if engine == "native" else {}
    cfg = TrainConfig(
        objective="plackett_luce",
        engine=engine,
        steps=3,
        sft_steps=3,
        prompts_per_step=4,
        group_size=4,
        eval_size=20,
        eval_every=0,
        save_every=0,
        lr_warmup_steps=1,
        progress=False,
        output_dir=str(out),
        cache_dir=cache_dir,
        threads=1,
        **split,
    )
    summary = run_training(cfg, log=lambda *a, **k: None)
    assert summary["objective"] == "plackett_luce"
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    trained = [r for r in rows if "objective/loss" in r]
    assert len(trained) == 3 and all(r["objective/loss"] == r["objective/loss"] for r in trained)  # finite, logged
    assert any("plackett_luce/group_frac" in r for r in trained)
