"""ConSPOTrainer (TRL GRPOTrainer subclass): its step-1 gradient equals our in-graph ConSPO gradient."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
from helpers import make_trainer, reference_gradient  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("per_device,G,gas,mode", [
    (8, 4, 2, "whole"),          # 4 groups, 2 micro-batches of 2 whole groups
    (8, 4, 1, "auto"),           # auto -> whole, one micro-batch
    (6, 4, 2, "coefficients"),   # 3 groups straddling 2 micro-batches of 6 rows
    (6, 4, 2, "auto"),           # auto -> coefficients
    (4, 2, 4, "whole"),          # G=2, 8 groups over 4 micro-batches
])
def test_trl_step_gradient_equals_in_graph_conspo(tmp_path, per_device, G, gas, mode):
    trainer, capture, initial = make_trainer(tmp_path, per_device=per_device, G=G, gas=gas, group_mode=mode)
    expected_mode = mode if mode != "auto" else ("whole" if per_device % G == 0 else "coefficients")
    assert trainer.conspo_group_mode == expected_mode
    trainer.train()
    (batch,) = trainer.recorded
    rewards = batch["conspo_rewards"].view(-1, G)
    assert ((rewards.max(1).values > rewards.min(1).values).any()), "no mixed group: the test would be vacuous"
    reference, _ = reference_gradient(trainer, initial, batch, G)
    assert capture.grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(capture.grads[name], reference[name], rtol=1e-4, atol=1e-7, msg=name)
    assert max(g.abs().max() for g in reference.values()) > 0


def test_whole_mode_with_incompatible_batch_says_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="per_device_train_batch_size \\(6\\) must be a multiple of 4"):
        make_trainer(tmp_path, per_device=6, G=4, gas=2, group_mode="whole")


def test_stale_coefficients_warn(tmp_path):
    with pytest.warns(UserWarning, match="stale"):
        make_trainer(tmp_path, per_device=6, G=4, gas=1, group_mode="coefficients", steps_per_generation=2)


@pytest.mark.slow
def test_two_processes_give_the_single_batch_gradient(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): groups straddle processes; DDP's gradient == full-batch gradient."""
    script = Path(__file__).with_name("trl_two_process.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    for mode, per_device in (("coefficients", 6), ("whole", 8)):
        out = tmp_path / mode
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(29500 + per_device), str(script), str(out), mode,
                               str(per_device)], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert (out / "ok").read_text() == "ok", proc.stdout
