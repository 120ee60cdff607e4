"""Peak memory of per-token log-probs: conspo.rollout.selective_log_softmax vs the naive way.

For B x T completion tokens over a vocabulary of V (default 32768), a random logits tensor
(B, T, V) in bfloat16 and/or float32 (requires_grad) and random token ids, two variants run
forward and backward (loss = sum(logps * w) with fixed random weights w):

  ours    conspo.rollout.selective_log_softmax(logits, ids)          (default token chunks, as the trainer)
  naive   torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)

torch's CPU allocator keeps no peak statistics, so every measurement runs in a fresh
subprocess: it fills the inputs in place (no transient copy), runs both variants once on a
tiny tensor (so lazily allocated runtime buffers are already there), then reads
resource.getrusage(RUSAGE_SELF).ru_maxrss as the baseline. Reported, in MB over that baseline:

  peak extra       ru_maxrss after forward+backward - baseline (the number the target is about)
  held for bwd     resident memory between forward and backward - baseline (what a real model
                   keeps alive while the rest of its activations pile up)
  peak - grad      peak extra minus the logits' own gradient (B*T*V in the logits' dtype), which
                   both variants must produce and a real model consumes in lm_head's backward

Measurements alternate ours, naive, ours, naive (--repeats pairs per size) and the table
shows medians. Correctness: the values and a slice of the gradient of both variants (same
seed) are compared (max abs diff). Target stated in the issue: ours <= 0.3x naive.

    .venv/bin/python bench/bench_logprob_memory.py           # B x T = 8x512, 8x1024, 16x1024; bf16 and fp32
                                                             # (fp32 16x1024 skipped: ~9 GB; --max-gb 10 adds it)
    .venv/bin/python bench/bench_logprob_memory.py --quick   # smoke check, < 30 s

--model: the whole token log-prob pass of a model instead (issue 10's measurement). A random
2-layer Qwen2 with the Qwen2.5 vocabulary (V = 151,936, hidden 256, intermediate 1024, 4 heads,
2 KV heads, tied embeddings, float32), B completions x T tokens after a 16-token prompt, forward
+ backward of sum(logps * w) through the model's parameters:

  ours    conspo.rollout.token_logprobs (backbone + chunked LM head, conspo.logprobs)
  trl     TRL's fused LM head as GRPOTrainer uses it: trl.trainer.utils.add_fused_lm_head(model,
          outputs=("log_probs", "entropy")), then model(..., labels=..., fused_lm_head=True) with
          prompt and padding labels -100, exactly as GRPOTrainer._get_per_token_logps_and_entropies
  old     conspo.rollout.full_logits_logprobs: the model's (B, T, V) logits + selective_log_softmax
          (our pre-issue-10 path, now the fallback)
  naive   the model's logits + torch.log_softmax(fp32) + gather (~10 GB at 8x512: not run by default)

Peak = VmHWM over the RSS after the model is built and a one-row warm-up has run (the kernel's
peak-RSS counter is reset there: /proc/self/clear_refs); it includes the parameters' gradients
(~155 MB for the tied embedding). Target stated in the issue: ours <= 0.25x trl.

    .venv/bin/python bench/bench_logprob_memory.py --model            # 8x512; ours, trl, old (~6 min)
    .venv/bin/python bench/bench_logprob_memory.py --model --quick    # 2x64, < 1 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.3
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
VARIANTS = ("ours", "naive")


from machine import busy_note, header_line, run_fresh  # noqa: E402  (bench/ is on sys.path when run as a script)

# ---- one measurement, in its own process ----------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(spec: dict) -> None:
    import torch

    from conspo.rollout import selective_log_softmax

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, DTYPES[spec["dtype"]])
    batch, width, vocab, chunk_tokens = spec["batch"], spec["tokens"], spec["vocab"], spec["chunk_tokens"]

    def ours(logits, ids):
        return selective_log_softmax(logits, ids, chunk_tokens=chunk_tokens)

    def naive(logits, ids):
        return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    fn = {"ours": ours, "naive": naive}[spec["variant"]]
    # Lazily allocated runtime state (kernels, thread pools) before the baseline: both variants, tiny.
    small = torch.randn(2, 4, vocab, dtype=dtype, requires_grad=True)
    small_ids = torch.randint(0, vocab, (2, 4))
    for f in (ours, naive):
        f(small, small_ids).sum().backward()
    del small, small_ids

    gen = torch.Generator().manual_seed(spec["seed"])
    logits = torch.empty(batch, width, vocab, dtype=dtype)
    for row in range(batch):  # filled in place, one row at a time: no transient full-size copy
        logits[row].normal_(generator=gen).mul_(3.0)
    logits.requires_grad_(True)
    ids = torch.randint(0, vocab, (batch, width), generator=gen)
    weights = torch.randn(batch, width, generator=gen)

    base_max, base_rss = _maxrss_bytes(), _rss_bytes()
    t0 = time.perf_counter()
    logps = fn(logits, ids)
    t1 = time.perf_counter()
    fwd_max, held = _maxrss_bytes(), _rss_bytes()
    (logps.float() * weights).sum().backward()
    t2 = time.perf_counter()
    total_max = _maxrss_bytes()
    grad_bytes = logits.grad.numel() * logits.grad.element_size()
    result = {
        **spec,
        "logits_mb": logits.numel() * logits.element_size() / 2**20,
        "grad_mb": grad_bytes / 2**20,
        "fwd_peak_mb": (fwd_max - base_max) / 2**20,
        "held_mb": (held - base_rss) / 2**20,
        "peak_mb": (total_max - base_max) / 2**20,
        "fwd_s": t1 - t0,
        "bwd_s": t2 - t1,
    }
    if spec.get("values_path"):
        torch.save(
            {"logps": logps.detach().float(), "grad": logits.grad[..., :512].float().clone()}, spec["values_path"]
        )
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(spec: dict, timeout: float) -> dict:
    return run_fresh(__file__, "--_worker", spec, threads=spec["threads"], timeout=timeout, label=str(spec))[0]


def estimate_gb(batch: int, width: int, vocab: int, dtype: str) -> float:
    """Whole-process peak of the naive variant: the logits, ~3 fp32 (B, T, V) tensors at its peak
    (measured at small sizes, both dtypes), ~0.4 GB of runtime."""
    n = batch * width * vocab
    item = 2 if dtype == "bf16" else 4
    return (n * item + 3 * n * 4) / 1e9 + 0.4


# ---- --model: the whole log-prob pass of a model, one measurement per process -------------------

MODEL_VARIANTS = ("ours", "trl", "old", "naive")
MODEL_TARGET = 0.25  # ours / trl peak


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak-RSS counter (Linux >= 4.0)
        return True
    except OSError:
        return False


def model_worker(spec: dict) -> None:
    import gc

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conspo.rollout import Rollouts, full_logits_logprobs, token_logprobs

    torch.set_num_threads(spec["threads"])
    vocab, batch, width, n_prompt = spec["vocab"], spec["batch"], spec["tokens"], spec["prompt"]
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=spec["hidden"],
        intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=max(4096, n_prompt + width + 1),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(spec["seed"])
    model = Qwen2ForCausalLM(config)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    prompt_mask = torch.ones(batch, n_prompt, dtype=torch.long)
    rollouts = Rollouts(
        torch.randint(2, vocab, (batch, n_prompt), generator=gen),
        prompt_mask,
        torch.randint(2, vocab, (batch, width), generator=gen),
        torch.ones(batch, width, dtype=torch.long),
        torch.zeros(batch, dtype=torch.bool),
        [""] * batch,
    )
    weights = torch.randn(batch, width, generator=gen)

    if spec["variant"] == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))  # as GRPOTrainer.__init__

        def fn(r):  # GRPOTrainer._get_per_token_logps_and_entropies, one batch
            input_ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
            attention = torch.cat([r.prompt_mask, r.completion_mask], 1)
            keep = r.completion_ids.shape[1]
            labels = input_ids.masked_fill(attention == 0, -100)
            labels[:, :-keep] = -100
            out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
            return out.log_probs[:, -keep:]
    elif spec["variant"] == "ours":

        def fn(r):
            return token_logprobs(model, r, chunk_tokens=spec["chunk_tokens"])
    elif spec["variant"] == "old":

        def fn(r):
            return full_logits_logprobs(model, r)
    else:

        def fn(r):
            input_ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
            attention = torch.cat([r.prompt_mask, r.completion_mask], 1)
            logits = model(
                input_ids=input_ids,
                attention_mask=attention,
                logits_to_keep=r.completion_ids.shape[1] + 1,
                use_cache=False,
            ).logits[:, :-1]
            return torch.log_softmax(logits.float(), -1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)

    fn(rollouts.rows(slice(0, 1))).sum().backward()  # lazily allocated runtime state, before the baseline
    model.zero_grad(set_to_none=True)
    gc.collect()
    base_rss = _rss_bytes()
    if not _reset_hwm():
        raise RuntimeError("cannot reset the peak-RSS counter (/proc/self/clear_refs); this measurement needs it")
    t0 = time.perf_counter()
    logps = fn(rollouts)
    t1 = time.perf_counter()
    fwd_peak, held = _hwm_bytes(), _rss_bytes()
    (logps.float() * weights).sum().backward()
    t2 = time.perf_counter()
    peak = _hwm_bytes()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    result = {
        **spec,
        "fwd_peak_mb": (fwd_peak - base_rss) / 2**20,
        "held_mb": (held - base_rss) / 2**20,
        "peak_mb": (peak - base_rss) / 2**20,
        "param_grads_mb": grads / 2**20,
        "logits_mb": batch * width * vocab * 4 / 2**20,
        "fwd_s": t1 - t0,
        "bwd_s": t2 - t1,
    }
    if spec.get("values_path"):
        torch.save(
            {"logps": logps.detach().float(), "embed_grad": model.model.embed_tokens.weight.grad[:2048].clone()},
            spec["values_path"],
        )
    print("RESULT " + json.dumps(result), flush=True)


def run_model_worker(spec: dict, timeout: float) -> dict:
    return run_fresh(__file__, "--_model_worker", spec, threads=spec["threads"], timeout=timeout, label=str(spec))[0]


def model_main(args) -> int:
    import torch

    sizes = [tuple(int(x) for x in text.lower().split("x")) for text in (args.sizes or ["8x512"])]
    variants = args.variants or ["ours", "trl", "old"]
    header, busy = header_line(args.threads), busy_note()
    started = time.perf_counter()
    results, diffs = [], {}
    with tempfile.TemporaryDirectory(prefix="conspo-bench-logprob-model-") as tmp:
        for batch, width in sizes:
            for rep in range(args.repeats):
                for variant in variants:
                    path = Path(tmp) / f"{batch}x{width}-{variant}.pt" if rep == 0 else None
                    spec = dict(
                        variant=variant,
                        batch=batch,
                        tokens=width,
                        prompt=16,
                        vocab=args.vocab,
                        hidden=256,
                        layers=2,
                        chunk_tokens=args.chunk_tokens,
                        threads=args.threads,
                        seed=args.seed,
                        values_path=str(path) if path else "",
                    )
                    print(
                        f"  B={batch} T={width} {variant} (round {rep + 1}/{args.repeats}) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    results.append(run_model_worker(spec, args.timeout))
            saved = {v: torch.load(Path(tmp) / f"{batch}x{width}-{v}.pt") for v in variants}
            if "ours" in saved:
                for v in variants:
                    if v != "ours":
                        diffs[(batch, width, v)] = (
                            float((saved["ours"]["logps"] - saved[v]["logps"]).abs().max()),
                            float(
                                (saved["ours"]["embed_grad"] - saved[v]["embed_grad"]).abs().max()
                                / saved[v]["embed_grad"].abs().max()
                            ),
                        )

    print("## Token log-prob pass of a model: ours (chunked LM head) vs TRL's fused LM head vs full logits\n")
    print(header + "\n")
    print(busy, end="")
    print(
        f"- random 2-layer Qwen2, V = {args.vocab}, hidden 256, intermediate 1024, tied embeddings, float32; "
        "B completions x T tokens after a 16-token prompt; forward + backward of sum(logps * w) to the parameters"
    )
    print(
        "- ours = `conspo.rollout.token_logprobs`; trl = TRL "
        "`add_fused_lm_head(outputs=(log_probs, entropy))` + `model(..., fused_lm_head=True)` as GRPOTrainer; "
        "old = `conspo.rollout.full_logits_logprobs` (model logits + selective_log_softmax); "
        "naive = model logits + fp32 log_softmax"
    )
    print(
        "- one fresh process per measurement; peak = VmHWM - RSS after model build and a one-row warm-up "
        "(peak counter reset there), so it includes the parameter gradients; MB = 2^20 bytes; "
        f"{args.repeats} round(s), medians"
    )
    print(f"- target: ours <= {MODEL_TARGET}x trl (peak)\n")
    head = [
        "B",
        "T",
        "variant",
        "peak MB",
        "x trl",
        "held after fwd MB",
        "param grads MB",
        "fwd s",
        "bwd s",
        "max abs diff logps vs ours",
        "max rel diff embed grad vs ours",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---:|---:|---|" + "---:|" * (len(head) - 3))
    for batch, width in sizes:

        def med(variant, key):
            values = [
                r[key] for r in results if r["batch"] == batch and r["tokens"] == width and r["variant"] == variant
            ]
            return statistics.median(values) if values else None

        trl_peak = med("trl", "peak_mb")
        for variant in variants:
            peak = med(variant, "peak_mb")
            d = diffs.get((batch, width, variant))
            cells = [
                str(batch),
                str(width),
                variant,
                f"{peak:.0f}",
                f"{peak / trl_peak:.3f}" if trl_peak else "-",
                f"{med(variant, 'held_mb'):.0f}",
                f"{med(variant, 'param_grads_mb'):.0f}",
                f"{med(variant, 'fwd_s'):.1f}",
                f"{med(variant, 'bwd_s'):.1f}",
                f"{d[0]:.1e}" if d else "-",
                f"{d[1]:.1e}" if d else "-",
            ]
            print("| " + " | ".join(cells) + " |")
        ours, trl = med("ours", "peak_mb"), trl_peak
        if ours is not None and trl:
            print(
                f"\nB={batch} T={width}: ours/trl peak = {ours / trl:.3f} (target <= {MODEL_TARGET}: "
                f"{'met' if ours / trl <= MODEL_TARGET else 'NOT met'})"
            )
    print(f"\nWall time {time.perf_counter() - started:.0f} s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_worker":
        sys.path.insert(0, str(ROOT))
        worker(json.loads(sys.argv[2]))
        return 0
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_model_worker":
        sys.path.insert(0, str(ROOT))
        model_worker(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (B=4 T=64, B=8 T=128), one pair each, < 30 s")
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="BxT",
        help="completion sizes as BxT (default: 8x512 8x1024 16x1024)",
    )
    ap.add_argument("--vocab", type=int, default=32768, help="vocabulary size V (default 32768)")
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=["bf16", "fp32"],
        choices=list(DTYPES),
        help="logits dtype(s) (default: bf16 then fp32)",
    )
    ap.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="selective_log_softmax chunk_tokens (default: the trainer's, 2^26 // V)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="ours/naive pairs per size, alternating (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each worker (default 2)")
    ap.add_argument(
        "--max-gb",
        type=float,
        default=8.5,
        help="skip sizes whose estimated naive peak (whole process) exceeds this many GB (default 8.5; "
        "fp32 16x1024 needs ~9.0: pass --max-gb 10 to include it)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per worker process (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--model",
        action="store_true",
        help="measure the whole log-prob pass of a 2-layer Qwen2 with the Qwen2.5 vocabulary: ours vs TRL's "
        "fused LM head vs full logits (--vocab defaults to 151936, --sizes to 8x512, --repeats to 1)",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=MODEL_VARIANTS,
        default=None,
        help="--model: variants to run (default: ours trl old; naive needs ~10 GB at 8x512)",
    )
    args = ap.parse_args(argv)
    if args.model:
        if args.vocab == 32768:
            args.vocab = 151936
        if args.quick:
            args.sizes = args.sizes or ["2x64"]
            args.repeats = 1
        elif "--repeats" not in (argv if argv is not None else sys.argv):
            args.repeats = 1
        return model_main(args)
    if args.quick:
        args.sizes = args.sizes or ["4x64", "8x128"]
        args.repeats = 1
    sizes = []
    for text in args.sizes or ["8x512", "8x1024", "16x1024"]:
        try:
            b, t = (int(x) for x in text.lower().split("x"))
        except ValueError:
            ap.error(f"--sizes: expected BxT like 16x1024, got {text!r}")
        sizes.append((b, t))

    header, busy = header_line(args.threads), busy_note()
    started = time.perf_counter()
    results, skipped, diffs = [], [], {}
    with tempfile.TemporaryDirectory(prefix="conspo-bench-logprob-") as tmp:
        for dtype in args.dtypes:
            for batch, width in sizes:
                need = estimate_gb(batch, width, args.vocab, dtype)
                if need > args.max_gb:
                    skipped.append((dtype, batch, width, need))
                    continue
                for rep in range(args.repeats):
                    for variant in VARIANTS:
                        path = Path(tmp) / f"{dtype}-{batch}x{width}-{variant}.pt" if rep == 0 else None
                        spec = dict(
                            variant=variant,
                            dtype=dtype,
                            batch=batch,
                            tokens=width,
                            vocab=args.vocab,
                            chunk_tokens=args.chunk_tokens,
                            threads=args.threads,
                            seed=args.seed,
                            values_path=str(path) if path else "",
                        )
                        print(
                            f"  {dtype} B={batch} T={width} {variant} (pair {rep + 1}/{args.repeats}) ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        results.append(run_worker(spec, args.timeout))
                import torch

                a = torch.load(Path(tmp) / f"{dtype}-{batch}x{width}-ours.pt")
                b = torch.load(Path(tmp) / f"{dtype}-{batch}x{width}-naive.pt")
                diffs[(dtype, batch, width)] = (
                    float((a["logps"] - b["logps"]).abs().max()),
                    float((a["grad"] - b["grad"]).abs().max()),
                )

    print("## Per-token log-prob memory: selective_log_softmax vs naive log_softmax + gather\n")
    print(header + "\n")
    print(busy, end="")
    print(
        f"- V = {args.vocab}, random logits x 3 (requires_grad), random ids; forward + backward of "
        f"sum(logps * w); ours = `conspo.rollout.selective_log_softmax(logits, ids, chunk_tokens={args.chunk_tokens})`, "
        "naive = `torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])`"
    )
    print(
        f"- one fresh subprocess per measurement, ru_maxrss / RSS over the baseline after allocating the inputs; "
        f"{args.repeats} alternating ours/naive pair(s) per row, medians; MB = 2^20 bytes"
    )
    print("- peak - grad: peak extra minus the logits' gradient (B*T*V in the logits' dtype) that both must produce")
    print(f"- target: ours <= {TARGET}x naive (peak extra)")
    if skipped:
        print(
            "- skipped (estimated naive peak > --max-gb "
            f"{args.max_gb:g} GB): " + ", ".join(f"{d} B={b} T={t} (~{g:.1f} GB)" for d, b, t, g in skipped)
        )
    print()
    head = [
        "logits",
        "B",
        "T",
        "logits MB",
        "naive peak MB",
        "ours peak MB",
        "ours/naive peak",
        "target met",
        "naive held MB",
        "ours held MB",
        "ours/naive held",
        "naive peak-grad MB",
        "ours peak-grad MB",
        "ours/naive peak-grad",
        "naive fwd+bwd s",
        "ours fwd+bwd s",
        "max abs diff logps",
        "max abs diff grad",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 2) + "---:|")
    for dtype in args.dtypes:
        for batch, width in sizes:
            rows = {
                v: [
                    r
                    for r in results
                    if r["dtype"] == dtype and r["batch"] == batch and r["tokens"] == width and r["variant"] == v
                ]
                for v in VARIANTS
            }
            if not rows["ours"]:
                continue

            def med(variant, key):
                return statistics.median(r[key] for r in rows[variant])

            grad = rows["ours"][0]["grad_mb"]
            n_peak, o_peak = med("naive", "peak_mb"), med("ours", "peak_mb")
            n_held, o_held = med("naive", "held_mb"), med("ours", "held_mb")
            n_s = statistics.median(r["fwd_s"] + r["bwd_s"] for r in rows["naive"])
            o_s = statistics.median(r["fwd_s"] + r["bwd_s"] for r in rows["ours"])
            d_val, d_grad = diffs[(dtype, batch, width)]

            def ratio(a, b):
                return f"{a / b:.2f}" if b > 0 else "-"

            cells = [
                dtype,
                str(batch),
                str(width),
                f"{rows['ours'][0]['logits_mb']:.0f}",
                f"{n_peak:.0f}",
                f"{o_peak:.0f}",
                ratio(o_peak, n_peak),
                "yes" if n_peak > 0 and o_peak / n_peak <= TARGET else "no",
                f"{n_held:.0f}",
                f"{o_held:.0f}",
                ratio(o_held, n_held),
                f"{n_peak - grad:.0f}",
                f"{o_peak - grad:.0f}",
                ratio(o_peak - grad, n_peak - grad),
                f"{n_s:.2f}",
                f"{o_s:.2f}",
                f"{d_val:.2e}",
                f"{d_grad:.2e}",
            ]
            print("| " + " | ".join(cells) + " |")
    print(f"\nWall time {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
