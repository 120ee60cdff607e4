"""GPU benchmark: ConSPO vs GRPO training steps on a Qwen2-0.5B-shaped model (one prepared script).

Model: Qwen2Config(hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab
151936, tied embeddings), random weights, bfloat16 parameters, AdamW (the trainer's), on one
CUDA device. Batch: --groups groups of G=8 rollouts, prompts of 256 random tokens and
completions of 1024 random tokens (every token counted; --ragged draws lengths in [L/2, L]),
binary rewards with at least one correct and one wrong rollout per group.

One step = exactly the trainer's update path without generation:
``conspo.update.accumulate_gradients`` (per micro-batch of whole groups: ``token_logprobs``
forward with ``selective_log_softmax``, the objective from ``conspo.objectives``, backward),
then the trainer's gradient clipping (``conspo.update.grad_norm``, max norm 1) and ``optimizer.step()``.
Objective options are the trainer's defaults (``Objective.options(TrainConfig(objective=...).objective_settings(...))``).

Timing: warm-up steps for every objective first, then timed steps interleaved conspo, grpo,
grpo, conspo, ... (torch.cuda.synchronize around each, time.perf_counter); peak memory is
torch.cuda.max_memory_allocated over each step (reset before it). Reported: median step time,
completion tokens/s, peak allocated/reserved memory, ratios conspo/grpo. An out-of-memory step
is reported as OOM and the script goes on. --max-seconds stops the timed loop early (default
420 s) so the whole script stays under 8 minutes on an H100 (expected: ~1-2 minutes).

Without a CUDA device the script prints a message and exits with status 0 without measuring
anything; --dry-run runs the same code path on the CPU at toy size (a 2-layer model) instead.

    python bench/gpu.py                 # on the lent GPU (full size)
    python bench/gpu.py --quick         # fewer steps, same sizes
    python bench/gpu.py --dry-run       # CPU, toy sizes: checks the code path anywhere (< 30 s)
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
)
TOY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=1024,
)


from machine import busy_note, header_line  # noqa: E402  (bench/ is on sys.path when run as a script)

# ---- model, batch, step -------------------------------------------------------------------------


def build_model(shape: dict, max_positions: int, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **shape,
        tie_word_embeddings=True,
        max_position_embeddings=max(32768, max_positions),
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).train()


def make_batch(args, vocab: int, device: torch.device):
    from conspo.rollout import Rollouts

    gen = torch.Generator().manual_seed(args.seed)
    rows, G = args.groups * args.group_size, args.group_size
    prompt_ids = torch.randint(2, vocab, (rows, args.prompt_len), generator=gen)
    completion_ids = torch.randint(2, vocab, (rows, args.completion_len), generator=gen)
    if args.ragged:
        lengths = torch.randint(args.completion_len // 2, args.completion_len + 1, (rows,), generator=gen)
    else:
        lengths = torch.full((rows,), args.completion_len)
    completion_mask = (torch.arange(args.completion_len)[None, :] < lengths[:, None]).long()
    completion_ids = torch.where(completion_mask.bool(), completion_ids, torch.zeros_like(completion_ids))
    rewards = (torch.rand(rows, generator=gen) < 0.5).float().view(-1, G)
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # every group has both kinds: every ConSPO group is valid
    rollouts = Rollouts(
        prompt_ids.to(device),
        torch.ones_like(prompt_ids).to(device),
        completion_ids.to(device),
        completion_mask.to(device),
        (lengths == args.completion_len).to(device),
        [""] * rows,
    )
    return rollouts, rewards.view(-1).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, name: str, rollouts, rewards, args) -> dict:
    """The trainer's update on one batch: accumulate_gradients, clip, optimizer.step()."""
    from conspo.config import TrainConfig
    from conspo.objectives import get_objective
    from conspo.update import accumulate_gradients, grad_norm

    cfg = TrainConfig(objective=name, group_size=args.group_size, micro_batch_size=args.micro_batch)
    options = get_objective(name).options(
        cfg.objective_settings(margin=cfg.margin_start, max_new_tokens=args.completion_len)
    )
    optimizer.zero_grad(set_to_none=True)
    metrics = accumulate_gradients(
        model,
        name,
        rollouts,
        rewards,
        args.group_size,
        options,
        micro_batch_size=cfg.micro_batch_size,
        group_mode=cfg.group_mode,
    )
    norm = grad_norm(model, cfg.max_grad_norm)
    optimizer.step()
    return {"loss": metrics["objective/loss"], "grad_norm": norm}


