"""Token log-probs through the LM head in token chunks, without a (B, T, V) logits tensor.

For the N scored positions, with final hidden states h (N, H), head weight W (V, H) and
optional bias b (V,), the logits of a transformers causal LM are

    z_n = f(s * (W h_n + b)) / T          f(u) = c * tanh(u / c)  (soft-capping, else f(u) = u)

with s the model's logit scale (Cohere's ``logit_scale``, 1 elsewhere), c its final soft-cap
(Gemma2's ``final_logit_softcapping``) and T the sampling temperature (1: the model's own
distribution). The log-prob of the chosen token x_n is

    log p_n = z_n[x_n] - logsumexp_v z_n[v].

``ChunkedHeadLogProbs`` computes it chunk of tokens by chunk of tokens; backward recomputes
each chunk's logits instead of keeping them, so the largest transient is one (chunk, V) block
(``CHUNK_ELEMENTS`` elements), never (N, V). With g_n the incoming gradient and p_n = softmax(z_n):

    dL/dz_n = g_n * (onehot(x_n) - p_n)
    dL/dy_n = dL/dz_n * (1/T) * (1 - tanh^2(s y_n / c) if soft-capped) * s      y_n = W h_n + b
    dL/dh_n = dL/dy_n W,     dL/dW = sum_n dL/dy_n^T h_n,     dL/db = sum_n dL/dy_n

dL/dW and dL/db are accumulated in fp32 (fp64 stays fp64) and cast to the weight's dtype at
the end. When the head's weight is the tied input embedding, its gradient reaches that one
parameter through autograd like any other.

``head_spec(model, sample_ids)`` finds a transformers causal LM's backbone and plain-linear
head, reads its scale and soft-cap from the config, and checks once per model object, on a
few tokens, that backbone + this formula reproduce the model's own logits; models that fail
(a head that is not an ``nn.Linear``, hooks on the head, an unknown logit transform, ...)
get ``None`` and callers fall back to the full-logits path.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

#: elements of one (chunk, V) logits block in the work dtype (2^24: 64 MB in fp32; at V = 151,936
#: that is 110 tokens per chunk); on CUDA bigger blocks feed the GEMMs better.
CHUNK_ELEMENTS = 1 << 24
CHUNK_ELEMENTS_CUDA = 1 << 26  # 256 MB in fp32: TRL's (4096, 32768) bf16 tile is as big


def default_chunk_tokens(vocab: int, device: torch.device) -> int:
    budget = CHUNK_ELEMENTS_CUDA if device.type == "cuda" else CHUNK_ELEMENTS
    return max(1, budget // max(vocab, 1))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def _mm_work(a: torch.Tensor, b: torch.Tensor, work: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with the result in ``work`` dtype; half inputs stay half in the GEMM (as the model's own
    head would run them) and only the product is widened (fp32 output directly on CUDA)."""
    if a.dtype == work:
        return torch.mm(a, b, out=out) if out is not None else torch.mm(a, b)
    if a.device.type == "cuda":
        try:  # torch >= 2.8: bf16/fp16 GEMM with an fp32 output, no rounding of the product
            result = torch.mm(a, b, out_dtype=work)
            if out is not None:
                out.copy_(result)
                return out
            return result
        except (TypeError, RuntimeError):
            pass
    result = torch.mm(a, b)
    if out is not None:
        out.copy_(result)
        return out
    return result.to(work)


