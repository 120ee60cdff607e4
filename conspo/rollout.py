"""Sampling completions and scoring their tokens.

``generate`` samples G completions per prompt with the model's KV cache (transformers
``generate``), left-padded prompts, EOS handling and a truncation flag per row.
``token_logprobs`` recomputes log pi(o_t | q, o_<t) for the completion tokens with
gradient, without materialising a full-vocabulary fp32 log-softmax for the batch.
"""

from __future__ import annotations

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
    """log p(x_t) = logits[t, x_t] - logsumexp_v logits[t, v], token-chunk by token-chunk in fp32.

    Saves only the logits (which exist anyway) and the (N,) log-sum-exp for backward, and writes
    the gradient  d/dlogits = g_t * (onehot(x_t) - softmax(logits_t))  chunk by chunk into one
    tensor of the logits' dtype. Autograd through log_softmax would instead keep a full fp32
    (B, T, V) result (plus an fp32 copy of bf16 logits) and allocate full fp32 gradients.
    """

    @staticmethod
    def forward(ctx, logits, token_ids, chunk_tokens):
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1, 1)
        work = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        lse = torch.empty(flat.shape[0], dtype=work, device=logits.device)
        picked = torch.empty_like(lse)
        for s in range(0, flat.shape[0], chunk_tokens):
            chunk = flat[s : s + chunk_tokens].to(work)
            lse[s : s + chunk_tokens] = torch.logsumexp(chunk, dim=-1)
            picked[s : s + chunk_tokens] = chunk.gather(1, ids[s : s + chunk_tokens]).squeeze(1)
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.chunk_tokens = chunk_tokens
        return (picked - lse).view(token_ids.shape)

    @staticmethod
    def backward(ctx, grad_output):
        logits, token_ids, lse = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        ids = token_ids.reshape(-1, 1)
        g = grad_output.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty_like(flat)
        for s in range(0, flat.shape[0], ctx.chunk_tokens):
            e = s + ctx.chunk_tokens
            part = flat[s:e].to(lse.dtype, copy=True)  # one transient chunk, updated in place
            part.sub_(lse[s:e, None]).exp_().mul_(-g[s:e])  # -g * softmax
            part.scatter_add_(1, ids[s:e], g[s:e])  # + g at the chosen token
            grad[s:e] = part.to(grad.dtype)
        return grad.view_as(logits), None, None


def selective_log_softmax(logits: torch.Tensor, token_ids: torch.Tensor, *, chunk_tokens: int | None = None) -> torch.Tensor:
    """(B, T) log softmax(logits)[token_ids] without a full fp32 (B, T, V) log-softmax.

        log p(x_t) = logits[t, x_t] - logsumexp_v logits[t, v]

    Computed in fp32 (fp64 stays fp64) over chunks of ``chunk_tokens`` positions (default: as
    many as fit in CHUNK_ELEMENTS), with a hand-written backward (``_SelectedLogProbs``).
    """
    if chunk_tokens is None:
        chunk_tokens = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    return _SelectedLogProbs.apply(logits, token_ids, chunk_tokens)


def token_logprobs(model, rollouts: Rollouts) -> torch.Tensor:
    """(B, Tc) log pi(o_t | q, o_<t) of the completion tokens under ``model`` (with grad if enabled).

    Position ids are taken from the attention mask so that left-padded rows see the same
    positions as during ``generate``.
    """
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)
    attention_mask = torch.cat([rollouts.prompt_mask, torch.ones_like(rollouts.completion_mask)], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    n_completion = rollouts.completion_ids.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=n_completion + 1,
        use_cache=False,
    ).logits[:, :-1]
    return selective_log_softmax(logits, rollouts.completion_ids)
