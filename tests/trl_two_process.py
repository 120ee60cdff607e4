"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): one ConSPOTrainer step over two processes.

argv: OUT_DIR MODE PER_DEVICE [STEPS_PER_GENERATION GRADIENT_ACCUMULATION_STEPS [OBJECTIVE]] (default 1 1 conspo;
another sequence-score objective runs at its defaults and is compared with its in-graph loss). Rank 0
compares the DDP-synchronised gradient of step 1 with the gradient of conspo_loss on the union of both
processes' generation batches (one graph, one process; with several generation batches per step, their
union normalised by all their valid groups) and writes OUT_DIR/ok on success.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import make_trainer, reference_gradient, reference_gradient_of_union
from safetensors.torch import load_file, save_file

from conspo.cli import leave_without_teardown

out, mode, per_device = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
spg, gas = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 4 else (1, 1)
objective = sys.argv[6] if len(sys.argv) > 6 else "conspo"
G = 4
conspo_options = {} if objective == "conspo" else dict(objective=objective, tau=0.3, margin_start=0.0)
trainer, capture, initial = make_trainer(
    out / "trainer", per_device=per_device, G=G, gas=gas, group_mode=mode, steps_per_generation=spg, **conspo_options
)
trainer.train()
rank = dist.get_rank()
assert dist.get_world_size() == 2, "expected two processes"
n_batches = max(1, gas // spg)  # generation batches of step 1
assert len(trainer.recorded) == n_batches
for b, batch in enumerate(trainer.recorded):
    save_file({k: v.contiguous() for k, v in batch.items()}, str(out / f"batch{rank}-{b}.safetensors"))
dist.barrier()


def merge(parts):
    width = max(p["completion_ids"].shape[1] for p in parts)
    prompt_width = max(p["prompt_ids"].shape[1] for p in parts)

    def pad(t, value):  # completions of the two processes may have different padded widths (right padding)
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    def left_pad(t, value):  # prompts are left-padded
        return torch.nn.functional.pad(t, (prompt_width - t.shape[1], 0), value=value)

    merged = {
        "prompt_ids": torch.cat([left_pad(p["prompt_ids"], 0) for p in parts]),
        "prompt_mask": torch.cat([left_pad(p["prompt_mask"], 0) for p in parts]),
        "completion_ids": torch.cat([pad(p["completion_ids"], 0) for p in parts]),
        "completion_mask": torch.cat([pad(p["completion_mask"], 0) for p in parts]),
        "conspo_rewards": torch.cat([p["conspo_rewards"] for p in parts]),
        "conspo_row": torch.cat([p["conspo_row"] for p in parts]),
    }
    assert torch.equal(torch.sort(merged["conspo_row"]).values, torch.arange(2 * per_device * spg)), merged[
        "conspo_row"
    ]
    return merged


if rank == 0:
    merged = [merge([load_file(str(out / f"batch{r}-{b}.safetensors")) for r in range(2)]) for b in range(n_batches)]
    if n_batches == 1:
        reference, metrics = reference_gradient(trainer, initial, merged[0], G, objective=objective)
        assert metrics[f"{objective}/valid_group_frac"] > 0, "no mixed group: vacuous"
    else:
        reference = reference_gradient_of_union(trainer, initial, merged, G)
    for name, expected in reference.items():
        torch.testing.assert_close(capture.grads[name], expected, rtol=1e-4, atol=1e-7, msg=name)
    print(f"two-process {objective} {mode}: gradients match on {len(reference)} tensors")
    (out / "ok").write_text("ok")
dist.barrier()
dist.destroy_process_group()
leave_without_teardown(0)  # gloo's worker threads can abort interpreter teardown (conspo.cli says why)
