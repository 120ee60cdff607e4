"""Chunked LM-head log-probs (conspo.logprobs, conspo.rollout.token_logprobs) against the full-logits path.

Tiny random transformers models built from configs in code (nothing downloaded), float64:
values and the gradient of sum(w * logps) w.r.t. every parameter must match the model's own
(B, T, V) logits + log-softmax, for tied and untied heads, a head bias, Cohere's logit scale,
Gemma2's final soft-cap, temperatures 1 and 0.7, left-padded prompts, ragged completion masks
and chunk sizes that do and do not divide the number of scored tokens.
"""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conspo import rollout
from conspo.logprobs import ChunkedHeadLogProbs, chunked_head_logprobs, head_spec
from conspo.rollout import Rollouts, full_logits_logprobs, token_logprobs, token_logprobs_no_grad

VOCAB = 61
SMALL = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    vocab_size=VOCAB,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=None,
)


def _model(kind: str, dtype=torch.float64, seed=0):
    import transformers

    torch.manual_seed(seed)
    if kind in ("qwen2-tied", "qwen2-untied", "qwen2-bias"):
        config = transformers.Qwen2Config(**SMALL, tie_word_embeddings=kind == "qwen2-tied")
        model = transformers.Qwen2ForCausalLM(config)
        if kind == "qwen2-bias":  # a plain linear head with a bias (untied)
            model.lm_head = torch.nn.Linear(16, VOCAB, bias=True)
    elif kind == "gemma2-softcap":
        config = transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=2.0, tie_word_embeddings=True)
        model = transformers.Gemma2ForCausalLM(config)
    elif kind == "cohere-scale":
        config = transformers.CohereConfig(**SMALL, logit_scale=0.25, tie_word_embeddings=True)
        model = transformers.CohereForCausalLM(config)
    else:
        raise ValueError(kind)
    model = model.to(dtype)
    with torch.no_grad():  # logits of order 1-10, so soft-capping, scale and temperature all matter
        model.get_output_embeddings().weight.mul_(40.0)
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            model.get_output_embeddings().bias.normal_(0, 1.0)
    return model


def _rollouts(seed=1, batch=3, n_prompt=5, n_completion=7, left_padding=True):
    gen = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(batch, n_prompt, dtype=torch.long)
    if left_padding:
        prompt_mask[0, :2] = 0
        prompt_mask[2, :4] = 0
    completion_mask = torch.ones(batch, n_completion, dtype=torch.long)
    completion_mask[1, 4:] = 0  # ragged completions (right padding)
    completion_mask[2, 1:] = 0
    prompt_ids = torch.randint(2, VOCAB, (batch, n_prompt), generator=gen).masked_fill(prompt_mask == 0, 0)
    completion_ids = torch.randint(2, VOCAB, (batch, n_completion), generator=gen).masked_fill(completion_mask == 0, 0)
    return Rollouts(
        prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(batch, dtype=torch.bool), [""] * batch
    )


def _grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    logps = fn()
    (logps * weights).sum().backward()
    return logps.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


KINDS = ["qwen2-tied", "qwen2-untied", "qwen2-bias", "gemma2-softcap", "cohere-scale"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_logits_values_and_gradients(kind, temperature):
    model = _model(kind)
    # Gemma2 runs eager attention only, whose fp32 softmax of fp64 masks turns fully padded query rows
    # into NaN (a transformers quirk in float64, not ours): no left padding for it.
    rollouts = _rollouts(left_padding=kind != "gemma2-softcap")
    assert int(rollouts.completion_mask.sum()) == 12  # chunks of 5 do not divide it, 6 do; 1 and None: extremes
    spec, reason = head_spec(model, torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1))
    assert spec is not None, reason
    weights = torch.randn(
        rollouts.completion_ids.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    ref, ref_grads = _grads(model, lambda: full_logits_logprobs(model, rollouts, temperature=temperature), weights)
    assert set(ref_grads) == {n for n, p in model.named_parameters()}
    head = model.get_output_embeddings()
    assert ref_grads[[n for n, p in model.named_parameters() if p is head.weight][0]].abs().max() > 0
    for chunk in (1, 5, 6, None):
        ours, ours_grads = _grads(
            model, lambda: token_logprobs(model, rollouts, temperature=temperature, chunk_tokens=chunk), weights
        )
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        assert ours[~rollouts.completion_mask.bool()].eq(0).all()
        assert set(ours_grads) == set(ref_grads)
        for name in ref_grads:
            torch.testing.assert_close(
                ours_grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}, chunk {chunk}: {m}"
            )


