"""Reward audit: per-completion statuses (conspo.rewards) and `conspo audit-rewards` (conspo/audit.py),
on a small synthetic training-run directory and `conspo eval` directory."""

from __future__ import annotations

import json

import pytest

from conspo.audit import audit, main
from conspo.rewards import STATUSES, MathVerifier


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(num_workers=1, timeout_s=5.0)
    yield v
    v.close()


def test_statuses_per_completion(verifier):
    completions = [
        r"So the answer is $\boxed{\frac{1}{2}}$.",  # correct (symbolic)
        r"\boxed{0.5}",  # correct (fast path would not catch it)
        r"\boxed{3}",  # wrong
        "I am not sure.\nLet me think about it more.",  # no_answer (no marker, no number)
        r"\boxed{5}",  # gold cannot be parsed
    ]
    golds = [r"\frac12", r"\frac{1}{2}", "4", "4", "np.arcsin(10/13)"]
    r = verifier.score(completions, golds)
    assert r.statuses == ["correct", "correct", "wrong", "no_answer", "gold_unparsable"]
    assert r.scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert r.answers[0] == r"\frac{1}{2}" and r.answers[3] is None
    assert (r.no_answer, r.gold_unparsable, r.timeouts, r.errors) == (1, 1, 0, 0)
    counts = r.status_counts()
    assert set(counts) == set(STATUSES) and sum(counts.values()) == 5
    assert r.fraction("no_answer") == pytest.approx(0.2)
    again = verifier.score(completions, golds)  # from the cache: same statuses
    assert again.statuses == r.statuses


def test_timeout_status():
    with MathVerifier(num_workers=1, timeout_s=1.0) as v:
        v.score([r"\boxed{0.5}"], [r"\frac{1}{3}"])  # start the worker
        r = v.score([r"\boxed{9^{9^{9^{9}}}}", r"\boxed{2}"], ["5", "2"])
    assert r.statuses == ["timeout", "correct"] and r.timeouts == 1
    assert r.fraction("timeout") == 0.5


@pytest.fixture()
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _write_jsonl(
        d / "samples.jsonl",
        [
            {"step": 10, "prompt": "p", "answer": "12", "completion": r"so $\boxed{12}$", "reward": 1.0},
            {"step": 10, "prompt": "p", "answer": "12", "completion": r"so $\boxed{13}$", "reward": 0.0},
            # the gold is in the text but the box says otherwise: shown first among the wrong ones
            {
                "step": 10,
                "prompt": "p",
                "answer": "12",
                "completion": "It could be 12.\nSo $\\boxed{21}$",
                "reward": 0.0,
            },
            {"step": 20, "prompt": "p", "answer": "7", "completion": "no idea\nreally", "reward": 0.0},
            # recorded as wrong by an older verifier, correct now
            {"step": 20, "prompt": "p", "answer": r"\frac{1}{3}", "completion": r"$\boxed{0.333333}$", "reward": 0.0},
            {"step": 20, "prompt": "p", "answer": "np.arcsin(10/13)", "completion": r"\boxed{1}", "reward": 0.0},
        ],
    )
    return d


def test_audit_run_dir(run_dir, capsys):
    summary = audit(run_dir, workers=1, samples=2)
    out = capsys.readouterr().out
    assert summary["n"] == 6
    assert summary["counts"] == {"correct": 2, "wrong": 2, "no_answer": 1, "gold_unparsable": 1}
    assert summary["changed"] == 1 and summary["gold_near_end"] == 1
    assert "samples.jsonl" in out and "training samples" in out
    for status in STATUSES:
        assert f"| {status} |" in out
    assert "== wrong: 2 of 2" in out and "[gold near the end]" in out
    assert "== no_answer: 1 of 1" in out and "extracted: (none)" in out
    assert "== gold_unparsable: 1 of 1" in out and "np.arcsin" in out
    assert "recorded scores this check does not reproduce: 1 of 6" in out
    assert "step 20: recorded 0, now 1 (correct)" in out


