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
    texts: list[str]  # decoded completions up to their stop (token or string), special tokens removed

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


def completion_mask_from_eos(
    completion_ids: torch.Tensor, eos_token_id: int | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the tokens up to and including the first EOS, and whether a row had none."""
    eos_ids = torch.tensor(
        eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=completion_ids.device
    )
    is_eos = torch.isin(completion_ids, eos_ids)
    # number of EOS strictly before position t; keep t while it is zero
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (eos_before == 0).to(torch.long)
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


@dataclass(frozen=True)
class StopRule:
    """Where a completion ends: at the first of ``token_ids`` (included in the completion), or at the
    token that completes the first of ``strings`` (the text is cut before the string)."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()


def _as_list(ids) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def chat_turn_token_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer's chat template writes around turns (Qwen's ``<|im_start|>`` and
    ``<|im_end|>``, Llama-3's ``<|start_header_id|>`` ... ``<|eot_id|>``), found by rendering a two-turn chat.

    A completion that writes one of them has left its own turn: the text after it is another speaker's.
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}], tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that needs other roles or tools: no markers known
        return []
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(dict.fromkeys(i for i in ids if i in special))


def stop_rule(generation_config, tokenizer, strings: tuple[str, ...] = ()) -> StopRule:
    """Every id a completion stops at: the model's ``generation_config`` EOS ids (Llama-3 instruct lists three;
    None: no generation config), the tokenizer's EOS and the chat template's turn markers; plus the prompt
    template's stop ``strings``."""
    ids = (
        _as_list(getattr(generation_config, "eos_token_id", None))
        + _as_list(tokenizer.eos_token_id)
        + chat_turn_token_ids(tokenizer)
    )
    return StopRule(tuple(dict.fromkeys(i for i in ids if i is not None)), tuple(strings))


#: generation_config fields that describe the model rather than a sampling choice
_NOT_SAMPLING = {
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "cache_implementation",
}


def ignored_generation_settings(config) -> dict:
    """The sampling settings of a model's own generation ``config`` that conspo does not apply (e.g.
    ``repetition_penalty``, ``top_k``, ``temperature``): rollouts come only from the run's settings."""
    if config is None:
        return {}
    return {k: v for k, v in sorted(config.to_diff_dict().items()) if k not in _NOT_SAMPLING and v is not None}


def ignored_settings_note(ignored: dict, where_recorded: str) -> str:
    """The one line that says which of the model's generation settings are ignored, and where that is recorded."""
    settings = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
    return (
        f"note: the model's generation_config sets {settings}: ignored; rollouts and evaluations sample only "
        f"with the run's own settings ({where_recorded})"
    )


