"""`conspo eval`: pass@k estimator, aggregation, and an end-to-end CLI run checked by hand count."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conspo.benchmark_eval import pass_at_k, summarise_benchmark
from conspo.errors import ConfigError


def brute_force_pass_at_k(n, c, k):
    """1 - C(n-c, k) / C(n, k), with exact integers."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_pass_at_k_matches_the_combinatorial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(n, 0, 1) == 0.0 and pass_at_k(n, n, 1) == 1.0


def test_pass_at_1_is_the_mean_and_bad_arguments_raise():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_summarise_benchmark():
    r = summarise_benchmark([1.0, 0.0], [1, 0, 0, 0, 1, 1, 1, 1], 4, [3, 4, 5, 6, 1, 1, 1, 1], [False] * 7 + [True])
    assert r["greedy_accuracy"] == 0.5 and r["avg@4"] == pytest.approx(5 / 8)
    assert r["pass@k"]["1"] == pytest.approx(5 / 8)
    assert r["pass@k"]["2"] == pytest.approx((brute_force_pass_at_k(4, 1, 2) + 1.0) / 2)
    assert r["mean_length"] == 2.75 and r["truncated_frac"] == 1 / 8


@pytest.mark.slow
def test_eval_cli_end_to_end_matches_hand_count(tmp_path):
    from conspo.tasks import get_task
    from conspo.tasks.math_data import default_data_dir
    from conspo.warmup import tiny_base

    if default_data_dir() is None:
        pytest.skip("shared benchmark data not available")
    task = get_task("addition")
    _, _, base = tiny_base(
        task, steps=200, lr=1.5e-3, batch_size=128, seed=0, cache_dir=tmp_path / "cache", log=lambda *a: None
    )
    addition = tmp_path / "addition.jsonl"
    with open(addition, "w") as f:
        for p in task.heldout_problems()[:24]:
            f.write(json.dumps({"id": p.id, "problem": p.prompt, "answer": p.answer}) + "\n")
    names = ["math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "gsm8k"]
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "conspo",
            "eval",
            "--model",
            str(base),
            "--benchmarks",
            ",".join([str(addition)] + names),
            "--limit",
            "24",
            "--k",
            "4",
            "--max-new-tokens",
            "6",
            "--template",
            "raw",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    assert set(results["benchmarks"]) == {str(addition), *names}
    assert results["versions"]["torch"] and results["settings"]["template"] == "raw"
    rows = [json.loads(line) for line in open(out / "completions.jsonl")]
    # hand count: re-grade every saved completion independently and rebuild each number
    for name, reported in results["benchmarks"].items():
        mine = [r for r in rows if r["benchmark"] == name]
        if name == str(addition):  # exact string match is an independent grader for addition
            grade = lambda r: r["completion"].strip() == r["answer"]  # noqa: E731
        else:
            grade = lambda r: r["score"] == 1.0  # noqa: E731
        greedy = [grade(r) for r in mine if r["sample"] == "greedy"]
        by_problem = {}
        for r in mine:
            if r["sample"] != "greedy":
                by_problem.setdefault(r["id"], []).append(grade(r))
        assert reported["n"] == len(greedy)
        assert reported["greedy_accuracy"] == pytest.approx(sum(greedy) / len(greedy))
        assert reported["avg@4"] == pytest.approx(sum(map(sum, by_problem.values())) / (4 * len(by_problem)))
        for k in (1, 2, 4):
            expected = sum(brute_force_pass_at_k(4, sum(v), k) for v in by_problem.values()) / len(by_problem)
            assert reported["pass@k"][str(k)] == pytest.approx(expected)
        samples = [r for r in mine if r["sample"] != "greedy"]
        assert reported["truncated_frac"] == pytest.approx(sum(r["truncated"] for r in samples) / len(samples))
        assert reported["no_answer_frac"] == pytest.approx(sum(r["status"] == "no_answer" for r in mine) / len(mine))
        assert all((r["status"] == "correct") == (r["score"] == 1.0) for r in mine)
    add = results["benchmarks"][str(addition)]
    assert 0 < add["greedy_accuracy"] < 1, "the base should be partly competent: the hand count is not vacuous"
    assert "| aime24 |" in proc.stdout


def test_eval_defaults_to_the_tiny_models_own_task_and_warns_on_unreadable_prompts(tmp_path, monkeypatch):
    """A run directory of the tiny model: the addition held-out split, its 6-token limit, the task's
    own check (re-graded here by exact match), and a warning for prompts its tokenizer cannot read."""
    from conspo.benchmark_eval import EvalSettings, run_eval
    from conspo.models import save_pretrained
    from conspo.tasks import get_task
    from conspo.warmup import tiny_base

    task = get_task("addition")
    model, tokenizer, _ = tiny_base(
        task, steps=30, lr=1.5e-3, batch_size=64, seed=0, cache_dir=tmp_path / "cache", log=lambda *a: None
    )
    run = tmp_path / "run"
    save_pretrained(model, tokenizer, run / "final", tiny_task="addition")
    messages, threads = [], []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # --threads reaches torch (and no further)
    results = run_eval(
        EvalSettings(model=str(run), k=2, limit=12, output_dir=str(tmp_path / "eval"), threads=1), log=messages.append
    )
    assert threads == [1] and results["settings"]["threads"] == 1
    with pytest.raises(ConfigError, match="--threads must be >= 0"):
        run_eval(EvalSettings(model=str(run), threads=-1, output_dir=str(tmp_path / "eval3")))
    add = results["benchmarks"]["addition"]
    assert add["n"] == 12 and add["max_new_tokens"] == task.max_new_tokens
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "completions.jsonl")]
    answers = {p.id: p.answer for p in task.heldout_problems()}
    greedy = [r["completion"].strip() == answers[r["id"]] for r in rows if r["sample"] == "greedy"]
    assert add["greedy_accuracy"] == pytest.approx(sum(greedy) / 12)
    assert not any("WARNING" in m for m in messages)

    words = tmp_path / "words.jsonl"
    words.write_text(json.dumps({"id": "w", "problem": "What is two plus two?", "answer": "4"}) + "\n")
    messages.clear()
    run_eval(
        EvalSettings(
            model=str(run),
            benchmarks=[str(words)],
            k=1,
            max_new_tokens=2,
            template="raw",
            output_dir=str(tmp_path / "eval2"),
        ),
        log=messages.append,
    )
    assert any("unknown to this model's tokenizer" in m for m in messages), messages


