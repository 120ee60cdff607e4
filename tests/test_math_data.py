"""Tests for conspo.tasks.math_data: loaders, validation messages, templates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conspo.tasks.math_data import (
    BENCHMARK_SIZES,
    BENCHMARKS,
    PROMPT_TEMPLATES,
    Example,
    build_prompt,
    default_data_dir,
    gsm8k_final_answer,
    load_benchmark,
    load_hf_dataset,
    load_jsonl,
)

DATA = Path(__file__).parent / "data"
SHARED = default_data_dir() or Path("/nonexistent")
needs_shared = pytest.mark.skipif(
    not (SHARED / "math500" / "test.jsonl").is_file(), reason=f"shared benchmark data not found at {SHARED}"
)


# ------------------------------------------------------------------------------------------
# shared benchmarks
# ------------------------------------------------------------------------------------------


def test_benchmark_tables_agree():
    assert set(BENCHMARKS) == set(BENCHMARK_SIZES)


@needs_shared
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_shared_benchmark_loads(name):
    examples = load_benchmark(name)
    assert len(examples) == BENCHMARK_SIZES[name]  # the counts of ../shared/data/README.md
    assert examples.report.n_skipped == 0 and examples.report.n_loaded == len(examples)
    assert len({e.id for e in examples}) == len(examples)
    assert all(e.problem.strip() and e.answer.strip() and e.source for e in examples)
    if name.startswith("gsm8k"):  # the number after ####, commas removed (data README)
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", e.answer) for e in examples)
    if name in ("aime24", "aime25", "amc23"):
        assert all(re.fullmatch(r"-?\d+", e.answer) for e in examples)  # amc23 has one "-1"


@needs_shared
def test_benchmark_example_fields():
    ex = next(e for e in load_benchmark("math500") if e.id == "test/precalculus/807.json")
    assert ex.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert ex.extra["subject"] == "Precalculus" and "solution" in ex.extra
    row = ex.as_dict()
    assert row["id"] == ex.id and row["answer"] == ex.answer and row["level"] == ex.extra["level"]


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are: math500, aime24"):
        load_benchmark("math5000")


def test_missing_data_dir_says_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CONSPO_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"--data-dir PATH .*CONSPO_DATA_DIR") as info:
        load_benchmark("aime24", data_dir=tmp_path / "nowhere")
    assert "aime24/test.jsonl" in str(info.value)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "amc23").mkdir()
    (tmp_path / "amc23" / "test.jsonl").write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n")
    monkeypatch.setenv("CONSPO_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    examples = load_benchmark("amc23")
    assert [(e.id, e.answer, e.source) for e in examples] == [("a", "2", "amc23")]
    monkeypatch.delenv("CONSPO_DATA_DIR")
    beside_checkout = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    assert default_data_dir() == (beside_checkout if beside_checkout.is_dir() else None)


def test_installed_copy_without_data_dir_names_both_ways_to_set_it(monkeypatch):
    import conspo.tasks.math_data as math_data

    monkeypatch.delenv("CONSPO_DATA_DIR", raising=False)
    monkeypatch.setattr(math_data, "development_data_dir", lambda: None)  # as in site-packages
    with pytest.raises(FileNotFoundError, match=r"no data directory given.*--data-dir PATH.*CONSPO_DATA_DIR=PATH"):
        load_benchmark("math500")


# ------------------------------------------------------------------------------------------
# JSONL validation
# ------------------------------------------------------------------------------------------


def test_load_good_fixture():
    examples = load_jsonl(DATA / "math_good.jsonl")
    assert [e.id for e in examples] == ["g1", "g2", "3"]
    assert [e.answer for e in examples] == ["2", r"\frac{1}{2}", "6"]  # 6.0 -> "6"
    assert examples[0].source == "fixture" and examples[1].source == "math_good"
    assert examples[0].extra == {"level": 1}
    assert examples.report.n_rows == 3 and examples.report.n_skipped == 0


# (line, field or None, message fragment) for each bad row of tests/data/math_malformed.jsonl
MALFORMED = [
    (2, None, "invalid JSON"),
    (3, "answer", "field 'answer' is missing"),
    (4, "problem", "field 'problem' is empty"),
    (5, "answer", "field 'answer' must be a string or a number, got list"),
    (6, None, "expected a JSON object, got list"),
    (7, "id", "field 'id': duplicate id 'ok1' (first seen on line 1)"),
]


@pytest.mark.parametrize("line,field,fragment", MALFORMED)
def test_malformed_row_errors_name_file_line_field(tmp_path, line, field, fragment):
    lines = (DATA / "math_malformed.jsonl").read_text().splitlines()
    # The first (good) row, blank lines, then the bad row on the same line number as in the fixture.
    path = tmp_path / "one_bad.jsonl"
    path.write_text("\n".join([lines[0]] + [""] * (line - 2) + [lines[line - 1]]) + "\n")
    with pytest.raises(ValueError) as info:
        load_jsonl(path)
    msg = str(info.value)
    assert f"{path} line {line}:" in msg and fragment in msg
    if field:
        assert repr(field) in msg


def test_first_error_raises_on_the_fixture():
    with pytest.raises(ValueError, match=r"math_malformed\.jsonl line 2: invalid JSON"):
        load_jsonl(DATA / "math_malformed.jsonl")


def test_skip_mode_counts():
    examples = load_jsonl(DATA / "math_malformed.jsonl", on_error="skip")
    assert [e.id for e in examples] == ["ok1", "ok2"]
    rep = examples.report
    assert (rep.n_rows, rep.n_loaded, rep.n_skipped) == (8, 2, 6)
    assert [int(re.search(r"line (\d+):", m).group(1)) for m in rep.skipped] == [line for line, _, _ in MALFORMED]


def test_non_utf8_row(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b", "problem": "caf\xe9", "answer": "1"}\n'
    )
    with pytest.raises(ValueError, match=r"latin1\.jsonl line 2: not valid UTF-8 \(byte 0xe9"):
        load_jsonl(path)
    assert len(load_jsonl(path, on_error="skip")) == 1


def test_oversized_row(tmp_path):
    path = tmp_path / "big.jsonl"
    big = json.dumps({"id": "big", "problem": "x" * (1 << 20), "answer": "1"})
    path.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n" + big + "\n")
    with pytest.raises(ValueError, match=r"big\.jsonl line 2: row is 1,048,6\d\d bytes, over the 1,048,576-byte limit"):
        load_jsonl(path)
    examples = load_jsonl(path, on_error="skip")
    assert len(examples) == 1 and examples.report.n_skipped == 1


def test_custom_fields_and_generated_ids(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"question": q, "final": a}) for q, a in [("2+2?", 4), ("3*3?", "9")]) + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'id' is missing .*id_field=None"):
        load_jsonl(path, problem_field="question", answer_field="final")
    examples = load_jsonl(path, problem_field="question", answer_field="final", id_field=None)
    assert [(e.id, e.problem, e.answer) for e in examples] == [("qa-1", "2+2?", "4"), ("qa-2", "3*3?", "9")]


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no usable rows"):
        load_jsonl(tmp_path / "blank.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        load_jsonl(DATA / "math_good.jsonl", on_error="ignore")


# ------------------------------------------------------------------------------------------
# Hugging Face datasets (offline, through the "json" builder)
# ------------------------------------------------------------------------------------------


def test_hf_loader_local_json(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "gsm_like.jsonl"
    rows = [
        {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3+2=5\n#### 5"},
        {"question": "A shirt costs $1,200 / 100. Price?", "answer": "1200/100=12\n#### 1,2"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples = load_hf_dataset(
        str(path),
        "train",
        problem_field="question",
        answer_fn=lambda r: gsm8k_final_answer(r["answer"]),
        cache_dir=str(tmp_path / "cache"),
    )
    assert [(e.id, e.answer) for e in examples] == [("gsm_like-train-0", "5"), ("gsm_like-train-1", "12")]
    assert examples[0].source == "gsm_like" and examples[0].extra == {}
    # The "json" builder with data_files, an id column, and validation naming the row and field.
    path2 = tmp_path / "with_ids.json"
    path2.write_text(
        json.dumps([{"uid": "p1", "problem": "1+1?", "answer": "2"}, {"uid": "p2", "problem": "", "answer": "3"}])
    )
    with pytest.raises(ValueError, match=r"json\[train\] row 1: field 'problem' is empty"):
        load_hf_dataset("json", "train", data_files=str(path2), id_field="uid", cache_dir=str(tmp_path / "cache"))
    ok = load_hf_dataset(
        "json", "train", data_files=str(path2), id_field="uid", on_error="skip", cache_dir=str(tmp_path / "cache")
    )
    assert [e.id for e in ok] == ["p1"] and ok.report.n_skipped == 1


def test_gsm8k_final_answer():
    assert gsm8k_final_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gsm8k_final_answer("#### 1,250") == "1250"
    with pytest.raises(ValueError):
        gsm8k_final_answer("no marker")


# ------------------------------------------------------------------------------------------
# prompt templates
# ------------------------------------------------------------------------------------------

EX = Example(id="t1", problem="What is $1+1$?", answer="2", source="test")


def test_plain_renderings():
    assert build_prompt(EX, "plain") == "What is $1+1$?\nAnswer:"
    qwen = build_prompt(EX)  # default template, no tokenizer
    assert "What is $1+1$?" in qwen and r"\boxed{}" in qwen
    r1 = build_prompt({"problem": "What is $1+1$?"}, "r1")
    assert "<think>" in r1 and "<answer>" in r1 and r1.endswith("Assistant: <think>")
    assert build_prompt("2+2?", "plain") == "2+2?\nAnswer:"
    with pytest.raises(ValueError, match="valid templates are: qwen_math_boxed, r1, plain"):
        build_prompt(EX, "chatml")
    with pytest.raises(TypeError):
        build_prompt(123, "plain")


def _chat_tokenizer(template: str | None):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = template
    return fast


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_chat_template_rendering():
    tok = _chat_tokenizer(CHATML)
    out = build_prompt(EX, "qwen_math_boxed", tok)
    assert out == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        build_prompt(EX, "plain", tok) == "<|im_start|>user\nWhat is $1+1$?\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(EX, "plain", tok, chat=False) == "What is $1+1$?\nAnswer:"
    merged = build_prompt(EX, "r1", _chat_tokenizer(NO_SYSTEM))
    assert merged.startswith("[user] A conversation between User and Assistant.") and merged.endswith("[assistant]")
    no_template = _chat_tokenizer(None)
    assert build_prompt(EX, "plain", no_template) == "What is $1+1$?\nAnswer:"
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(EX, "plain", no_template, chat=True)


def test_templates_answer_format_is_understood_by_the_reward():
    from conspo.rewards import extract_answer

    assert set(PROMPT_TEMPLATES) == {"qwen_math_boxed", "r1", "plain", "raw"}
    assert extract_answer(r"... so the total is \boxed{2}.") == "2"  # qwen_math_boxed
    assert extract_answer(" 1+1 is two </think> <answer> 2 </answer>") == "2"  # r1 (prompt ends in <think>)
    assert extract_answer(" 2") == "2"  # plain (generation stops at the end of the line)


@needs_shared
def test_math_task_builds_prompts_and_scores(tmp_path):
    from conspo.config import TrainConfig
    from conspo.run import make_task

    task = make_task(TrainConfig(task="math", train_data="amc23", eval_data="aime24"))
    problems = task.heldout_problems()
    assert len(problems) == 30 and "\\boxed{}" in problems[0].prompt
    scores = task.score(problems[:2], [f"so \\boxed{{{problems[0].answer}}}", "\\boxed{nonsense}"])
    assert scores == [1.0, 0.0]
