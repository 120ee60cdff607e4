"""The chain task: its generator, its final-answer verifier, its held-out split, and the tiny model built for it."""

import json
import re

import pytest

from conspo.tasks import get_task
from conspo.tasks.chain import ChainTask, final_answer, worked_chain


@pytest.fixture(scope="module")
def task():
    return get_task("chain")


def test_problems_are_worked_chains_of_varying_length(task):
    problems = task.train_problems() + task.heldout_problems()
    lengths = [len(task.solution(p)) for p in problems]
    assert min(lengths) >= 10 and max(lengths) <= 64
    assert {p.meta["terms"] for p in problems} == {4, 5, 6, 7}
    seen_terms = set()
    for p in problems[:2000]:
        terms = [int(t) for t in p.prompt.rstrip("=").split("+")]
        seen_terms.update(terms)
        assert all(1 <= t <= 19 for t in terms) and p.answer == str(sum(terms))
        steps = task.solution(p).split("=")
        assert len(steps) == len(terms) - 1
        numbers = terms
        for step in steps:  # each step adds the first two numbers and copies the rest
            numbers = [numbers[0] + numbers[1], *numbers[2:]]
            assert step == "+".join(map(str, numbers))
        assert task.score([p], [task.solution(p)]) == [1.0]
    assert seen_terms == set(range(1, 20))  # one- and two-digit terms
    assert task.max_new_tokens > max(lengths)  # room for the longest chain and its end-of-sequence token


def test_heldout_split_is_fixed_and_never_trained_on(task):
    train = {p.prompt for p in task.train_problems()}
    heldout = [p.prompt for p in task.heldout_problems()]
    assert len(heldout) == len(set(heldout)) == 500 and not train & set(heldout)
    again = ChainTask()  # another instance (another training seed, another process) gets the same split
    assert [p.prompt for p in again.heldout_problems()] == heldout
    assert [p.prompt for p in ChainTask(seed=1).heldout_problems()] != heldout


def test_only_the_final_answer_is_verified(task):
    p = task.heldout_problems()[0]
    terms = [int(t) for t in p.prompt.rstrip("=").split("+")]
    total = sum(terms)
    right = worked_chain(terms)
    first = str(terms[0] + terms[1])
    slipped = str(terms[0] + terms[1] + 1) + right[len(first) :]  # a wrong first step ...
    slipped = re.sub(r"=\d+$", f"={total}", slipped)  # ... that still ends on the right total
    assert slipped != right
    cases = {
        right: 1.0,
        slipped: 1.0,  # a wrong chain with the right final answer scores 1
        f"{right} ": 1.0,  # trailing spaces
        re.sub(r"=\d+$", f"={total + 1}", right): 0.0,  # a long chain ending on a wrong total scores 0
        f"{right}+1": 0.0,  # does not end on an answer
        right[:-1]: 0.0,  # cut off mid-answer (truncated at the limit)
        "": 0.0,
        f"={total}": 1.0,  # the answer alone is a (short) right answer
        f"{total}": 0.0,  # no "=": not an answer in this task's format
    }
    for completion, expected in cases.items():
        assert task.score([p], [completion]) == [expected], completion
    task.score([p] * 4, [right, slipped, slipped, "=0"])
    assert task.last_score_metrics() == {"reward/exact_chain_frac": 0.25, "reward/right_answer_wrong_chain_frac": 0.5}
    assert final_answer("1+2=3") == 3 and final_answer("1+2=03") == 3 and final_answer("1+2=") is None


def test_constructor_refuses_bad_sizes():
    with pytest.raises(ValueError, match="2 <= min_terms <= max_terms <= 8"):
        ChainTask(min_terms=5, max_terms=4)
    with pytest.raises(ValueError, match="train_size and heldout_size must be >= 1"):
        ChainTask(heldout_size=0)
    with pytest.raises(ValueError, match="only 12 distinct problems"):
        ChainTask(min_terms=2, max_terms=3, largest_term=2, train_size=10, heldout_size=5)
    assert len(ChainTask(min_terms=2, max_terms=3, largest_term=2, train_size=9, heldout_size=3).train_problems()) == 9


