"""A user's first real-model run, rehearsed on CPU with offline stand-ins of Qwen2.5 and Llama-3
(tests/standins.py): precision, the sampler, stop tokens and chat turns, BOS, and the checks made before
any weight is read. Each test here failed on the code before these rules existed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.models import load_tokenizer
from conspo.rollout import generate, ignored_generation_settings, stop_rule
from tests.standins import build_standin, memorize, write_generation_config


def _load(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory)), load_tokenizer(str(directory))


def _chat(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


# ---- precision ---------------------------------------------------------------------------------------------


def _on_a_bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_on_a_gpu_the_default_keeps_float32_weights_and_computes_in_bf16(monkeypatch):
    from conspo.integrations.trl_engine import trl_arguments
    from conspo.precision import compute_dtype, precision_summary, resolve_device_dtype

    _on_a_bf16_gpu(monkeypatch)
    cfg = TrainConfig(model="Qwen/Qwen2.5-Math-1.5B", task="math")
    device, dtype = resolve_device_dtype(cfg)
    assert (device.type, dtype) == ("cuda", torch.float32)  # AdamW updates float32 master weights
    assert compute_dtype(cfg, device, dtype) == torch.bfloat16
    assert precision_summary(cfg, device, dtype) == "weights float32, compute bfloat16 (autocast), AdamW state float32"
    assert trl_arguments(cfg, max_new_tokens=8, output_dir="x", use_cpu=False, dtype=dtype)["bf16"] is True
    assert compute_dtype(dataclasses.replace(cfg, mixed_precision="no"), device, dtype) is None
    cpu = torch.device("cpu")  # the CPU default is unchanged: float32 throughout
    assert compute_dtype(cfg, cpu, torch.float32) is None


def test_pure_bf16_adamw_is_refused_unless_asked_for():
    cfg = TrainConfig(model="some/model", task="math", dtype="bfloat16")
    with pytest.raises(ConfigError, match="dtype='bfloat16'.*round small updates away.*--low-precision-weights"):
        cfg.validate()
    dataclasses.replace(cfg, low_precision_weights=True).validate()
    dataclasses.replace(cfg, lora_r=8).validate()  # a frozen bf16 base under a float32 adapter is fine
    with pytest.raises(ConfigError, match="low_precision_weights=True: only changes a run with --dtype bfloat16"):
        TrainConfig(low_precision_weights=True).validate()


def test_the_lost_update_share_matches_what_adamw_does_to_bf16_weights():
    from conspo.precision import updates_lost_fraction

    gen = torch.Generator().manual_seed(0)
    weights = (torch.randn(20_000, generator=gen) * 0.02).to(torch.bfloat16)
    lost = updates_lost_fraction([weights], 1e-6)
    param = torch.nn.Parameter(weights.clone())
    optimizer = torch.optim.AdamW([param], lr=1e-6, weight_decay=0.0)
    param.grad = torch.randn(param.shape, generator=gen).to(torch.bfloat16)
    optimizer.step()  # the first AdamW step moves every weight by lr (m / sqrt(v) = +-1)
    unchanged = float((param.detach() == weights).float().mean())
    assert lost > 0.9 and abs(unchanged - lost) < 0.02
    assert updates_lost_fraction([weights.float()], 1e-6) == 0.0


# ---- the sampler -------------------------------------------------------------------------------------------


def test_the_models_generation_config_does_not_change_the_sampler(tmp_path):
    plain = build_standin("qwen2.5", tmp_path / "plain", max_positions=256)
    penalised = build_standin(
        "qwen2.5",
        tmp_path / "penalised",
        max_positions=256,
        generation_config=dict(repetition_penalty=1.3, no_repeat_ngram_size=2, do_sample=True, top_k=5),
    )
    (model_a, tok), (model_b, _) = _load(plain), _load(penalised)
    prompts = [_chat(tok, q) for q in ("What is 1+2?", "Compute 7*8.", "Solve x+1=3.")]
    ids = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)["input_ids"]
    # the stand-in's own config does change its greedy output when transformers applies it: the test has teeth
    assert not torch.equal(
        model_a.generate(ids, max_new_tokens=24, do_sample=False, top_k=None),
        model_b.generate(ids, max_new_tokens=24, do_sample=False, top_k=None),
    )
    a = generate(model_a, tok, prompts, max_new_tokens=24, greedy=True)
    b = generate(model_b, tok, prompts, max_new_tokens=24, greedy=True)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    torch.manual_seed(0)
    a = generate(model_a, tok, prompts, num_generations=2, max_new_tokens=12, temperature=0.7)
    torch.manual_seed(0)
    b = generate(model_b, tok, prompts, num_generations=2, max_new_tokens=12, temperature=0.7)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert ignored_generation_settings(model_b.generation_config) == {
        "do_sample": True,
        "no_repeat_ngram_size": 2,
        "repetition_penalty": 1.3,
        "top_k": 5,
    }
    assert model_b.generation_config.repetition_penalty == 1.3  # the model's own config is left as it was


def test_conspo_eval_gives_the_same_greedy_completions_whatever_the_models_generation_config(tmp_path):
    from conspo.benchmark_eval import EvalSettings, run_eval

    plain = build_standin("qwen2.5", tmp_path / "plain", max_positions=256)
    penalised = build_standin("qwen2.5", tmp_path / "penalised", max_positions=256)
    write_generation_config(penalised, repetition_penalty=1.3, do_sample=True, temperature=0.7)
    data = tmp_path / "bench.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(4)
        )
    )
    logs, completions = [], {}
    for name, model in (("plain", plain), ("penalised", penalised)):
        out = tmp_path / f"eval-{name}"
        results = run_eval(
            EvalSettings(
                model=str(model), benchmarks=[str(data)], k=1, max_new_tokens=20, backend="hf", output_dir=str(out)
            ),
            log=logs.append,
        )
        rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
        completions[name] = [r["completion"] for r in rows if r["sample"] == "greedy"]
    assert completions["plain"] == completions["penalised"]
    assert results["ignored_model_generation_settings"] == {
        "do_sample": "True",
        "repetition_penalty": "1.3",
        "temperature": "0.7",
    }
    assert results["sampler"]["greedy"] == {"eos_token_id": [256, 257, 258], "do_sample": False}
    assert any("repetition_penalty=1.3" in line and "ignored" in line for line in logs)


# ---- stop tokens, chat turns, BOS ---------------------------------------------------------------------------


def test_a_completion_ends_at_the_chat_turn_marker_and_the_next_turn_is_never_scored(tmp_path):
    from conspo.rewards import MathVerifier

    model, tok = _load(build_standin("qwen2.5", tmp_path / "m"))  # a base model: its EOS is <|endoftext|> alone
    prompt = _chat(tok, "What is 1+2?")
    memorize(
        model, tok, prompt, "\\boxed{3}<|im_end|><|im_start|>user\nAgain?<|im_end|>\n<|im_start|>assistant\n\\boxed{5}"
    )
    rollouts = generate(model, tok, [prompt], max_new_tokens=40, greedy=True)
    assert rollouts.texts == ["\\boxed{3}"]
    ids = rollouts.completion_ids[0, : int(rollouts.completion_mask.sum())].tolist()
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") and not rollouts.truncated[0]
    with MathVerifier(timeout_s=5.0) as verifier:
        assert verifier.score(rollouts.texts * 2, ["3", "5"]).scores == [1.0, 0.0]


def test_every_eos_of_a_llama3_generation_config_ends_a_completion(tmp_path):
    model, tok = _load(build_standin("llama3", tmp_path / "m"))
    ids = tok.convert_tokens_to_ids
    assert set(stop_rule(model.generation_config, tok).token_ids) >= {
        ids("<|end_of_text|>"),
        ids("<|eom_id|>"),
        ids("<|eot_id|>"),
        ids("<|start_header_id|>"),
    }
    prompt = _chat(tok, "What is 2+2?")
    memorize(model, tok, prompt, "The answer is 4.<|eom_id|> and then 9")
    rollouts = generate(model, tok, [prompt], max_new_tokens=30, greedy=True)
    assert rollouts.texts == ["The answer is 4."] and int(rollouts.completion_mask.sum()) == len("The answer is 4.") + 1


def test_bos_is_added_where_the_tokenizer_adds_one_and_never_twice(tmp_path):
    model, tok = _load(build_standin("llama3", tmp_path / "llama"))
    bos = tok.bos_token_id
    plain = generate(model, tok, ["What is 2+2?\nAnswer:"], max_new_tokens=2, greedy=True)
    chat = generate(model, tok, [_chat(tok, "What is 2+2?")], max_new_tokens=2, greedy=True)
    assert plain.prompt_ids[0, 0] == bos and int((plain.prompt_ids == bos).sum()) == 1
    assert chat.prompt_ids[0, 0] == bos and int((chat.prompt_ids == bos).sum()) == 1
    model, tok = _load(build_standin("qwen2.5", tmp_path / "qwen"))  # Qwen adds none
    rollouts = generate(model, tok, ["What is 2+2?\nAnswer:"], max_new_tokens=2, greedy=True)
    assert rollouts.prompt_ids[0].tolist() == tok("What is 2+2?\nAnswer:", add_special_tokens=False)["input_ids"]


def test_the_plain_template_stops_at_the_end_of_the_line(tmp_path):
    from conspo.tasks.math_data import build_prompt, stop_strings

    model, tok = _load(build_standin("qwen2.5", tmp_path / "m", chat_template=False))  # a base model, no chat template
    prompt = build_prompt("What is 1+2?", "plain", tok)
    assert stop_strings("plain", tok) == ("\n",)
    memorize(model, tok, prompt, " 3\nQuestion: What is 2+3?\nAnswer: 5")
    rollouts = generate(model, tok, [prompt], max_new_tokens=30, greedy=True, stop_strings=stop_strings("plain", tok))
    assert rollouts.texts == [" 3"] and int(rollouts.completion_mask.sum()) == 3 and not rollouts.truncated[0]
    chat_tok = load_tokenizer(str(build_standin("qwen2.5", tmp_path / "chat")))
    assert stop_strings("plain", chat_tok) == ()  # rendered as a chat, it ends at the turn marker instead


# ---- checks before any weight is read ---------------------------------------------------------------------


def test_a_generation_limit_past_the_models_positions_fails_before_the_weights_load(tmp_path, monkeypatch):
    import conspo.models
    from conspo.models import load_model
    from conspo.run import make_task

    model_dir = build_standin("qwen2.5", tmp_path / "m", max_positions=256)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"problem": "What is 1+2?", "answer": "3"}) + "\n")
    monkeypatch.setattr(conspo.models, "load_policy", lambda *a, **k: pytest.fail("weights were loaded"))
    cfg = TrainConfig(
        model=str(model_dir), task="math", train_data=str(data), eval_data=str(data), max_new_tokens=100_000
    )
    with pytest.raises(
        ConfigError,
        match=r"longest prompt \(\d+ tokens\) plus max_new_tokens=100000 .* the model's 256: "
        r"lower --max-new-tokens to at most \d+",
    ):
        load_model(cfg, make_task(cfg), torch.device("cpu"), torch.float32, print)


def test_a_mistyped_local_model_path_fails_at_once_without_asking_the_hub(tmp_path, monkeypatch):
    import transformers

    from conspo.models import load_model_config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("asked the hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("./models/qwen-1.5b", str(tmp_path / "nope"), "models/qwen-1.5b", "~/no/such/model"):
        with pytest.raises(ConfigError, match="no such folder"):
            load_model_config(name)


# ---- the whole path, both engines, and conspo eval --------------------------------------------------------

STOP_TOKENS = {
    "qwen2.5": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": [
        "<|end_of_text|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind,engine", [("qwen2.5", "native"), ("qwen2.5", "trl"), ("llama3", "native")])
def test_rehearsal_math_on_a_standin(tmp_path, kind, engine):
    """`conspo train --task math` with the chat template on a few shared-data problems, as a user's first run."""
    from conspo.cli import main
    from conspo.tasks.math_data import default_data_dir

    if default_data_dir() is None:
        pytest.skip("the shared math data sets are not next to this checkout")
    if engine == "trl":
        pytest.importorskip("trl")
    from conspo.tasks.math_data import build_prompt, load_benchmark

    model_dir = build_standin(
        kind,
        tmp_path / "model",
        max_positions=4096,
        generation_config=dict(repetition_penalty=1.05, top_k=20, do_sample=True),
    )
    # two shared-data problems whose answers the stand-in has half learned, so that groups mix right and wrong
    examples = list(load_benchmark("gsm8k_train"))[:2]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"problem": e.problem, "answer": e.answer}) + "\n" for e in examples))
    model, tok = _load(model_dir)
    turn_end = {"qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>"}[kind]
    memorize(
        model,
        tok,
        [build_prompt(e, "qwen_math_boxed", tok) for e in examples],
        [f"\\boxed{{{e.answer}}}{turn_end}" for e in examples],
        mean_loss_below=0.06,
    )
    model.save_pretrained(model_dir, safe_serialization=True)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--task",
            "math",
            "--train-data",
            str(data),
            "--eval-data",
            "math500",
            "--eval-size",
            "2",
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--group-size",
            "4",
            "--max-new-tokens",
            "12",
            "--lr",
            "1e-3",
            "--lr-warmup-steps",
            "0",
            "--eval-every",
            "0",
            "--save-every",
            "0",
            "--engine",
            engine,
            "--output-dir",
            str(run),
            "--no-progress",
            "--temperature",
            "1.0",
        ]
    )
    assert rc == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(0 < m["reward/mean"] for m in metrics if "reward/mean" in m)  # the verifier read the stand-in's answers
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["resolved"]["stop_tokens"] == STOP_TOKENS[kind]
    assert config["resolved"]["ignored_model_generation_settings"] == {
        "do_sample": "True",
        "repetition_penalty": "1.05",
        "top_k": "20",
    }
    assert config["resolved"]["precision"] == "weights float32, compute float32, AdamW state float32"
    from safetensors.torch import load_file

    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(run / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved
    assert json.loads((run / "final" / "generation_config.json").read_text())["repetition_penalty"] == 1.05
    if engine == "native":
        out = tmp_path / "eval"
        assert (
            main(
                [
                    "eval",
                    "--model",
                    str(run),
                    "--benchmarks",
                    "math500,gsm8k",
                    "--limit",
                    "2",
                    "--k",
                    "2",
                    "--max-new-tokens",
                    "12",
                    "--backend",
                    "hf",
                    "--output-dir",
                    str(out),
                ]
            )
            == 0
        )
        results = json.loads((out / "results.json").read_text())
        assert set(results["benchmarks"]) == {"math500", "gsm8k"}
        assert results["sampler"]["sampled"]["top_k"] == 0
        assert tok.convert_ids_to_tokens(results["sampler"]["sampled"]["eos_token_id"]) == STOP_TOKENS[kind]


def test_the_vllm_backend_gets_the_same_sampler_stops_and_one_bos(tmp_path, monkeypatch):
    """vLLM is not installed here: a stand-in module records what conspo eval would hand it."""
    import sys
    import types

    from conspo.benchmark_eval import EvalSettings, _vllm_generate

    seen = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            seen["params"] = kwargs

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=False):
            seen["prompts"] = prompts
            done = types.SimpleNamespace(text="4", token_ids=[1], finish_reason="stop")
            return [types.SimpleNamespace(outputs=[done]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    tok = load_tokenizer(str(build_standin("llama3", tmp_path / "m")))
    stop = stop_rule(None, tok)
    progress = types.SimpleNamespace(update=lambda n: None)
    _vllm_generate(
        FakeLLM(),
        tok,
        [_chat(tok, "2+2?"), "2+2?\nAnswer:"],
        n=2,
        greedy=False,
        progress=progress,
        settings=EvalSettings(model="m", temperature=0.6, top_p=0.95),
        max_new_tokens=7,
        stop_strings=("\n",),
        stop_ids=stop.token_ids,
    )
    for prompt in seen["prompts"]:
        assert (
            prompt["prompt_token_ids"][0] == tok.bos_token_id
            and prompt["prompt_token_ids"].count(tok.bos_token_id) == 1
        )
    p = seen["params"]
    assert (p["temperature"], p["top_p"], p["top_k"], p["repetition_penalty"], p["max_tokens"]) == (
        0.6,
        0.95,
        -1,
        1.0,
        7,
    )
    assert p["stop_token_ids"] == list(stop.token_ids) and p["stop"] == ["\n"]
