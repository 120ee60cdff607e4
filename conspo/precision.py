"""The dtypes of a run: the weights' (float32 unless asked), the compute's (bf16 autocast on a GPU that has
it), the autocast context every forward pass runs in, and how much of an update half-precision weights lose.
Both engines read these, so a run states and uses the same precision whichever engine trains it."""

from __future__ import annotations

import torch

from conspo.config import TrainConfig


def resolve_device_dtype(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """``auto`` device: CUDA when available. The weight dtype: ``auto`` is float32 everywhere (master weights and
    AdamW state; on a GPU the compute runs in bfloat16 under autocast: ``compute_dtype``)."""
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    return device, torch.float32 if cfg.dtype == "auto" else getattr(torch, cfg.dtype)


def compute_dtype(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """bfloat16 when forward and backward run under bf16 autocast (``mixed_precision`` bf16, or auto on a CUDA GPU
    with bf16 and float32 weights), else None (compute in the weights' dtype)."""
    if cfg.mixed_precision == "bf16":
        return torch.bfloat16
    if (
        cfg.mixed_precision == "auto"
        and dtype == torch.float32
        and device.type == "cuda"
        and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def precision_summary(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> str:
    """One line for the run header: weights, compute and optimizer-state dtypes."""
    name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    compute = compute_dtype(cfg, device, dtype)
    trainable = "LoRA adapter float32 over a frozen " + name(dtype) + " base" if cfg.lora_r else name(dtype)
    return (
        f"weights {trainable}, compute {name(compute) + ' (autocast)' if compute else name(dtype)}, "
        f"AdamW state {'float32' if cfg.lora_r else name(dtype)}"
    )


def updates_lost_fraction(parameters, lr: float) -> float:
    """Share of the weights that an update of size ``lr`` (AdamW's step size per weight, roughly) leaves
    unchanged in their own dtype: ``w + lr`` rounds back to ``w``. 0 for float32 weights at any usual lr."""
    lost = total = 0
    for p in parameters:
        w = p.detach()
        lost += int(((w.float() + lr).to(w.dtype) == w).sum())
        total += w.numel()
    return lost / max(total, 1)


def precision(cfg: TrainConfig, device: torch.device, dtype: torch.dtype = torch.float32):
    """The autocast context of every forward pass: bfloat16 compute over the weights when ``compute_dtype``
    says so, else a no-op."""
    compute = compute_dtype(cfg, device, dtype)
    return torch.autocast(device_type=device.type, dtype=compute or torch.bfloat16, enabled=compute is not None)


def warn_low_precision(cfg: TrainConfig, model, dtype: torch.dtype, log) -> None:
    """With --low-precision-weights: say how much of an AdamW step of size lr this model's weights would lose."""
    if not cfg.low_precision_weights:
        return
    lost = updates_lost_fraction((p for p in model.parameters() if p.requires_grad), cfg.lr)
    log(
        f"WARNING --low-precision-weights: AdamW updates {str(dtype).removeprefix('torch.')} weights directly; "
        "an update "
        f"of size lr={cfg.lr:g} leaves {lost:.1%} of this model's weights unchanged (rounded away). --dtype auto keeps "
        "float32 weights and loses none"
    )