def test_tiny_base_is_warmed_up_on_the_chains_and_eval_picks_its_task(tmp_path, task):
    """The warm-up teaches the worked chain (not the bare answer), the model knows positions past 64,
    and `conspo eval` on it scores the chain task's held-out split by default."""
    from conspo.benchmark_eval import EvalSettings, run_eval
    from conspo.models import TINY_MARKER
    from conspo.warmup import supervised_warmup, tiny_base

    model, tokenizer, path = tiny_base(
        task, steps=2, lr=1e-3, batch_size=8, seed=0, cache_dir=tmp_path / "cache", log=lambda *a: None
    )
    assert json.loads((path / TINY_MARKER).read_text())["task"] == "chain"
    assert (
        model.config.max_position_embeddings >= max(len(p.prompt) for p in task.train_problems()) + task.max_new_tokens
    )

    seen = []
    real_tokenizer_call = type(tokenizer).__call__

    def spy(self, texts, *args, **kwargs):
        seen.extend(texts)
        return real_tokenizer_call(self, texts, *args, **kwargs)

    type(tokenizer).__call__ = spy
    try:
        supervised_warmup(model, tokenizer, task, steps=1, lr=1e-4, batch_size=4, seed=0)
    finally:
        type(tokenizer).__call__ = real_tokenizer_call
    targets = [t for t in seen if t.endswith(tokenizer.eos_token)]
    solutions = {task.solution(p) + tokenizer.eos_token for p in task.train_problems()}
    assert len(targets) == 4 and set(targets) <= solutions

    results = run_eval(
        EvalSettings(model=str(path), k=1, limit=4, output_dir=str(tmp_path / "eval")), log=lambda *a: None
    )
    assert list(results["benchmarks"]) == ["chain"]
    assert results["benchmarks"]["chain"]["max_new_tokens"] == task.max_new_tokens


def test_task_defaults_apply_under_what_was_given(tmp_path):
    """--task chain brings its own warm-up and budget; options given on the command line or in --config win."""
    import argparse

    from conspo.cli import add_config_arguments, config_from_args
    from conspo.config import TASK_DEFAULTS, TrainConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    cfg, explicit = config_from_args(parser.parse_args(["--task", "chain"]))
    assert all(getattr(cfg, k) == v for k, v in TASK_DEFAULTS["chain"].items())
    assert cfg.sft_steps != TrainConfig().sft_steps and explicit == {"task"}
    config = tmp_path / "run.yaml"
    config.write_text("task: chain\nsteps: 40\n")
    cfg, _ = config_from_args(parser.parse_args(["--config", str(config), "--sft-steps", "7"]))
    assert (cfg.steps, cfg.sft_steps, cfg.sft_lr) == (40, 7, TASK_DEFAULTS["chain"]["sft_lr"])
    cfg, _ = config_from_args(parser.parse_args([]))  # the default task keeps the dataclass defaults
    assert cfg == TrainConfig()


def test_chain_faithfulness_classifies_each_kind_of_chain():
    """bench/chain_faithfulness.py: the worked chain is exact; a slip followed faithfully is told apart
    from a right total reached after a slip (the model left its own chain) and from other errors."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from chain_faithfulness import classify

    from conspo.tasks.chain import worked_chain

    rng = random.Random(0)
    for _ in range(200):
        terms = [rng.randint(1, 19) for _ in range(rng.randint(4, 7))]
        assert classify(terms, worked_chain(terms), sum(terms)) == ("exact", 0, 0)
    terms = [7, 15, 9, 2]
    assert classify(terms, "22+9+2=30+2=32", 33) == ("wrong, slip then faithful", 1, 1)
    assert classify(terms, "22+9+2=30+2=33", 33) == ("right via a wrong chain", 1, 0)
    assert classify(terms, "21+9+2=31+2=33", 33) == ("right via a wrong chain", 2, 1)
    assert classify(terms, "22+9=31+2=33", 33) == ("right via a wrong chain", 2, 1)  # a term dropped
    assert classify(terms, "21+9+2=31+2=34", 33) == ("wrong, other", 2, 0)
    assert classify(terms, "22+9+2=31+2", 33) == ("wrong, other", 0, 0)  # does not end on one number
    assert classify(terms, "22+9+2=3a", 33) == ("wrong, other", 0, 0)
