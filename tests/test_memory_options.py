"""Real-model-shape options of the native trainer: token-budget micro-batches, activation
checkpointing, bf16 autocast, LoRA (peft). Exactness of the update lives in test_update.py; here:
the options run end to end, resume exactly, and LoRA keeps only the adapter."""

import json

import pytest
import torch
from helpers import TINY, comparable, read_jsonl, run_cli

from conspo.models import build_char_tokenizer, build_tiny_model, is_lora, lora_config
from conspo.rollout import generate, token_logprobs

pytest.importorskip("peft")

OPTIONS = [
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--gradient-checkpointing",
    "--mixed-precision",
    "bf16",
    "--max-tokens-per-micro-batch",
    "40",
    "--lr",
    "1e-3",
]


@pytest.mark.slow
def test_lora_checkpointing_bf16_token_budget_run_resumes_exactly(tmp_path, cache_dir):
    common = [*TINY, *OPTIONS, "--steps", "6", "--eval-every", "3", "--save-every", "2", "--seed", "3"]
    full = tmp_path / "full"
    run_cli("train", *common, "--output-dir", str(full), cache_dir=cache_dir)
    part = tmp_path / "part"
    run_cli("train", *common, "--stop-after", "3", "--output-dir", str(part), cache_dir=cache_dir)
    ckpt = part / "checkpoint-3"
    assert (ckpt / "adapter.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    run_cli("train", "--resume", str(part), cache_dir=cache_dir)
    assert comparable(read_jsonl(part / "metrics.jsonl")) == comparable(read_jsonl(full / "metrics.jsonl"))
    from safetensors.torch import load_file

    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(part / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("lora" in k for k in a), "final/ is merged by default: a plain transformers model"
    # (that the adapter receives the exact gradient is test_lora_update_equals_the_in_graph_gradient_of_the_adapter:
    # this toy base, warmed up 3 steps, gets every answer wrong, so its steps have no valid group)


@pytest.mark.slow
def test_lora_final_can_be_kept_as_an_adapter(tmp_path, cache_dir):
    out = tmp_path / "run"
    run_cli(
        "train",
        *TINY,
        "--lora-r",
        "4",
        "--lora-save",
        "adapter",
        "--steps",
        "2",
        "--eval-every",
        "0",
        "--output-dir",
        str(out),
        cache_dir=cache_dir,
    )
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert json.load(open(out / "final" / "adapter_config.json"))["r"] == 4


def _tiny_lora():
    from peft import get_peft_model

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    base = build_tiny_model(len(tokenizer), hidden=32, layers=2, ffn=64, heads=2).double()
    model = get_peft_model(base, lora_config(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # peft starts B at 0 (adapter = identity); move it so "adapter off" differs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    rollouts = generate(model, tokenizer, ["12+34=", "5+6="], num_generations=2, max_new_tokens=4)
    return model, rollouts


def test_kl_reference_of_a_lora_run_is_the_base_with_the_adapter_off():
    from conspo.train import reference_policy

    model, rollouts = _tiny_lora()
    assert is_lora(model)
    ref = reference_policy(model, beta=0.1)(rollouts)
    with model.disable_adapter():
        expected = token_logprobs(model, rollouts)
    torch.testing.assert_close(ref, expected)
    assert not torch.allclose(ref, token_logprobs(model, rollouts)), "the adapter changes the policy"
    # independently of peft's disable_adapter: with every lora_B at zero the adapter adds nothing, leaving the base
    import copy

    base_only = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in base_only.named_parameters():
            if "lora_B" in name:
                p.zero_()
    torch.testing.assert_close(ref, token_logprobs(base_only, rollouts), rtol=1e-12, atol=1e-12)
    assert reference_policy(model, beta=0.0) is None


def test_lora_update_equals_the_in_graph_gradient_of_the_adapter():
    from conspo.update import accumulate_gradients

    model, rollouts = _tiny_lora()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    options = {"margin": 0.0, "tau": 0.3, "positive_threshold": 0.5, "score": "mean"}
    from conspo.objectives import conspo_loss

    model.zero_grad(set_to_none=True)
    conspo_loss(token_logprobs(model, rollouts), rollouts.completion_mask, rewards, 2, **options)[0].backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    accumulate_gradients(model, "conspo", rollouts, rewards, 2, options, micro_batch_size=1)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert reference.keys() == got.keys() and all("lora" in n for n in got), "only the adapter trains"
    for n in reference:
        torch.testing.assert_close(got[n], reference[n], rtol=1e-9, atol=1e-12)
