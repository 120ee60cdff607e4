"""Sampling completions and scoring their tokens.

``generate`` samples G completions per prompt with the model's KV cache (transformers
``generate``), left-padded prompts, EOS handling and a truncation flag per row.
``token_logprobs`` recomputes log pi(o_t | q, o_<t) for the completion tokens with
gradient from the backbone's hidden states through the LM head in token chunks
(``conspo.logprobs``), so no (B, T, V) logits tensor exists in forward or backward;
``token_logprobs_no_grad`` is the same pass for old-policy and reference log-probs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


@dataclass
class Rollouts:
    """A batch of completions, rows laid out as n_prompts * G (group g in rows [g*G, (g+1)*G)).

    ``completion_mask`` covers the completion tokens up to and including the first EOS;
    ``truncated`` marks rows that hit ``max_new_tokens`` without an EOS.
    """

    prompt_ids: torch.Tensor  # (B, Tp) left-padded
    prompt_mask: torch.Tensor  # (B, Tp)
    completion_ids: torch.Tensor  # (B, Tc) right-padded
    completion_mask: torch.Tensor  # (B, Tc)
    truncated: torch.Tensor  # (B,) bool
    texts: list[str]  # decoded completions, special tokens removed

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def rows(self, index: slice | torch.Tensor) -> "Rollouts":
        if isinstance(index, slice):
            texts = self.texts[index]
        else:
            texts = [self.texts[i] for i in index.tolist()]
        return Rollouts(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.completion_ids[index],
            self.completion_mask[index],
            self.truncated[index],
            texts,
        )


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the tokens up to and including the first EOS, and whether a row had none."""
    eos_ids = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos_ids)
    # number of EOS strictly before position t; keep t while it is zero
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (eos_before == 0).to(torch.long)
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_generations: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> Rollouts:
    """Sample ``num_generations`` completions of each prompt (greedy: one deterministic each)."""
    device = next(model.parameters()).device
    repeated = [p for p in prompts for _ in range(num_generations)]
    encoded = tokenizer(repeated, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = encoded["input_ids"].to(device)
    prompt_mask = encoded["attention_mask"].to(device)
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        sampling = {} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            use_cache=True,
            **({"do_sample": False} if greedy else sampling),
        )
    finally:
        model.train(was_training)
    completion_ids = output[:, prompt_ids.shape[1] :]
    completion_mask, truncated = completion_mask_from_eos(completion_ids, eos)
    # Tokens after EOS are padding: make them the pad id so nothing downstream reads them.
    completion_ids = torch.where(completion_mask.bool(), completion_ids, torch.full_like(completion_ids, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, texts)


#: fp32 elements per chunk in selective_log_softmax (16M: 64 MB of transient fp32 per chunk).
CHUNK_ELEMENTS = 1 << 24


class _SelectedLogProbs(torch.autograd.Function):
    """log p(x_t) = z[t, x_t] - logsumexp_v z[t, v] with z = logits / T, token-chunk by token-chunk in fp32.

    Saves only the logits (which exist anyway) and the (N,) log-sum-exp for backward, and writes
    the gradient  d/dlogits = g_t * (onehot(x_t) - softmax(z_t)) / T  chunk by chunk into one
    tensor of the logits' dtype. Autograd through log_softmax would instead keep a full fp32
    (B, T, V) result (plus an fp32 copy of bf16 logits) and allocate full fp32 gradients.
    """

    @staticmethod
    def forward(ctx, logits, token_ids, chunk_tokens, temperature):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1, 1)
        work = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        lse = torch.empty(flat.shape[0], dtype=work, device=logits.device)
        picked = torch.empty_like(lse)
        for s in range(0, flat.shape[0], chunk_tokens):
            chunk = flat[s : s + chunk_tokens].to(work)
            if temperature != 1.0:
                chunk = chunk / temperature
            lse[s : s + chunk_tokens] = torch.logsumexp(chunk, dim=-1)
            picked[s : s + chunk_tokens] = chunk.gather(1, ids[s : s + chunk_tokens]).squeeze(1)
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.chunk_tokens = chunk_tokens
        ctx.temperature = temperature
        return (picked - lse).view(token_ids.shape)

    @staticmethod
    def backward(ctx, grad_output):
        logits, token_ids, lse = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1, 1)
        inv_t = 1.0 / ctx.temperature
        g = grad_output.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty_like(flat)
        for s in range(0, flat.shape[0], ctx.chunk_tokens):
            e = s + ctx.chunk_tokens
            part = flat[s:e].to(lse.dtype, copy=True)  # one transient chunk, updated in place
            if inv_t != 1.0:
                part.mul_(inv_t)
            part.sub_(lse[s:e, None]).exp_().mul_(-g[s:e])  # -g * softmax
            part.scatter_add_(1, ids[s:e], g[s:e])  # + g at the chosen token
            if inv_t != 1.0:
                part.mul_(inv_t)
            grad[s:e] = part.to(grad.dtype)
        return grad.view_as(logits), None, None, None