def test_audit_eval_dir_cli(tmp_path, capsys):
    d = tmp_path / "eval"
    d.mkdir()
    rows = []
    for bench, gold, texts in [
        ("math500", r"\frac{3}{4}", [r"\boxed{0.75}", r"\boxed{3/4}", "nothing\nhere"]),
        ("gsm8k", "18", ["She earns 9 * 2 = 18 dollars.\n#### 18", "#### 20"]),
    ]:
        for j, text in enumerate(texts):
            rows.append(
                {
                    "benchmark": bench,
                    "id": f"{bench}-0",
                    "sample": j,
                    "answer": gold,
                    "completion": text,
                    "score": 1.0 if j == 0 else 0.0,
                    "length": 10,
                    "truncated": False,
                }
            )
    _write_jsonl(d / "completions.jsonl", rows)
    out_file = tmp_path / "statuses.jsonl"
    assert main([str(d), "--workers", "1", "--samples", "1", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "completions.jsonl" in out and "evaluation completions" in out
    assert "| math500 | 3 |" in out and "| gsm8k | 2 |" in out
    assert "math500 math500-0 sample" in out or "gsm8k gsm8k-0 sample" in out
    statuses = [json.loads(line)["status"] for line in out_file.read_text().splitlines()]
    assert statuses == ["correct", "correct", "no_answer", "correct", "wrong"]
    # one benchmark only, strict extraction: the unmarked completion has no answer either way
    assert main([str(d), "--workers", "1", "--benchmark", "gsm8k", "--strict", "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "strict extraction" in out and "(2 evaluation completions" in out


def test_audit_missing_files(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no completions.jsonl or samples.jsonl" in capsys.readouterr().err


def test_audit_second_opinion(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    _write_jsonl(
        d / "samples.jsonl",
        [
            {"step": 1, "prompt": "p", "answer": "12", "completion": r"so $\boxed{12}$", "reward": 1.0},  # all agree
            # recorded 0 (an older verifier), plain math-verify and strict extraction say 1: false-negative candidate
            {"step": 1, "prompt": "p", "answer": r"\frac{1}{3}", "completion": r"$\boxed{0.333333}$", "reward": 0.0},
            # recorded 1, plain math-verify reads the thin spaces as a product: false-positive candidate to look at
            {
                "step": 2,
                "prompt": "p",
                "answer": "3628800",
                "completion": r"$10! = \boxed{3\,628\,800}$",
                "reward": 1.0,
            },
            # recorded 1 with no marker: strict extraction disagrees, plain math-verify agrees
            {
                "step": 2,
                "prompt": "p",
                "answer": "7",
                "completion": "We add $3+4$.\nSo the total is $7$",
                "reward": 1.0,
            },
        ],
    )
    summary = audit(d, workers=1, samples=3, second_opinion=True)
    out = capsys.readouterr().out
    so = summary["second_opinion"]
    assert so == {
        "compared": 4,
        "fn_candidates": 1,
        "fp_candidates": 1,
        "disagree_math_verify": 2,
        "disagree_strict": 2,
    }
    assert out.index("== false-negative candidates: 1 of 1") < out.index("== false-positive candidates: 1 of 1")
    assert "0.333333" in out and "math-verify 1, strict 1" in out
    assert main([str(d), "--workers", "1", "--second-opinion", "--decimal-match", "nonsense"]) == 2
    assert "decimal_match" in capsys.readouterr().err


def test_math_task_reward_audit_every(tmp_path):
    """task=math with reward_audit_every=2: every second scored batch also logs how often plain
    math-verify and strict extraction disagree with the reward."""
    from conspo.tasks import Problem
    from conspo.tasks.math_task import MathTask

    data = tmp_path / "p.jsonl"
    _write_jsonl(data, [{"problem": "1+1?", "answer": "2"}, {"problem": "6!?", "answer": "720"}])
    task = MathTask(train=str(data), heldout=str(data), reward_audit_every=2)
    problems = [
        Problem(id="0", prompt="p", answer="2"),
        Problem(id="1", prompt="p", answer="3628800"),
        Problem(id="2", prompt="p", answer="5"),
        Problem(id="3", prompt="p", answer="7"),
    ]
    completions = [r"\boxed{2}", r"$\boxed{3\,628\,800}$", r"\boxed{4}", "We add $3+4$.\nSo the total is $7$"]
    assert task.score(problems, completions) == [1.0, 1.0, 0.0, 1.0]
    assert "reward/second_opinion_disagree_frac" not in task.last_score_metrics()  # first batch: no audit
    task.score(problems, completions)
    m = task.last_score_metrics()
    # plain math-verify misreads the thin spaces (disagrees, a false-positive candidate); strict
    # extraction finds no marker in the last completion (it scores 0, the reward 1: not an FN)
    assert m["reward/second_opinion_disagree_frac"] == 0.25
    assert m["reward/second_opinion_fp_frac"] == 0.25 and m["reward/second_opinion_fn_frac"] == 0.0
    assert m["reward/ambiguous_frac"] == 0.0
    with pytest.raises(ValueError, match="reward_audit_every"):
        MathTask(train=str(data), heldout=str(data), reward_audit_every=-1)