def test_late_generation_averages_the_last_tenth_of_steps():
    from conspo.compare import generation_curve, late_generation

    metrics = [{"step": 0, "heldout/accuracy": 0.1}]
    metrics += [
        {"step": s, "gen/completion_len_mean": float(s), "gen/truncated_frac": 0.5 if s > 18 else 0.0}
        for s in range(1, 21)
    ]
    curve = generation_curve(metrics)
    assert curve[0] == (1, 1.0, 0.0) and len(curve) == 20
    assert late_generation({"generation": curve}) == (19.5, 0.5)  # steps 19 and 20
    assert late_generation({"curve": []}) is None  # a run from before lengths were recorded


def test_compare_table_rows_have_a_cell_per_column():
    from conspo.compare import format_table, summarise

    run = {
        "heldout_accuracy_before": 0.5,
        "heldout_accuracy_after": 0.7,
        "curve": [(0, 0.5), (10, 0.7)],
        "wall_seconds": 12.0,
        "generation": [(1, 30.0, 0.0), (2, 32.0, 0.25)],
    }
    lines = format_table(summarise({"conspo": [run, run]}, 0.6), 0.6, steps=10).splitlines()
    header, row = lines[0], lines[2]
    assert header.count("|") == row.count("|") == 10, (header, row)  # 9 columns, the best step among them
    assert "| 32.0 | 25.0% |" in row  # late length and truncation: 10% of two steps is the last one


def test_compare_takes_seeds_from_seed():
    from conspo.compare import compare
    from conspo.config import TrainConfig

    seen = []

    def fake_train(cfg, log=None):
        seen.append((cfg.objective, cfg.seed))
        return {"heldout_accuracy_before": 0.1, "heldout_accuracy_after": 0.2, "wall_seconds": 1.0}

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        import os

        for name in ("conspo", "grpo"):
            for seed in (5, 6):
                os.makedirs(f"{tmp}/{name}-seed{seed}")
                with open(f"{tmp}/{name}-seed{seed}/metrics.jsonl", "w") as f:
                    f.write('{"step": 0, "heldout/accuracy": 0.1}\n')
        compare(
            TrainConfig(seed=5, output_dir=tmp),
            objectives=["conspo", "grpo"],
            seeds=2,
            train_fn=fake_train,
            log=lambda *a: None,
        )
    assert seen == [("conspo", 5), ("conspo", 6), ("grpo", 5), ("grpo", 6)]


def test_summarize_compare_reads_compare_folders_and_plain_train_runs_once_each(tmp_path):
    """bench/summarize_compare.py: a compare.json's runs count once (not again through their own
    summary.json), and a `conspo train` run directory that no compare.json lists counts too."""
    import json
    import sys
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    from conspo.config import TrainConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from summarize_compare import collect

    def run_dir(path, objective, seed, lr):
        path.mkdir(parents=True)
        (path / "config.yaml").write_text(yaml.safe_dump(asdict(TrainConfig(objective=objective, seed=seed, lr=lr))))
        summary = {"objective": objective, "seed": seed, "heldout_accuracy_before": 0.5, "heldout_accuracy_after": 0.7}
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "metrics.jsonl").write_text(
            json.dumps({"step": 0, "heldout/accuracy": 0.5})
            + "\n"
            + json.dumps({"step": 4, "heldout/accuracy": 0.7})
            + "\n"
        )
        return summary

    listed = run_dir(tmp_path / "cmp" / "conspo-seed0", "conspo", 0, 1e-6)
    (tmp_path / "cmp" / "compare.json").write_text(
        json.dumps({"runs": {"conspo": [{**listed, "curve": [[0, 0.5], [4, 0.7]]}]}})
    )
    run_dir(tmp_path / "solo", "grpo", 3, 2e-6)
    rows = collect([str(tmp_path)])
    assert sorted(rows) == ["conspo [lr=1e-06]", "grpo [lr=2e-06]"]
    assert len(rows["conspo [lr=1e-06]"]) == 1
    (solo,) = rows["grpo [lr=2e-06]"]
    assert solo["seed"] == 3 and solo["curve"] == [(0, 0.5), (4, 0.7)]
    assert collect([str(tmp_path / "solo")]) == {"grpo [lr=2e-06]": [solo]}