def measure(args, device: torch.device, dtype: torch.dtype, shape: dict, deadline: float) -> tuple[dict, dict]:
    model = build_model(shape, args.prompt_len + args.completion_len, device, dtype, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rollouts, rewards = make_batch(args, shape["vocab_size"], device)
    completion_tokens = int(rollouts.completion_mask.sum())
    total_tokens = completion_tokens + int(rollouts.prompt_mask.sum())
    names = list(args.objectives)
    results = {n: {"times": [], "peak_alloc": [], "peak_reserved": [], "loss": None, "oom": False} for n in names}

    def one(name: str, timed: bool) -> None:
        r = results[name]
        if r["oom"]:
            return
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            sync(device)
            t0 = time.perf_counter()
            out = train_step(model, optimizer, name, rollouts, rewards, args)
            sync(device)
            dt = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            r["oom"] = True
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  {name}: out of memory", file=sys.stderr, flush=True)
            return
        r["loss"] = out["loss"]
        if timed:
            r["times"].append(dt)
            if device.type == "cuda":
                r["peak_alloc"].append(torch.cuda.max_memory_allocated(device))
                r["peak_reserved"].append(torch.cuda.max_memory_reserved(device))
        print(
            f"  {name} {'timed' if timed else 'warm-up'} step: {dt:.3f} s, loss {out['loss']:.4f}, "
            f"grad norm {out['grad_norm']:.3g}",
            file=sys.stderr,
            flush=True,
        )

    for i in range(args.warmup):
        for name in names if i % 2 == 0 else names[::-1]:
            one(name, timed=False)
    stopped_early = False
    for i in range(args.steps):
        if time.perf_counter() > deadline:
            stopped_early = True
            break
        for name in names if i % 2 == 0 else names[::-1]:  # A B, B A, A B, ...
            one(name, timed=True)
    info = {
        "params": n_params,
        "completion_tokens": completion_tokens,
        "total_tokens": total_tokens,
        "stopped_early": stopped_early,
        "attn": getattr(model.config, "_attn_implementation", "?"),
    }
    return results, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="same code path on the CPU at toy size (no GPU needed)")
    ap.add_argument("--quick", action="store_true", help="full sizes, 1 warm-up + 3 timed steps per objective")
    ap.add_argument(
        "--objectives",
        nargs="+",
        default=["conspo", "grpo"],
        choices=["conspo", "grpo", "dr_grpo", "dapo", "gspo"],
        help="objectives (default: conspo grpo)",
    )
    ap.add_argument("--groups", type=int, default=8, help="groups (prompts) per step (default 8: 64 rollouts)")
    ap.add_argument("--group-size", type=int, default=8, help="G (default 8)")
    ap.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (default 256)")
    ap.add_argument("--completion-len", type=int, default=1024, help="completion tokens (default 1024)")
    ap.add_argument("--ragged", action="store_true", help="completion lengths uniform in [L/2, L] instead of all L")
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=8,
        help="rows per forward/backward (default 8 = one whole group; the trainer's micro_batch_size)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per objective (default 2)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per objective (default 6)")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (default 1e-6)")
    ap.add_argument(
        "--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="parameter dtype (default bf16)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=420,
        help="stop taking timed steps after this many seconds from start (default 420)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    if args.dry_run:
        device, shape = torch.device("cpu"), TOY
        args.groups, args.prompt_len, args.completion_len = 2, 16, 32
        args.warmup, args.steps = 1, 2
        card = "CPU (dry run: toy model, toy sizes; numbers mean nothing)"
    else:
        if not torch.cuda.is_available():
            print(
                "bench/gpu.py: no CUDA device is visible (torch.cuda.is_available() is False; torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Nothing was measured. "
                "Run it on a machine with a GPU, or pass --dry-run to check the code path on the CPU."
            )
            return 0
        device, shape = torch.device("cuda"), QWEN2_05B
        card = (
            f"{torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} "
            f"GiB, CUDA {torch.version.cuda})"
        )
        if args.quick:
            args.warmup, args.steps = 1, 3
    if args.micro_batch % args.group_size and any(n != "conspo" for n in args.objectives):
        ap.error("--micro-batch must be a multiple of --group-size for the clipped objectives")
    dtype = getattr(torch, args.dtype)
    header, busy = header_line(args.threads), busy_note()

    results, info = measure(args, device, dtype, shape, started + args.max_seconds)

    print("## GPU training step: ConSPO vs GRPO on a Qwen2-0.5B-shaped model\n")
    print(header + "\n")
    print(busy, end="")
    print(f"- device: {card}")
    print(
        f"- model: Qwen2 {shape} tied, {info['params'] / 1e6:.0f}M parameters, {args.dtype}, random weights, "
        f"attention {info['attn']}; AdamW lr {args.lr:g}, clip 1.0"
    )
    print(
        f"- batch: {args.groups} groups x G={args.group_size} = {args.groups * args.group_size} rollouts, prompts "
        f"{args.prompt_len} + completions {args.completion_len} tokens{' (ragged)' if args.ragged else ''}; "
        f"{info['completion_tokens']:,} completion tokens per step; micro-batch {args.micro_batch} rows"
    )
    print(
        f"- step: conspo.update.accumulate_gradients + trainer clipping + optimizer.step(); {args.warmup} warm-up "
        f"step(s) per objective, then up to {args.steps} timed, interleaved"
        + (" (stopped early by --max-seconds)" if info["stopped_early"] else "")
    )
    print()
    on_gpu = device.type == "cuda"
    print(
        "| card | objective | timed steps | median step s | completion tokens/s | all tokens/s "
        "| peak allocated GiB | peak reserved GiB | loss |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    short_card = card.split(" (")[0]
    medians = {}
    for name, r in results.items():
        if r["oom"] and not r["times"]:
            print(f"| {short_card} | {name} | 0 | OOM | - | - | - | - | - |")
            continue
        if not r["times"]:
            print(f"| {short_card} | {name} | 0 | - | - | - | - | - | - |")
            continue
        t = statistics.median(r["times"])
        medians[name] = (t, max(r["peak_alloc"]) if r["peak_alloc"] else None)
        alloc = f"{max(r['peak_alloc']) / 2**30:.2f}" if on_gpu else "n/a (CPU)"
        reserved = f"{max(r['peak_reserved']) / 2**30:.2f}" if on_gpu else "n/a (CPU)"
        print(
            f"| {short_card} | {name} | {len(r['times'])} | {t:.3f} | {info['completion_tokens'] / t:,.0f} | "
            f"{info['total_tokens'] / t:,.0f} | {alloc} | {reserved} | {r['loss']:.4f} |"
        )
    if "conspo" in medians and "grpo" in medians:
        (tc, mc), (tg, mg) = medians["conspo"], medians["grpo"]
        mem = f", peak memory {mc / mg:.3f}x" if mc and mg else ""
        print(f"\nconspo / grpo: step time {tc / tg:.3f}x, tokens/s {tg / tc:.3f}x{mem}.")
    if not on_gpu:
        print(f"Peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.")
    print(f"Wall time {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