def test_tied_head_gradient_reaches_the_embedding():
    model = _model("qwen2-tied")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    rollouts = _rollouts()
    token_logprobs(model, rollouts).sum().backward()
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and model.model.embed_tokens.weight.grad is not None
    # its value: the input embedding's gradient plus the head's, as an untied copy of the same weights has them
    untied = _model("qwen2-untied")
    untied.model.load_state_dict(model.model.state_dict())
    with torch.no_grad():
        untied.lm_head.weight.copy_(model.lm_head.weight)
    full_logits_logprobs(untied, rollouts).sum().backward()
    expected = untied.model.embed_tokens.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, expected, rtol=1e-10, atol=1e-12)
    # rows of tokens that appear nowhere in the batch get gradient only through the head's softmax
    unused = sorted(
        set(range(VOCAB)) - set(torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1).flatten().tolist())
    )
    assert model.model.embed_tokens.weight.grad[unused].abs().sum() > 0


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("bias", [False, True])
def test_function_gradcheck(softcap, bias):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=gen).requires_grad_(True)
    weight = (torch.randn(11, 5, dtype=torch.float64, generator=gen) * 2).requires_grad_(True)
    b = torch.randn(11, dtype=torch.float64, generator=gen).requires_grad_(True) if bias else None
    ids = torch.randint(0, 11, (7,), generator=gen)

    def f(h, w, *rest):
        return chunked_head_logprobs(
            h, w, rest[0] if rest else None, ids, temperature=0.7, logit_scale=0.5, softcap=softcap, chunk_tokens=3
        )

    inputs = (hidden, weight) + ((b,) if bias else ())
    assert torch.autograd.gradcheck(f, inputs)
    # and the plain formula
    z = torch.nn.functional.linear(hidden, weight, b) * 0.5
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    ref = torch.log_softmax(z / 0.7, -1).gather(1, ids[:, None]).squeeze(1)
    torch.testing.assert_close(f(*inputs), ref, rtol=1e-12, atol=1e-12)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tokens_by_vocab_tensor_in_forward_or_backward():
    import transformers

    vocab, hidden = 4000, 8
    config = transformers.Qwen2Config(
        **{**SMALL, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 16}, tie_word_embeddings=True
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    batch, n_prompt, n_completion, chunk = 4, 8, 48, 16
    rollouts = Rollouts(
        torch.randint(0, vocab, (batch, n_prompt), generator=gen),
        torch.ones(batch, n_prompt, dtype=torch.long),
        torch.randint(0, vocab, (batch, n_completion), generator=gen),
        torch.ones(batch, n_completion, dtype=torch.long),
        torch.zeros(batch, dtype=torch.bool),
        [""] * batch,
    )
    token_logprobs(model, rollouts)  # the one-time head check runs outside the recorded region
    with _LargestTensor() as seen:
        token_logprobs(model, rollouts, chunk_tokens=chunk).sum().backward()
    n_tokens = batch * n_completion
    assert seen.largest <= max(chunk * vocab, vocab * hidden), seen.largest
    assert seen.largest < n_tokens * vocab / 4
    with _LargestTensor() as seen_full:
        full_logits_logprobs(model, rollouts).sum().backward()
    assert seen_full.largest >= n_tokens * vocab  # the fallback does hold (B, T, V) logits


class _WrappedHead(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x)


def test_fallback_for_a_head_that_is_not_a_linear_warns_once(monkeypatch):
    monkeypatch.setattr(rollout, "_WARNED_FALLBACK", set())
    model = _model("qwen2-untied")
    reference = _model("qwen2-untied")
    model.lm_head = _WrappedHead(model.lm_head)
    rollouts = _rollouts()
    with pytest.warns(RuntimeWarning, match="Qwen2ForCausalLM.*_WrappedHead"):
        ours = token_logprobs(model, rollouts, temperature=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = token_logprobs(model, rollouts, temperature=0.7)  # no second warning
    torch.testing.assert_close(ours, again)
    torch.testing.assert_close(ours, token_logprobs(reference, rollouts, temperature=0.7), rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    full_logits_logprobs(reference, rollouts, temperature=0.7).sum().backward()
    expected = {name: p.grad for name, p in reference.named_parameters()}
    for name, p in model.named_parameters():  # every gradient, the wrapped head's included, as the plain model's
        plain = expected[name.replace("lm_head.linear.", "lm_head.")]
        torch.testing.assert_close(p.grad, plain, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_fallback_for_an_unknown_logit_transform():
    import transformers

    class DoubledLogits(transformers.Qwen2ForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    torch.manual_seed(0)
    model = DoubledLogits(transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)).double()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    rollouts = _rollouts()
    spec, reason = head_spec(model, rollouts.prompt_ids)
    assert spec is None and "logit transform" in reason
    with pytest.warns(RuntimeWarning, match="DoubledLogits"):
        ours = token_logprobs(model, rollouts)
    torch.testing.assert_close(ours, full_logits_logprobs(model, rollouts))


def test_bf16_model_close_to_fp32():
    model = _model("qwen2-tied", dtype=torch.float32)
    rollouts = _rollouts()
    weights = torch.randn(rollouts.completion_ids.shape, generator=torch.Generator().manual_seed(2))
    fp32, fp32_grads = _grads(model, lambda: token_logprobs(model, rollouts, temperature=0.7), weights)
    model_bf16 = model.to(torch.bfloat16)
    bf16, bf16_grads = _grads(model_bf16, lambda: token_logprobs(model_bf16, rollouts, temperature=0.7), weights)
    assert bf16.dtype == torch.float32  # softmax math in fp32
    mask = rollouts.completion_mask.bool()
    scale = float(fp32[mask].abs().max())
    torch.testing.assert_close(bf16[mask], fp32[mask], rtol=0.0, atol=0.05 * scale)
    # the chunked bf16 path agrees with the model's own bf16 logits at least as well
    full_bf16 = full_logits_logprobs(model_bf16, rollouts, temperature=0.7)
    torch.testing.assert_close(bf16[mask], full_bf16[mask].float(), rtol=0.0, atol=0.05 * scale)
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.bfloat16
        ref = fp32_grads[name]
        rel = float((grad.float() - ref).norm() / ref.norm().clamp(min=1e-12))
        assert rel < 0.05, (name, rel)


def test_no_grad_helper_matches_and_splits_rows():
    model = _model("gemma2-softcap")
    rollouts = _rollouts(left_padding=False)
    with torch.no_grad():
        ref = token_logprobs(model, rollouts, temperature=0.7)
    for micro in (0, 1, 2):
        out = token_logprobs_no_grad(model, rollouts, temperature=0.7, micro_batch_size=micro)
        assert not out.requires_grad
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_empty_completions_stay_connected_to_the_graph():
    model = _model("qwen2-tied")
    rollouts = _rollouts()
    empty = Rollouts(
        rollouts.prompt_ids,
        rollouts.prompt_mask,
        rollouts.completion_ids,
        torch.zeros_like(rollouts.completion_mask),
        rollouts.truncated,
        rollouts.texts,
    )
    out = token_logprobs(model, empty)
    assert out.eq(0).all() and out.requires_grad
    out.sum().backward()  # no error; zero gradient
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_function_returns_weight_grad_in_weight_dtype_with_fp32_accumulation():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 8, generator=gen).to(torch.bfloat16).requires_grad_(True)
    weight = torch.randn(300, 8, generator=gen).to(torch.bfloat16).requires_grad_(True)
    ids = torch.randint(0, 300, (40,), generator=gen)
    out = ChunkedHeadLogProbs.apply(hidden, weight, None, ids, 1.0, 1.0, None, 1, torch.bfloat16)
    out.sum().backward()
    assert out.dtype == torch.float32 and weight.grad.dtype == torch.bfloat16 and hidden.grad.dtype == torch.bfloat16
    h, w = hidden.detach().float().requires_grad_(True), weight.detach().float().requires_grad_(True)
    z = (h.to(torch.bfloat16) @ w.to(torch.bfloat16).t()).float()  # bf16 GEMM, as the model's head
    ref = torch.log_softmax(z, -1).gather(1, ids[:, None]).squeeze(1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    z_grad = torch.softmax(z, -1).neg().scatter_add(1, ids[:, None], torch.ones(40, 1))
    torch.testing.assert_close(
        weight.grad.float(), z_grad.t() @ h.detach().to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2
    )
