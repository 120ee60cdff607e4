"""Why ``--engine trl`` is slow on CPU with a large vocabulary: TRL 1.16's fused LM head scores every position there.

GRPOTrainer patches the model with ``trl.trainer.utils.add_fused_lm_head``. Its forward projects the hidden states
through the LM head in [4096 tokens x 32768 vocabulary] tiles. On a device with Triton (CUDA, XPU) it projects only
the positions whose label is not -100 (the completion tokens); elsewhere, CPU included, it projects *every* position
of prompt + completion and folds each tile with plain torch ops (several float32 temporaries of the tile's size).
This script times that function's forward + backward at the sizes of one step of the stand-in run (B rows of a
prompt of P tokens and C completion tokens, V = 151,665, hidden 16), against the same function on the completion
positions only (what it does with Triton) and a plain log-softmax over the completion positions' logits (what the
native engine computes).

    .venv/bin/python bench/bench_trl_cpu_head.py                 # B=8, P=255, C=48, 1 thread
    .venv/bin/python bench/bench_trl_cpu_head.py --prompt 16     # a short prompt
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import busy_note, header_line  # noqa: E402  (bench/ is on sys.path when run as a script)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument(
        "--prompt",
        type=int,
        default=255,
        help="prompt tokens per row (the stand-in's math prompts with the chat template: about 255 byte-level tokens)",
    )
    ap.add_argument("--completion", type=int, default=48)
    ap.add_argument("--vocab", type=int, default=151665)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE  # the chunk width GRPOTrainer's fused head uses

    weight = torch.randn(args.vocab, args.hidden, requires_grad=True)

    def fused(n):
        hidden, targets = torch.randn(n, args.hidden, requires_grad=True), torch.randint(0, args.vocab, (n,))
        start = time.perf_counter()
        out = ChunkedLogProbFunction.apply(
            hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy")
        )
        out[0].sum().backward()
        return time.perf_counter() - start

    def plain(n):
        hidden, targets = torch.randn(n, args.hidden, requires_grad=True), torch.randint(0, args.vocab, (n,))
        start = time.perf_counter()
        torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets[:, None]).sum().backward()
        return time.perf_counter() - start

    print(header_line(args.threads) + f" | command: `{' '.join(['.venv/bin/python'] + sys.argv)}`")
    if busy_note():
        print(busy_note())
    every, completion = args.rows * (args.prompt + args.completion - 1), args.rows * args.completion
    print(
        f"\n{args.rows} rows, prompt {args.prompt} + completion {args.completion} tokens, V = {args.vocab}, "
        f"hidden {args.hidden}; best of {args.repeats} after a warm-up\n"
    )
    print("| variant | positions projected | forward + backward s |")
    print("|---|---:|---:|")
    for name, fn, n in [
        ("TRL fused head, every position (what it projects on CPU)", fused, every),
        ("TRL fused head, completion positions only (what it projects with Triton)", fused, completion),
        ("plain log-softmax, completion positions (native engine)", plain, completion),
    ]:
        fn(n)
        print(f"| {name} | {n:,} | {min(fn(n) for _ in range(args.repeats)):.2f} |")
    print(
        f"\nprocess peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; user "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f} s, system "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_stime:.1f} s"
    )


if __name__ == "__main__":
    main()
