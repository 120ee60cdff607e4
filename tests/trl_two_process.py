"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): one ConSPOTrainer step over two processes.

argv: OUT_DIR MODE PER_DEVICE. Rank 0 compares the DDP-synchronised gradient of step 1 with the
gradient of conspo_loss on the union of both processes' generation batches (one graph, one
process) and writes OUT_DIR/ok on success.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from helpers import make_trainer, reference_gradient

from conspo.cli import leave_without_teardown

out, mode, per_device = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
G = 4
trainer, capture, initial = make_trainer(out / "trainer", per_device=per_device, G=G, gas=1, group_mode=mode)
trainer.train()
rank = dist.get_rank()
assert dist.get_world_size() == 2, "expected two processes"
(batch,) = trainer.recorded
save_file({k: v.contiguous() for k, v in batch.items()}, str(out / f"batch{rank}.safetensors"))
dist.barrier()
if rank == 0:
    parts = [load_file(str(out / f"batch{r}.safetensors")) for r in range(2)]
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
    assert torch.equal(torch.sort(merged["conspo_row"]).values, torch.arange(2 * per_device)), merged["conspo_row"]
    reference, metrics = reference_gradient(trainer, initial, merged, G)
    assert metrics["conspo/valid_group_frac"] > 0, "no mixed group: vacuous"
    for name, expected in reference.items():
        torch.testing.assert_close(capture.grads[name], expected, rtol=1e-4, atol=1e-7, msg=name)
    print(f"two-process {mode}: gradients match on {len(reference)} tensors")
    (out / "ok").write_text("ok")
dist.barrier()
dist.destroy_process_group()
leave_without_teardown(0)  # gloo's worker threads can abort interpreter teardown (conspo.cli says why)