def sampler_settings(stop: StopRule, *, greedy: bool, temperature: float, top_p: float, max_new_tokens: int) -> dict:
    """The whole generation config conspo samples with: nothing else is taken from the model."""
    settings = {"max_new_tokens": max_new_tokens, "eos_token_id": list(stop.token_ids)}
    settings.update(
        {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    )
    if stop.strings:
        settings["stop_strings"] = list(stop.strings)
    return settings


class _OwnGenerationConfig:
    """Within the block, ``model.generation_config`` is ``config``: transformers fills every field a
    ``generate`` call leaves unset from the model's config (its repetition penalty, n-gram ban, ...),
    so the model's own is swapped out rather than overridden field by field."""

    def __init__(self, model, config):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the wrapped model
        self.models, self.config = list(dict.fromkeys([model, inner])), config

    def __enter__(self):
        self.saved = [m.__dict__.get("generation_config") for m in self.models]
        for m in self.models:
            m.generation_config = self.config

    def __exit__(self, *exc):
        for m, saved in zip(self.models, self.saved):
            if saved is None:
                m.__dict__.pop("generation_config", None)
            else:
                m.generation_config = saved


def with_bos(tokenizer, prompts: list[str]) -> list[str]:
    """Prompts with the BOS token in front when the tokenizer adds one to plain text (Llama, Gemma) and the
    prompt does not start with it already (a chat template writes it itself). Prompts are then tokenised
    without special tokens, so a templated prompt never gets two."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None:
        return prompts
    ids = tokenizer("a")["input_ids"]
    if not ids or ids[0] != tokenizer.bos_token_id:
        return prompts
    return [p if p.startswith(bos) else bos + p for p in prompts]


def _stop_string_ends(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor, strings) -> list[int | None]:
    """Per row, the index of the token that completes the first stop string inside ``mask``, or None."""
    ends = []
    for row, keep in zip(completion_ids.tolist(), mask.sum(1).tolist()):
        pieces = tokenizer.batch_decode([[i] for i in row[:keep]], skip_special_tokens=True)
        text, end = "", None
        for t, piece in enumerate(pieces):
            text += piece
            if any(s in text[-(len(piece) + len(s)) :] for s in strings):
                end = t
                break
        ends.append(end)
    return ends


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
    stop_strings: tuple[str, ...] = (),
) -> Rollouts:
    """Sample ``num_generations`` completions of each prompt (greedy: one deterministic each).

    The distribution is exactly softmax(logits / temperature) with the top-p cut: nothing is taken from the
    model's own ``generation_config`` (``ignored_generation_settings`` lists what it would have added). A
    completion ends at the first stop id of ``stop_rule`` (EOS ids, chat turn markers; the token is kept in
    the mask, as an EOS) or at the token completing a stop string; its text is cut there, so text after a
    turn marker is never scored.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    stop = stop_rule(model.generation_config, tokenizer, stop_strings)
    repeated = [p for p in with_bos(tokenizer, prompts) for _ in range(num_generations)]
    encoded = tokenizer(repeated, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = encoded["input_ids"].to(device)
    prompt_mask = encoded["attention_mask"].to(device)
    config = GenerationConfig(
        **sampler_settings(stop, greedy=greedy, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        with _OwnGenerationConfig(model, config):
            output = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=config,
                **({"tokenizer": tokenizer} if stop.strings else {}),
            )
    finally:
        model.train(was_training)
    completion_ids = output[:, prompt_ids.shape[1] :]
    completion_mask, truncated = completion_mask_from_eos(completion_ids, list(stop.token_ids))
    keep = completion_mask.sum(1) - (~truncated).long()  # tokens before the stop token
    cut_at: list[int | None] = [None] * len(keep)
    if stop.strings:
        cut_at = _stop_string_ends(tokenizer, completion_ids, completion_mask, stop.strings)
        for r, end in enumerate(cut_at):
            if end is not None:
                completion_mask[r, end + 1 :] = 0
                truncated[r] = False
                keep[r] = end + 1
    # Tokens after the stop are padding: make them the pad id so nothing downstream reads them.
    completion_ids = torch.where(
        completion_mask.bool(), completion_ids, torch.full_like(completion_ids, tokenizer.pad_token_id)
    )
    texts = tokenizer.batch_decode(
        [row[:n] for row, n in zip(completion_ids.tolist(), keep.tolist())], skip_special_tokens=True
    )
    if stop.strings:
        texts = [
            _cut_at_stop_string(text, stop.strings) if end is not None else text for text, end in zip(texts, cut_at)
        ]
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, texts)


def _cut_at_stop_string(text: str, strings) -> str:
    found = [i for i in (text.find(s) for s in strings) if i >= 0]
    return text[: min(found)] if found else text


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


def selective_log_softmax(
    logits: torch.Tensor, token_ids: torch.Tensor, *, chunk_tokens: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """(B, T) log softmax(logits / T)[token_ids] without a full fp32 (B, T, V) log-softmax.

        log p(x_t) = z[t, x_t] - logsumexp_v z[t, v],    z = logits / temperature

    Computed in fp32 (fp64 stays fp64) over chunks of ``chunk_tokens`` positions (default: as
    many as fit in CHUNK_ELEMENTS), with a hand-written backward (``_SelectedLogProbs``).
    """
    if chunk_tokens is None:
        from conspo.logprobs import CHUNK_ELEMENTS  # one chunk budget for both log-prob paths

        chunk_tokens = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    return _SelectedLogProbs.apply(logits, token_ids, chunk_tokens, float(temperature))


_WARNED_FALLBACK: set[str] = set()


def _model_inputs(rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if rollouts.prompt_ids.shape[1] == 0:
        raise ValueError(
            "token_logprobs needs at least one prompt token per row (the first completion token is "
            "predicted from the last prompt position)"
        )
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


def token_logprobs(
    model, rollouts: Rollouts, *, temperature: float = 1.0, chunk_tokens: int | None = None
) -> torch.Tensor:
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
            warnings.warn(
                f"conspo.rollout.token_logprobs: {name} is scored through its full (B, T, V) logits "
                f"(much more memory): {reason}.",
                RuntimeWarning,
                stacklevel=2,
            )
        return full_logits_logprobs(model, rollouts, temperature=temperature)
    n_prompt = rollouts.prompt_ids.shape[1]
    n_completion = rollouts.completion_ids.shape[1]
    mask = rollouts.completion_mask.bool()
    out = spec.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, n_prompt - 1 : n_prompt - 1 + n_completion]  # position t-1 predicts token t
    weight, bias = spec.head.weight, spec.head.bias
    logps = chunked_head_logprobs(
        hidden[mask].to(weight.device),
        weight,
        bias,
        rollouts.completion_ids[mask].to(weight.device),
        temperature=temperature,
        logit_scale=spec.logit_scale,
        softcap=spec.softcap,
        chunk_tokens=chunk_tokens,
    )
    return logps.new_zeros(mask.shape).masked_scatter(mask.to(logps.device), logps)


@torch.no_grad()
def token_logprobs_no_grad(
    model, rollouts: Rollouts, *, temperature: float = 1.0, micro_batch_size: int = 0, chunk_tokens: int | None = None
) -> torch.Tensor:
    """``token_logprobs`` without autograd, ``micro_batch_size`` rows per pass (0: all): the
    old-policy log-probs for importance ratios and the reference policy's for the KL term, through
    the same chunked head and formula as the training pass."""
    step = micro_batch_size or len(rollouts)
    parts = [
        token_logprobs(model, rollouts.rows(slice(i, i + step)), temperature=temperature, chunk_tokens=chunk_tokens)
        for i in range(0, len(rollouts), step)
    ]
    return torch.cat(parts) if parts else torch.zeros_like(rollouts.completion_mask, dtype=torch.float32)