def selective_log_softmax(logits: torch.Tensor, token_ids: torch.Tensor, *, chunk_tokens: int | None = None,
                          temperature: float = 1.0) -> torch.Tensor:
    """(B, T) log softmax(logits / T)[token_ids] without a full fp32 (B, T, V) log-softmax.

        log p(x_t) = z[t, x_t] - logsumexp_v z[t, v],    z = logits / temperature

    Computed in fp32 (fp64 stays fp64) over chunks of ``chunk_tokens`` positions (default: as
    many as fit in CHUNK_ELEMENTS), with a hand-written backward (``_SelectedLogProbs``).
    """
    if chunk_tokens is None:
        chunk_tokens = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    return _SelectedLogProbs.apply(logits, token_ids, chunk_tokens, float(temperature))


_WARNED_FALLBACK: set[str] = set()


def _model_inputs(rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if rollouts.prompt_ids.shape[1] == 0:
        raise ValueError("token_logprobs needs at least one prompt token per row (the first completion token is "
                         "predicted from the last prompt position)")
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)
    attention_mask = torch.cat([rollouts.prompt_mask, torch.ones_like(rollouts.completion_mask)], dim=1)
    # Left-padded prompts: positions count real tokens only, as during generate.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def full_logits_logprobs(model, rollouts: Rollouts, *, temperature: float = 1.0) -> torch.Tensor:
    """The fallback path: the model's own (B, Tc, V) logits, then ``selective_log_softmax``.

    Same values as ``token_logprobs`` (zeros outside ``completion_mask``); it holds the logits
    and their gradient, so it needs far more memory at a real vocabulary.
    """
    input_ids, attention_mask, position_ids = _model_inputs(rollouts)
    n_completion = rollouts.completion_ids.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=n_completion + 1,
        use_cache=False,
    ).logits[:, :-1]
    logps = selective_log_softmax(logits, rollouts.completion_ids, temperature=temperature)
    return logps.masked_fill(~rollouts.completion_mask.bool(), 0.0)


def token_logprobs(model, rollouts: Rollouts, *, temperature: float = 1.0, chunk_tokens: int | None = None) -> torch.Tensor:
    """(B, Tc) log pi(o_t | q, o_<t) of the completion tokens under ``model`` (with grad if enabled).

        log pi(o_t) = z_t[o_t] - logsumexp_v z_t[v],   z_t = f(s * (W h_t + b)) / temperature

    h_t is the backbone's final hidden state at the position before o_t, W, b the LM head, s and
    f the model's logit scale and soft-cap (``conspo.logprobs``). Only positions inside
    ``completion_mask`` are scored; the others are 0. The backbone runs once; the head runs in
    token chunks with a backward that recomputes each chunk's logits, so no (B, Tc, V) tensor
    exists in forward or backward. ``temperature`` divides the logits (1: the model's own
    distribution; the sampling temperature: the distribution the rollouts were drawn from).

    Position ids are taken from the attention mask so that left-padded rows see the same
    positions as during ``generate``. Models whose head cannot be identified safely (not a
    plain ``nn.Linear``, an unknown logit transform, ...) take ``full_logits_logprobs``, with a
    one-time warning per model class.
    """
    from conspo.logprobs import chunked_head_logprobs, head_spec

    input_ids, attention_mask, position_ids = _model_inputs(rollouts)
    spec, reason = head_spec(model, input_ids)
    if spec is None:
        name = type(model).__name__
        if name not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add(name)
            warnings.warn(f"conspo.rollout.token_logprobs: {name} is scored through its full (B, T, V) logits "
                          f"(much more memory): {reason}.", RuntimeWarning, stacklevel=2)
        return full_logits_logprobs(model, rollouts, temperature=temperature)
    n_prompt = rollouts.prompt_ids.shape[1]
    n_completion = rollouts.completion_ids.shape[1]
    mask = rollouts.completion_mask.bool()
    out = spec.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, n_prompt - 1 : n_prompt - 1 + n_completion]  # position t-1 predicts token t
    weight, bias = spec.head.weight, spec.head.bias
    logps = chunked_head_logprobs(hidden[mask].to(weight.device), weight, bias,
                                  rollouts.completion_ids[mask].to(weight.device), temperature=temperature,
                                  logit_scale=spec.logit_scale, softcap=spec.softcap, chunk_tokens=chunk_tokens)
    return logps.new_zeros(mask.shape).masked_scatter(mask.to(logps.device), logps)


@torch.no_grad()
def token_logprobs_no_grad(model, rollouts: Rollouts, *, temperature: float = 1.0, micro_batch_size: int = 0,
                           chunk_tokens: int | None = None) -> torch.Tensor:
    """``token_logprobs`` without autograd, ``micro_batch_size`` rows per pass (0: all): the
    old-policy log-probs for importance ratios and the reference policy's for the KL term, through
    the same chunked head and formula as the training pass."""
    step = micro_batch_size or len(rollouts)
    parts = [token_logprobs(model, rollouts.rows(slice(i, i + step)), temperature=temperature, chunk_tokens=chunk_tokens)
             for i in range(0, len(rollouts), step)]
    return torch.cat(parts) if parts else torch.zeros_like(rollouts.completion_mask, dtype=torch.float32)
