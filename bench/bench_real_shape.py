"""One RL update at Qwen2.5 shape: our trainer's update vs TRL's GRPOTrainer training step.

Model: a random-weight Qwen2ForCausalLM built from the real Qwen2.5 config in
bench/configs/qwen2.5-{0.5b,1.5b}.json (vocabulary 151,936, tied embeddings), with
``--layers`` decoder layers instead of the full depth where memory cannot hold it (stated
in the table), float32 on the CPU (``--device cuda``: bfloat16 parameters on the GPU). On the
CPU the default is 1 layer: TRL's process alone (weights + gradients + AdamW state 2.4 GB, its
fused head's fp32 tiles ~4 GB) must stay under ~8 GB; the 1.5B shape does not fit at all
(AdamW state alone 4.5 GB at one layer) and is for ``--device cuda``.

Batch (identical in every process, seeded): G = 8 completions of one prompt, prompt 256
tokens, completion lengths uniform in [L/4, L] (one row exactly L), right-padded to L,
binary rewards with both outcomes in the group. Measured at each --lengths L.

One update = log-probs + objective + backward + gradient clipping (1.0) + AdamW step:

  ours   conspo.update.accumulate_gradients (conspo.train's before the trainer split), the
         trainer's exact update function, on the whole group in one micro-batch, then
         clip_grad_norm_ and torch.optim.AdamW.step()
  trl    a real trl.GRPOTrainer (ConSPO: conspo.integrations.trl.ConSPOTrainer, group mode
         whole) on the same model object: GRPOConfig(per_device_train_batch_size=8,
         num_generations=8, gradient_accumulation_steps=1, loss_type="grpo", beta=0,
         temperature=1, optim="adamw_torch", bf16 only on CUDA), its ``training_step`` on the
         prepared batch (``_prepare_inputs`` returns it as is: no generation), then the same
         clip_grad_norm_ and ``trainer.optimizer.step()``. TRL scores log-probs with its fused
         LM head (trl.trainer.utils.add_fused_lm_head, set up by GRPOTrainer.__init__).

Both sides use the same temperature (1) and the same objective options (the trainer's
defaults). --gradient-checkpointing applies HF gradient checkpointing (use_reentrant=False)
to the model for both sides alike (TRL's GRPOConfig turns it on by default; our trainer
only on request).

Memory: every (engine, objective, L) runs in a fresh process. Before the timed update the
process holds the weights, a zero gradient for every parameter and AdamW's state (one
lr-0 step), and has run one tiny lr-0 update (lazy runtime state). Baseline = RSS then;
the kernel's peak-RSS counter is reset there (/proc/self/clear_refs) and read after the
update (VmHWM). Peak activation memory = peak - baseline: everything the update adds on
top of weights, gradients and optimizer state, which both trainers hold alike. On CUDA:
torch.cuda.max_memory_allocated - memory_allocated before the update.

Targets stated in issue 10: peak activation memory ours/TRL <= 0.5, time ours/TRL <= 1.0.

    .venv/bin/python bench/bench_real_shape.py                    # 0.5B shape, 1 layer, L = 512 and 1024 (~40 min)
    .venv/bin/python bench/bench_real_shape.py --quick            # toy shape, < 2 min: checks the code paths
    .venv/bin/python bench/bench_real_shape.py --gradient-checkpointing
    python bench/bench_real_shape.py --device cuda --shape 1.5b --layers 28   # on a GPU (untested here)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {"0.5b": ROOT / "bench/configs/qwen2.5-0.5b.json", "1.5b": ROOT / "bench/configs/qwen2.5-1.5b.json"}
TOY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    tie_word_embeddings=True,
)
TARGET_MEMORY, TARGET_TIME = 0.5, 1.0


from machine import busy_note, header_line, run_fresh  # noqa: E402  (bench/ is on sys.path when run as a script)

# ---- one measurement, in its own process ----------------------------------------------------


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def build_model(spec: dict):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if spec["shape"] == "toy":
        fields = dict(TOY)
    else:
        fields = json.loads(CONFIGS[spec["shape"]].read_text())
        for key in ("architectures", "transformers_version", "torch_dtype", "model_type"):
            fields.pop(key, None)
    fields.update(num_hidden_layers=spec["layers"], use_cache=False, pad_token_id=0)
    fields["max_position_embeddings"] = max(
        fields.get("max_position_embeddings", 0), spec["prompt"] + spec["length"] + 8
    )
    config = Qwen2Config(**fields)
    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model = model.to(getattr(torch, spec["dtype"])).train()
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def make_batch(spec: dict, vocab: int, *, prompt: int, length: int):
    """G rows: prompt tokens, completions of lengths uniform in [L/4, L] (row 0 exactly L), rewards mixed."""
    import torch

    from conspo.rollout import Rollouts

    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    rows = spec["groups"] * spec["group_size"]
    prompt_ids = torch.randint(2, vocab, (rows, prompt), generator=gen)
    completion_ids = torch.randint(2, vocab, (rows, length), generator=gen)
    lengths = torch.randint(max(1, length // 4), length + 1, (rows,), generator=gen)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(mask == 0, 0)
    rewards = (torch.rand(rows, generator=gen) < 0.5).float().view(-1, spec["group_size"])
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0
    device = torch.device(spec["device"])
    rollouts = Rollouts(
        prompt_ids.to(device),
        torch.ones_like(prompt_ids).to(device),
        completion_ids.to(device),
        mask.to(device),
        (lengths == length).to(device),
        [""] * rows,
    )
    return rollouts, rewards.view(-1).to(device)


def ours_update_fn(spec: dict, model):
    """(optimizer, update(rollouts, rewards, lr) -> metrics) using the trainer's exact update function."""
    import torch

    try:
        from conspo.update import accumulate_gradients
    except ImportError:  # before the trainer was split into config/update/run/train
        from conspo.train import accumulate_gradients
    from conspo.objectives import get_objective

    name, length = spec["objective"], spec["length"]
    try:
        from conspo.config import TrainConfig

        cfg = TrainConfig(objective=name, group_size=spec["group_size"])
        options = get_objective(name).options(cfg.objective_settings(margin=cfg.margin_start, max_new_tokens=length))
    except ImportError:
        from conspo.train import TrainConfig, objective_options

        cfg = TrainConfig(objective=name, group_size=spec["group_size"])
        options = objective_options(cfg, 0, lambda step: cfg.margin_start, length)
    extra = dict(spec.get("ours_options") or {})
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.0)

    def update(rollouts, rewards, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p in model.parameters():
            p.grad.zero_()
        metrics = accumulate_gradients(
            model, name, rollouts, rewards, spec["group_size"], options, micro_batch_size=spec["micro_batch"], **extra
        )
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {"loss": float(metrics["objective/loss"]), "grad_norm": float(norm)}

    return optimizer, update


def trl_update_fn(spec: dict, model, tmp: str):
    """(optimizer, update) through a real GRPOTrainer / ConSPOTrainer's training_step."""
    import torch
    from datasets import Dataset

    from conspo.models import build_char_tokenizer

    rows, G, length = spec["groups"] * spec["group_size"], spec["group_size"], spec["length"]
    on_cuda = spec["device"].startswith("cuda")
    common = dict(
        output_dir=tmp,
        per_device_train_batch_size=rows,
        num_generations=G,
        gradient_accumulation_steps=1,
        max_completion_length=length,
        learning_rate=spec["lr"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        temperature=1.0,
        beta=0.0,
        optim="adamw_torch",
        use_cpu=not on_cuda,
        bf16=on_cuda and spec["dtype"] == "bfloat16",
        gradient_checkpointing=False,  # set on the model above
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=spec["seed"],
    )
    if spec["objective"] == "conspo":
        from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer

        args, trainer_class = ConSPOConfig(**common, group_mode="whole"), ConSPOTrainer
    else:
        from trl import GRPOConfig, GRPOTrainer

        args, trainer_class = GRPOConfig(**common, loss_type="grpo"), GRPOTrainer

    def reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    trainer = trainer_class(
        model=model,
        reward_funcs=reward,
        args=args,
        processing_class=build_char_tokenizer(),
        train_dataset=Dataset.from_dict({"prompt": ["1+1="] * rows}),
    )
    trainer.create_optimizer()
    trainer._prepare_inputs = lambda inputs: inputs  # the prepared batch goes straight to compute_loss
    if getattr(trainer, "current_gradient_accumulation_steps", None) is None:
        trainer.current_gradient_accumulation_steps = 1
    optimizer = trainer.optimizer

    def inputs_for(rollouts, rewards):
        grouped = rewards.view(-1, G)
        # GRPOTrainer's advantages (scale_rewards="group"): (r - group mean) / (group std + 1e-4)
        advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
        inputs = {
            "prompt_ids": rollouts.prompt_ids,
            "prompt_mask": rollouts.prompt_mask,
            "completion_ids": rollouts.completion_ids,
            "completion_mask": rollouts.completion_mask,
            "advantages": advantages.view(-1),
            "num_items_in_batch": rollouts.completion_mask.sum(),
        }
        if spec["objective"] == "conspo":
            from conspo.objectives import get_objective

            inputs["conspo_rewards"] = rewards
            inputs["conspo_row"] = torch.arange(len(rewards), device=rewards.device)
            valid = get_objective("conspo").normalizer(
                rollouts.completion_mask, rewards, G, positive_threshold=args.positive_threshold
            )
            trainer._conspo_valid_counts = torch.tensor([float(valid)], device=rewards.device)
        return inputs

    def update(rollouts, rewards, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p in model.parameters():
            p.grad.zero_()
        trainer._step = 0
        loss = trainer.training_step(trainer.model, inputs_for(rollouts, rewards), None)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {"loss": float(loss), "grad_norm": float(norm)}

    return optimizer, update


def worker(spec: dict) -> None:
    import gc
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    on_cuda = device.type == "cuda"
    model = build_model(spec)
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with tempfile.TemporaryDirectory(prefix="conspo-bench-real-shape-") as tmp:
        if spec["engine"] == "ours":
            optimizer, update = ours_update_fn(spec, model)
        else:
            optimizer, update = trl_update_fn(spec, model, tmp)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        optimizer.step()  # allocates AdamW's state; lr 0 leaves the weights as they are
        tiny = make_batch(spec, vocab, prompt=8, length=8)
        update(*tiny, 0.0)  # lazily allocated runtime state, outside the measurement (lr 0)
        rollouts, rewards = make_batch(spec, vocab, prompt=spec["prompt"], length=spec["length"])
        del tiny
        gc.collect()
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        else:
            baseline = _status_bytes("VmRSS")
            _reset_peak()
        t0 = time.perf_counter()
        out = update(rollouts, rewards, spec["lr"])
        if on_cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if on_cuda else _status_bytes("VmHWM")
    state = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {
        **spec,
        "params": n_params,
        "weights_mb": weights / 2**20,
        "optimizer_state_mb": state / 2**20,
        "baseline_mb": baseline / 2**20,
        "peak_mb": peak / 2**20,
        "activation_mb": (peak - baseline) / 2**20,
        "seconds": elapsed,
        "completion_tokens": int(rollouts.completion_mask.sum()),
        "padded_tokens": int(rollouts.completion_mask.numel() + rollouts.prompt_mask.numel()),
        **out,
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(spec: dict, timeout: float) -> dict:
    label = f"{spec['engine']}/{spec['objective']}/L={spec['length']}"
    return run_fresh(__file__, "--_worker", spec, threads=spec["threads"], timeout=timeout, label=label)[0]


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_worker":
        worker(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="toy shape (hidden 64, V 4096, 1 layer), L = 32 and 64: code paths only"
    )
    ap.add_argument("--shape", choices=list(CONFIGS), default="0.5b", help="Qwen2.5 config (default 0.5b)")
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="decoder layers (default: 1 on the CPU, where TRL's process must stay under ~8 GB in fp32 "
        "with AdamW: 2 layers at L=1024 took > 9.8 GB; the config's full depth on CUDA)",
    )
    ap.add_argument(
        "--lengths", nargs="+", type=int, default=[512, 1024], help="max completion lengths L (default 512 1024)"
    )
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens (default 256)")
    ap.add_argument("--groups", type=int, default=1, help="groups per update (default 1: G rows)")
    ap.add_argument("--group-size", type=int, default=8, help="G (default 8)")
    ap.add_argument(
        "--micro-batch", type=int, default=0, help="ours: rows per forward/backward (default 0: all; TRL: one pass)"
    )
    ap.add_argument("--objectives", nargs="+", default=["conspo", "grpo"], choices=["conspo", "grpo"])
    ap.add_argument("--engines", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    ap.add_argument("--gradient-checkpointing", action="store_true", help="HF gradient checkpointing for both engines")
    ap.add_argument(
        "--ours-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for accumulate_gradients (JSON value), e.g. a token budget once it exists",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] (bfloat16 parameters)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="parameter dtype (default: float32 on the CPU, bfloat16 on CUDA)",
    )
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement process (default 1800)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    shape = "toy" if args.quick else args.shape
    if args.quick:
        layers, lengths, prompt = 1, [32, 64], 16
    else:
        full = json.loads(CONFIGS[args.shape].read_text())["num_hidden_layers"]
        layers = args.layers or (full if on_cuda else 1)
        lengths, prompt = args.lengths, args.prompt
    if on_cuda:
        import torch

        if not torch.cuda.is_available():
            print("bench_real_shape.py: --device cuda but no CUDA device is visible; nothing measured.")
            return 0
    header, busy = header_line(args.threads), busy_note()
    started = time.perf_counter()
    results = []
    for length in lengths:
        for objective in args.objectives:
            for i, engine in enumerate(args.engines if (length + len(objective)) % 2 else args.engines[::-1]):
                spec = dict(
                    engine=engine,
                    objective=objective,
                    shape=shape,
                    layers=layers,
                    length=length,
                    prompt=prompt,
                    groups=args.groups,
                    group_size=args.group_size,
                    micro_batch=args.micro_batch,
                    gradient_checkpointing=args.gradient_checkpointing,
                    ours_options=_parse_options(args.ours_option),
                    device=args.device,
                    dtype=dtype,
                    lr=args.lr,
                    threads=args.threads,
                    seed=args.seed,
                )
                print(f"  L={length} {objective} {engine} ...", file=sys.stderr, flush=True)
                r = run_worker(spec, args.timeout)
                print(
                    f"    {r['seconds']:.1f} s, activation peak {r['activation_mb']:.0f} MB, loss {r['loss']:.5f}, "
                    f"grad norm {r['grad_norm']:.4g}",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)

    first = results[0]
    where = "GPU " + __import__("torch").cuda.get_device_name(args.device) if on_cuda else "CPU"
    print(f"## One RL update at Qwen2.5-{shape} shape: ours vs TRL GRPOTrainer ({where})\n")
    print(header + "\n")
    print(busy, end="")
    print(
        f"- model: {'toy Qwen2 (hidden 64, V 4096)' if shape == 'toy' else 'Qwen2.5-' + shape + ' config (bench/configs)'}, **{layers} decoder layer(s)**, random weights, {dtype}, "
        f"{first['params'] / 1e6:.1f}M parameters (weights {first['weights_mb']:.0f} MB, AdamW state "
        f"{first['optimizer_state_mb']:.0f} MB, gradients {first['weights_mb']:.0f} MB)"
    )
    print(
        f"- batch: {args.groups} group(s) x G={args.group_size}, prompt {prompt} tokens, completions uniform in "
        f"[L/4, L] (one row = L), right-padded; identical in every process"
    )
    print(
        f"- update: log-probs + objective + backward + clip 1.0 + AdamW step; temperature 1; gradient checkpointing "
        f"{'on (both)' if args.gradient_checkpointing else 'off (both)'}; ours micro-batch "
        f"{args.micro_batch or 'all rows'}{'; ours options ' + json.dumps(_parse_options(args.ours_option)) if args.ours_option else ''}"
    )
    print(
        "- one fresh process per row; activation peak = peak minus what the process held before the update "
        "(weights, gradients, AdamW state, runtime); MB = 2^20 bytes\n"
    )
    head = [
        "L",
        "completion tokens",
        "objective",
        "engine",
        "update s",
        "activation peak MB",
        "process peak MB",
        "loss",
        "grad norm",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---:|---:|---|---|" + "---:|" * (len(head) - 4))
    for r in results:
        print(
            f"| {r['length']} | {r['completion_tokens']} | {r['objective']} | {r['engine']} | {r['seconds']:.1f} | "
            f"{r['activation_mb']:.0f} | {r['peak_mb']:.0f} | {r['loss']:.5f} | {r['grad_norm']:.4g} |"
        )
    if set(args.engines) == {"ours", "trl"}:
        print("\n| L | objective | activation peak ours/TRL | target | time ours/TRL | target |")
        print("|---:|---|---:|---:|---:|---:|")
        for length in lengths:
            for objective in args.objectives:
                pick = {r["engine"]: r for r in results if r["length"] == length and r["objective"] == objective}
                mem = pick["ours"]["activation_mb"] / pick["trl"]["activation_mb"]
                sec = pick["ours"]["seconds"] / pick["trl"]["seconds"]
                print(
                    f"| {length} | {objective} | {mem:.3f} | <= {TARGET_MEMORY} ({'met' if mem <= TARGET_MEMORY else 'NOT met'}) "
                    f"| {sec:.3f} | <= {TARGET_TIME} ({'met' if sec <= TARGET_TIME else 'NOT met'}) |"
                )
    print(f"\nWall time {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
