"""Generation and per-token log-probs."""

import pytest
import torch

from conspo.models import build_char_tokenizer, build_tiny_model
from conspo.rollout import Rollouts, completion_mask_from_eos, generate, selective_log_softmax, token_logprobs


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_selective_log_softmax_matches_log_softmax_values_and_gradients(chunk):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, generator=gen) * 4
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    weights = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = selective_log_softmax(a, ids, chunk_tokens=chunk)
    naive = torch.log_softmax(b, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours, naive, rtol=1e-12, atol=1e-12)
    (ours * weights).sum().backward()
    (naive * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_selective_log_softmax_gradcheck_and_bf16():
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (2, 3))
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, ids, chunk_tokens=2), (logits,))
    bf = logits.detach().to(torch.bfloat16).requires_grad_(True)
    out = selective_log_softmax(bf, ids)
    assert out.dtype == torch.float32  # computed in fp32 even for bf16 logits
    out.sum().backward()
    assert bf.grad.dtype == torch.bfloat16
    ref = torch.log_softmax(bf.detach().float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, ref)


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    mask, truncated = completion_mask_from_eos(ids, 1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_token_logprobs_equal_generation_scores_with_left_padding():
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden=32, layers=2, ffn=64, heads=2)
    rollouts = generate(model, tok, ["07+45=", "1+2="], num_generations=2, max_new_tokens=4, greedy=True)
    out = model.generate(
        input_ids=rollouts.prompt_ids,
        attention_mask=rollouts.prompt_mask,
        max_new_tokens=4,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    steps = len(out.logits)
    ref = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], 1)
    ref = ref.gather(-1, rollouts.completion_ids[:, :steps].unsqueeze(-1)).squeeze(-1)
    ours = token_logprobs(model, rollouts)[:, :steps]
    mask = rollouts.completion_mask[:, :steps].bool()
    torch.testing.assert_close(ours[mask], ref[mask], rtol=1e-5, atol=1e-5)
    assert rollouts.prompt_mask[:, 0].eq(0).any(), "the batch must contain a left-padded prompt"


def test_selective_log_softmax_temperature_values_and_gradients():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, dtype=torch.float64, generator=gen) * 3
    ids = torch.randint(0, 9, (2, 4), generator=gen)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = selective_log_softmax(a, ids, chunk_tokens=3, temperature=0.7)
    naive = torch.log_softmax(b / 0.7, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours, naive, rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    naive.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_tempered_token_logprobs_equal_the_sampling_distribution():
    """token_logprobs(temperature=T) scores tokens under the distribution generate sampled them from."""
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), hidden=32, layers=2, ffn=64, heads=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # neither flat nor one-hot: the temperature matters
    encoded = tok(["07+45=", "1+2=", "1+2="], return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **encoded,
        max_new_tokens=5,
        do_sample=True,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    completion_ids = out.sequences[:, encoded["input_ids"].shape[1] :]
    mask, truncated = completion_mask_from_eos(completion_ids, 1)
    rollouts = Rollouts(encoded["input_ids"], encoded["attention_mask"], completion_ids, mask, truncated, [""] * 3)
    steps = len(out.scores)
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # scores = logits / T
    sampled = sampled.gather(-1, completion_ids[:, :steps].unsqueeze(-1)).squeeze(-1)
    keep = mask[:, :steps].bool()
    ours = token_logprobs(model, rollouts, temperature=0.7)[:, :steps]
    torch.testing.assert_close(ours[keep], sampled[keep], rtol=1e-5, atol=1e-5)
    untempered = token_logprobs(model, rollouts)[:, :steps]
    assert (untempered[keep] - sampled[keep]).abs().max() > 1e-2
