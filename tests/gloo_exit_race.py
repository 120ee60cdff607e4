"""Run under `torchrun --nproc_per_node 2`: leave a gloo process while a collective's work is still in flight.

argv: MODE (leave | sys_exit). The default group stays referenced (as DDP holds it) and rank 1 joins
the all_gather late, so rank 0's gloo worker drops the finished work (and its tensors' Python
objects) while the interpreter may already be finalizing: with ``sys.exit`` the process often dies
with "terminate called without an active exception"; ``leave_without_teardown`` must exit 0.
"""

import sys
import time

import torch
import torch.distributed as dist

from conspo.cli import leave_without_teardown

dist.init_process_group("gloo")
held = dist.group.WORLD  # a reference that outlives destroy_process_group, like DDP's
out = [torch.empty(4) for _ in range(dist.get_world_size())]
if dist.get_rank() == 1:
    time.sleep(0.5)
work = dist.all_gather(out, torch.ones(4), async_op=True)
del work, out
dist.destroy_process_group()
print(f"rank {held.rank()} done", flush=True)
if sys.argv[1] == "leave":
    leave_without_teardown(0)
sys.exit(0)
