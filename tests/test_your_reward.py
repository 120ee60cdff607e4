"""Your model, your data, your reward: `conspo train --model DIR --train-data x.jsonl --reward r.py:fn`.

A small random Qwen2 saved with a character tokenizer is the user's model; a JSONL with TRL's `prompt`
field is the user's data; a graded reward whose scores all stay below 0.5 is the user's reward.
"""

import asyncio
import json
import math

import pytest
from helpers import read_jsonl, run_cli

from conspo.models import build_char_tokenizer, build_tiny_model
from conspo.rewards import RewardError, RewardSet, load_reward

CHARS = "0123456789+=abcdefghijklmnopqrstuvwxyz "

GRADED = '''
def graded(prompts, completions, answer, **kwargs):
    """Below 0.5 always: 0.45 * the share of digits in the completion (0 when empty)."""
    assert len(answer) == len(completions), "every other column arrives as a keyword"
    return [0.45 * sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


async def length_bonus(prompts, completions, **kwargs):
    return [None if not c else 0.01 * len(c) for c in completions]
'''


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("yours")
    tokenizer = build_char_tokenizer(CHARS)
    model = build_tiny_model(len(tokenizer), hidden=32, layers=1, ffn=64, heads=2, max_positions=64, seed=1)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "level": a % 3} for a in range(10) for b in range(3)]
    with open(root / "my.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "my_reward.py").write_text(GRADED)
    return root


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("engine", ["native", "trl"])
def test_your_model_data_and_graded_reward_train_in_both_engines(user_setup, tmp_path, engine):
    root = user_setup
    out = tmp_path / "run"
    run_cli(
        "train",
        "--model",
        str(root / "model"),
        "--train-data",
        str(root / "my.jsonl"),
        "--reward",
        f"{root / 'my_reward.py'}:graded",
        "--engine",
        engine,
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--max-new-tokens",
        "6",
        "--lr",
        "1e-2",
        "--lr-warmup-steps",
        "0",
        "--eval-every",
        "0",
        "--eval-size",
        "4",
        "--no-progress",
        "--output-dir",
        str(out),
        "--threads",
        "1",
        cache_dir=str(tmp_path / "cache"),
    )
    config = (out / "config.yaml").read_text()
    assert "task: data" in config and "my_reward.py:graded" in config
    metrics = read_jsonl(out / "metrics.jsonl")
    steps = [m for m in metrics if "reward/mean" in m]
    assert len(steps) == 2 and all(0 < m["reward/mean"] < 0.5 for m in steps)
    assert all(m["conspo/valid_group_frac"] > 0 for m in steps), "graded rewards below 0.5 must give valid groups"
    assert any("heldout/rewards/graded/mean" in m for m in metrics)
    before, after = _weights(root / "model"), _weights(out / "final")
    moved = max(float((before[k].float() - after[k].float()).abs().max()) for k in before if k in after)
    assert moved > 0, "the weights did not move"
    if engine == "native":  # a run no longer than log_samples_every records every completion of every step
        samples = read_jsonl(out / "samples.jsonl")
        assert len(samples) == 2 * 2 * 4 and all("graded" in s["rewards"] for s in samples)
        assert samples[0]["columns"]["answer"] and "level" in samples[0]["columns"]
        from conspo.audit import audit

        result = audit(out, log=lambda *a: None)  # re-scored with the run's own reward, compared exactly
        assert (result["n"], result["rewards"], result["changed"]) == (16, ["graded"], 0)
        assert "every completion" in result["coverage"]
        samples[3]["rewards"]["graded"] += 1e-12  # one recorded score off by a hair: found
        (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        assert audit(out, log=lambda *a: None)["changed"] == 1


def test_reward_set_calls_rewards_as_trl_does(user_setup):
    graded = load_reward(f"{user_setup / 'my_reward.py'}:graded")
    bonus = load_reward(f"{user_setup / 'my_reward.py'}:length_bonus")
    assert asyncio.iscoroutinefunction(bonus)
    rewards = RewardSet([graded, bonus], [1.0, 2.0])
    scored = rewards.score(["1+1="] * 3, ["2", "", "a2"], [{"answer": "2"}] * 3)
    per_reward = scored.tensor()
    assert per_reward[:, 0].tolist() == [0.45, 0.0, 0.225]
    assert per_reward[0, 1] == 0.01 and math.isnan(per_reward[1, 1])  # None: no score from that reward
    assert scored.names == ["graded", "length_bonus"]


@pytest.mark.parametrize(
    "bad,fragment", [(float("nan"), "non-finite"), ("x", "non-numeric"), (KeyError("k"), "raised KeyError")]
)
def test_a_bad_reward_stops_with_its_row_named_or_scores_zero_when_asked(bad, fragment):
    def reward(prompts, completions, id, **kwargs):
        out = []
        for i in id:
            if i == "row-2":
                if isinstance(bad, Exception):
                    raise bad
                out.append(bad)
            else:
                out.append(1.0)
        return out

    columns = [{"id": f"row-{i}"} for i in range(4)]
    with pytest.raises(RewardError, match=rf"reward reward .*{fragment}.*row 2 \(id='row-2'\)"):
        RewardSet([reward]).score(["q"] * 4, ["c"] * 4, columns)
    scored = RewardSet([reward], errors="zero").score(["q"] * 4, ["c"] * 4, columns)
    assert scored.per_reward == [[1.0, 1.0, 0.0, 1.0]] and scored.errors == [1]


def test_reward_specs_fail_in_one_line(tmp_path):
    for spec, fragment in [
        ("nofunc", "expected FILE.py:FUNCTION"),
        (f"{tmp_path}/none.py:f", "no such file"),
        ("conspo.rewards.verifiers:nothing", "has no function 'nothing'"),
        ("no_such_module_x:f", "cannot import module"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            load_reward(spec)
    assert load_reward("conspo.rewards.verifiers:exact_answer")(["1+1="], ["2"], answer=["2"]) == [1.0]


def test_the_example_reward_and_data(tmp_path):
    from conspo.tasks.data import load_rows

    rows = load_rows("examples/your_reward/arithmetic.jsonl")
    assert all(isinstance(r["prompt"], list) and r["answer"] for r in rows)
    closeness = load_reward("examples/your_reward/reward.py:closeness")
    brevity = load_reward("examples/your_reward/reward.py:brevity")
    completions = [[{"role": "assistant", "content": t}] for t in ("42", "It is 40.", "no idea")]
    assert closeness([r["prompt"] for r in rows[:3]], completions, answer=["42"] * 3) == [1.0, 1 / 3, 0.0]
    assert brevity(None, completions) == [1.0, 1.0, 1.0]


def test_a_datasets_folder_and_an_unreachable_hub_id(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from conspo.tasks.data import load_rows

    datasets.Dataset.from_list([{"prompt": "1+1=", "answer": "2"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(str(tmp_path / "ds")) == [{"prompt": "1+1=", "answer": "2"}]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        ValueError,
        match=r"^nobody-here/no-such-set: could not load it from the Hugging Face Hub .*"
        r"use a JSONL file or a datasets folder",
    ) as info:
        load_rows("nobody-here/no-such-set")
    assert "\n" not in str(info.value)


def test_train_data_without_a_reward_or_task_is_refused_in_one_line(tmp_path):
    proc = run_cli("train", "--train-data", "my.jsonl", cache_dir=str(tmp_path), check=False)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "train_data='my.jsonl' has no effect with task addition" in line and "--reward" in line


def test_conversational_prompts_are_rendered_and_rewards_get_messages(tmp_path):
    from conspo.tasks import reward_inputs
    from conspo.tasks.data import DataTask

    rows = [{"prompt": [{"role": "user", "content": f"{a}+1"}], "answer": str(a + 1), "id": f"r{a}"} for a in range(12)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    def reward(prompts, completions, answer, id, **kwargs):  # noqa: A002
        seen.update(prompts=prompts, completions=completions, id=id)
        return [1.0 if c[0]["content"] == a else 0.0 for c, a in zip(completions, answer)]

    task = DataTask(str(tmp_path / "chat.jsonl"), reward_funcs=[reward])
    tokenizer = build_char_tokenizer(CHARS)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"
    )
    task.set_tokenizer(tokenizer)
    train, heldout = task.train_problems(), task.heldout_problems()
    assert len(train) == 11 and [p.id for p in heldout] == ["r11"]  # the last 10% held out, never trained on
    assert train[0].prompt == "0+1="
    scored = task.rewards.score(*reward_inputs(train[:2], ["1", "5"]))
    assert scored.per_reward == [[1.0, 0.0]]
    assert seen["prompts"][0] == rows[0]["prompt"] and seen["completions"][1] == [{"role": "assistant", "content": "5"}]
    assert seen["id"] == ["r0", "r1"]
    assert task.score(train[:2], ["1", "5"]) == [1.0, 0.0]
    trl_rows = task.trl_rows()
    assert trl_rows[0]["prompt"] == rows[0]["prompt"] and trl_rows[0]["answer"] == "1"


def test_prompt_field_maps_another_column_and_a_missing_prompt_is_named(tmp_path):
    from conspo.tasks.data import DataTask

    rows = [{"question": f"{a}+1=", "answer": str(a + 1)} for a in range(4)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError, match=r"q.jsonl row 0: field 'problem' must be .*the row has answer, question.*--prompt-field"
    ):
        DataTask(str(tmp_path / "q.jsonl"), reward_funcs=[len])
    task = DataTask(str(tmp_path / "q.jsonl"), prompt_field="question", reward_funcs=[len])
    task.set_tokenizer(build_char_tokenizer(CHARS))
    assert task.train_problems()[0].prompt == "0+1=" and task.train_problems()[0].meta["columns"]["question"] == "0+1="


def test_your_rewards_on_a_built_in_task_replace_its_verifier(tmp_path):
    """--reward on the addition task: the named built-in verifier plus a bonus that never moves the update under
    the threshold rule, which the run names."""
    from helpers import TINY

    (tmp_path / "bonus.py").write_text(
        "def bonus(prompts, completions, answer, **kw):\n"
        "    return [0.2 if len(c) == len(a) else 0.0 for c, a in zip(completions, answer)]\n"
    )
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "--steps",
        "3",
        "--eval-every",
        "0",
        "--output-dir",
        str(out),
        "--reward",
        "conspo.rewards.verifiers:exact_answer",
        "--reward",
        f"{tmp_path / 'bonus.py'}:bonus",
        "--positive-rule",
        "threshold",
        cache_dir=str(tmp_path / "cache"),
    )
    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    assert len(steps) == 3 and all("rewards/exact_answer/mean" in m and "rewards/bonus/mean" in m for m in steps)
    said = proc.stdout + proc.stderr
    assert (
        "WARNING reward bonus: its differences within groups changed no update in the first 3 steps: under "
        "positive_rule=threshold"
    ) in said
    # the 3-step base solves nothing, so the verifier scores every group alike, and is named for that
    assert (
        "reward exact_answer: " not in said
        or "exact_answer: its differences within groups changed no update "
        "in the first 3 steps: it scored the completions of every group alike"
        in said
    )