def _addmm_work(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b for an fp32/fp64 ``acc`` without rounding the product to half precision: half
    inputs use the fp32-output GEMM on CUDA (torch >= 2.8, as TRL's chunked head does), else are widened."""
    if a.dtype != acc.dtype and a.device.type == "cuda":
        try:
            torch.addmm(acc, a, b.to(a.dtype), out_dtype=acc.dtype, out=acc)
            return
        except (TypeError, RuntimeError):
            pass
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class ChunkedHeadLogProbs(torch.autograd.Function):
    """log p(x_n) through the LM head, (chunk, V) logits at a time, logits recomputed in backward.

    forward(hidden (N, H), weight (V, H), bias (V,) or None, token_ids (N,), temperature,
    logit_scale, softcap or None, chunk_tokens, compute_dtype) -> (N,) in fp32 (fp64 for fp64).
    Saved for backward: hidden, weight, bias, token ids and the (N,) logsumexp; nothing of size V
    per token. The formulas are in the module docstring.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, temperature, logit_scale, softcap, chunk_tokens, compute_dtype):
        device = hidden.device
        work = _work_dtype(compute_dtype)
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        lse = torch.empty(n_tokens, dtype=work, device=device)
        picked = torch.empty(n_tokens, dtype=work, device=device)
        with torch.autocast(device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(work)
            ids = token_ids.reshape(-1, 1)
            buf = torch.empty(min(chunk_tokens, n_tokens), vocab, dtype=work, device=device) if n_tokens else None
            for s in range(0, n_tokens, chunk_tokens):
                e = min(s + chunk_tokens, n_tokens)
                z = _mm_work(hidden[s:e].to(compute_dtype), w.t(), work, out=buf[: e - s])
                if b is not None:
                    z.add_(b)
                _transform_(z, logit_scale, softcap, temperature)
                picked[s:e] = z.gather(1, ids[s:e]).squeeze(1)
                m = z.amax(dim=1)
                lse[s:e] = m + z.sub_(m[:, None]).exp_().sum(dim=1).log_()
            del buf
        ctx.save_for_backward(hidden, weight, bias, token_ids, lse)
        ctx.settings = (temperature, logit_scale, softcap, chunk_tokens, compute_dtype)
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, token_ids, lse = ctx.saved_tensors
        temperature, logit_scale, softcap, chunk_tokens, compute_dtype = ctx.settings
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        device = hidden.device
        work = lse.dtype
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        # fp32 (fp64) accumulators; for an fp32/fp64 weight this is already the returned gradient
        grad_w = torch.zeros(weight.shape, dtype=work, device=device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=work, device=device) if need_b and bias is not None else None
        if not (need_h or need_w or grad_b is not None) or n_tokens == 0:
            return _cast(grad_h, hidden), _cast(grad_w, weight), _cast(grad_b, bias), *(None,) * 6
        g = grad_out.reshape(-1, 1).to(work)
        ids = token_ids.reshape(-1, 1)
        # chain factor of z w.r.t. y = W h + b, apart from the soft-cap's (1 - t^2)
        outer = logit_scale / temperature
        with torch.autocast(device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(work)
            rows = min(chunk_tokens, n_tokens)
            buf = torch.empty(rows, vocab, dtype=work, device=device)
            tbuf = torch.empty(rows, vocab, dtype=work, device=device) if softcap else None
            for s in range(0, n_tokens, chunk_tokens):
                e = min(s + chunk_tokens, n_tokens)
                h_c = hidden[s:e].to(compute_dtype)
                y = _mm_work(h_c, w.t(), work, out=buf[: e - s])
                if b is not None:
                    y.add_(b)
                if softcap:
                    t = y.mul_(logit_scale / softcap).tanh_()  # t = tanh(s y / c), in buf
                    z = torch.mul(t, softcap / temperature, out=tbuf[: e - s])
                else:
                    t, z = None, y.mul_(outer)
                # dL/dz = g * (onehot - p), written over z
                z.sub_(lse[s:e, None]).exp_().mul_(-g[s:e])
                z.scatter_add_(1, ids[s:e], g[s:e])
                if t is not None:
                    z.mul_(t.mul_(t).neg_().add_(1))  # * (1 - t^2)
                gy = z.mul_(outer)
                # half weights: dL/dy rounded to the weight dtype for the GEMMs, as autograd through a
                # half nn.Linear would; dL/dW still sums in fp32 (on the CPU from the fp32 dL/dy itself)
                gy_c = gy if w.dtype == work else gy.to(w.dtype)
                if grad_h is not None:
                    grad_h[s:e] = _mm_work(gy_c, w, work)
                if grad_w is not None:
                    _addmm_work(grad_w, gy_c.t() if device.type == "cuda" else gy.t(), h_c)
                if grad_b is not None:
                    grad_b.add_(gy.sum(dim=0))
        return _cast(grad_h, hidden), _cast(grad_w, weight), _cast(grad_b, bias), *(None,) * 6


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


def _transform_(z: torch.Tensor, logit_scale: float, softcap: float | None, temperature: float) -> torch.Tensor:
    """z <- f(s * z) / T in place (module docstring)."""
    if softcap:
        z.mul_(logit_scale / softcap).tanh_().mul_(softcap / temperature)
    elif logit_scale != 1.0 or temperature != 1.0:
        z.mul_(logit_scale / temperature)
    return z


def chunked_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """(N,) log p(token_ids[n]) with logits z_n = f(s (W h_n + b)) / T, chunked (module docstring).

    ``hidden`` (N, H) and ``token_ids`` (N,); ``weight`` (V, H) and ``bias`` (V,) are the head's
    parameters (pass them, not copies, so their gradients accumulate). Under autocast the GEMMs
    run in the autocast dtype, as ``nn.Linear`` would; the softmax math is fp32 (fp64 for fp64).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if hidden.ndim != 2 or token_ids.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, H) and token_ids (N,), got {tuple(hidden.shape)} and {tuple(token_ids.shape)}"
        )
    device = hidden.device
    if torch.is_autocast_enabled(device.type):
        compute = torch.get_autocast_dtype(device.type)
    else:
        compute = weight.dtype
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(weight.shape[0], device)
    return ChunkedHeadLogProbs.apply(
        hidden,
        weight,
        bias,
        token_ids,
        float(temperature),
        float(logit_scale),
        float(softcap) if softcap else None,
        int(chunk_tokens),
        compute,
    )


# ---- finding a transformers model's backbone and head, safely --------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """How to score a causal LM through ``chunked_head_logprobs``."""

    backbone: nn.Module  # returns .last_hidden_state (B, T, H): what the head consumes
    head: nn.Linear
    logit_scale: float
    softcap: float | None


_SPECS: "weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module | None, HeadSpec | None, str]]" = (
    weakref.WeakKeyDictionary()
)


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place, so they run)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _candidate(model: nn.Module) -> tuple[HeadSpec | None, str]:
    base = _base(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        return None, f"its output head is {type(head).__name__}, not a plain nn.Linear"
    if head._forward_hooks or head._forward_pre_hooks:
        return None, "its output head has forward hooks (offloading or another wrapper)"
    if head.weight.device.type == "meta" or head.weight.ndim != 2 or head.weight.numel() == 0:
        return None, "its output head's weight is not materialised here (offloaded or sharded)"
    backbone = getattr(base, "base_model", None)
    if backbone is None or backbone is base:
        get_decoder = getattr(base, "get_decoder", None)
        backbone = get_decoder() if callable(get_decoder) else None
    if backbone is None or backbone is base:
        return None, "no backbone module found"
    config = getattr(base, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    # Logit transforms transformers models apply after the head (the check below catches others):
    # Cohere multiplies by logit_scale (stored on the module too), Granite divides by logits_scaling,
    # Falcon-H1 multiplies by lm_head_multiplier; Gemma2/3 soft-cap with final_logit_softcapping.
    scale = getattr(base, "logit_scale", None)
    if not isinstance(scale, (int, float)):
        scale = getattr(text, "logit_scale", None)
    if scale is None and getattr(text, "logits_scaling", None):
        scale = 1.0 / text.logits_scaling
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    softcap = getattr(text, "final_logit_softcapping", None)
    return HeadSpec(backbone, head, float(1.0 if scale is None else scale), float(softcap) if softcap else None), ""


@torch.no_grad()
def _check(model: nn.Module, spec: HeadSpec, sample_ids: torch.Tensor) -> str:
    """'' if backbone + head formula reproduce the model's logits on ``sample_ids``, else why not."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no dropout: the two passes must see the same function
    captured = []
    hook = spec.head.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        logits = model(input_ids=sample_ids, use_cache=False).logits
        hidden = spec.backbone(input_ids=sample_ids, use_cache=False).last_hidden_state
    except Exception as e:  # noqa: BLE001 - any failure means "not safe": fall back
        return f"checking it failed ({type(e).__name__}: {e})"
    finally:
        hook.remove()
        for module, mode in modes:
            module.training = mode
    if len(captured) != 1 or captured[0].shape != hidden.shape:
        return "its head input is not the backbone's last hidden state"
    half = logits.dtype in (torch.float16, torch.bfloat16)
    tol = 2e-2 if half else 1e-4
    if not torch.allclose(
        captured[0].float(), hidden.float(), rtol=tol, atol=tol * max(1.0, float(hidden.abs().max()))
    ):
        return "its head input is not the backbone's last hidden state"
    ours = nn.functional.linear(hidden, spec.head.weight, spec.head.bias).to(_work_dtype(hidden.dtype))
    _transform_(ours, spec.logit_scale, spec.softcap, 1.0)
    reference = logits.to(ours.dtype)
    if ours.shape != reference.shape or not torch.allclose(
        ours, reference, rtol=tol, atol=tol * max(1.0, float(reference.abs().max()))
    ):
        return "its logits are not f(logit_scale * head(hidden)) (an unknown logit transform)"
    return ""


def head_spec(model: nn.Module, sample_ids: torch.Tensor) -> tuple[HeadSpec | None, str]:
    """(spec, '') when ``model`` can be scored through ``chunked_head_logprobs``, else (None, reason).

    Checked once per model object (and again if its head module is replaced) on the last few
    tokens of ``sample_ids`` (a (B, T) batch of input ids); the result is cached.
    """
    base = _base(model)
    get_head = getattr(base, "get_output_embeddings", None)
    current = get_head() if callable(get_head) else None
    cached = _SPECS.get(model)
    if cached is not None and cached[0] is current:
        return cached[1], cached[2]
    spec, reason = _candidate(model)
    if spec is not None:
        reason = _check(base, spec, sample_ids[:1, -8:])
        if reason:
            spec = None
    _SPECS[model] = (current, spec, reason)
    return spec, reason
