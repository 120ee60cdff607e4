"""DisCO and REAL through the TRL plug-in (``ScoreObjectiveTrainer`` = ``ConSPOTrainer`` with ``objective=``): the
step-1 gradient equals the objective's in-graph gradient on the whole recorded batch, for groups split across
micro-batches and across two processes; the objective's value is what is logged; ConSPO's options are refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
from helpers import make_trainer, reference_gradient

NOT_CONSPO = dict(tau=0.3, margin_start=0.0)  # make_trainer's ConSPO settings back at their defaults


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["disco", "disco_ratio", "real"])
@pytest.mark.parametrize("per_device,G,gas", [(6, 4, 2), (8, 4, 2), (4, 2, 4)])
def test_trl_step_gradient_equals_the_in_graph_objective(tmp_path, objective, per_device, G, gas):
    trainer, capture, initial = make_trainer(
        tmp_path, per_device=per_device, G=G, gas=gas, objective=objective, **NOT_CONSPO
    )
    assert trainer.conspo_group_mode == "coefficients"
    trainer.train()
    (batch,) = trainer.recorded
    reference, metrics = reference_gradient(trainer, initial, batch, G, objective=objective)
    prefix = objective.removesuffix("_ratio")  # disco_ratio logs as DisCO
    assert metrics[f"{prefix}/valid_group_frac"] > 0, "no mixed group: the test would be vacuous"
    assert capture.grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(capture.grads[name], reference[name], rtol=1e-4, atol=1e-7, msg=name)
    assert max(g.abs().max() for g in reference.values()) > 0
    logged = [h for h in trainer.state.log_history if f"{prefix}/valid_group_frac" in h]
    assert logged and logged[0]["objective/loss"] == pytest.approx(metrics["objective/loss"], rel=1e-4), (
        "the objective's value is logged, not the surrogate's"
    )


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["disco", "real"])
def test_two_processes_give_the_single_batch_gradient(tmp_path, objective):
    """torchrun --nproc_per_node 2 (gloo): groups of 4 straddle processes of 6 rows each."""
    script = Path(__file__).with_name("trl_two_process.py")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / objective
    port = 29700 + (objective == "real")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(script),
            str(out),
            "coefficients",
            "6",
            "1",
            "1",
            objective,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "ok").read_text() == "ok", proc.stdout


def test_conspo_options_and_whole_mode_are_refused_for_another_objective(tmp_path):
    from conspo.integrations.trl import ScoreObjectiveConfig

    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        use_cpu=True,
        report_to=[],
        bf16=False,
    )
    with pytest.raises(ValueError, match=r"ConSPOConfig.tau=0.5 has no effect with objective disco: it is a ConSPO"):
        ScoreObjectiveConfig(**base, objective="disco", tau=0.5)
    with pytest.raises(ValueError, match="group_mode=whole exists for conspo only"):
        ScoreObjectiveConfig(**base, objective="real", group_mode="whole")
    with pytest.raises(ValueError, match="ConSPOConfig.score_tau=2.0 has no effect with objective conspo"):
        ScoreObjectiveConfig(**base, score_tau=2.0)
    with pytest.raises(ValueError, match="'ppo' is not a score objective"):
        ScoreObjectiveConfig(**base, objective="ppo")
    assert ScoreObjectiveConfig(**base, objective="disco_ratio", score_tau=2.0).score_tau == 2.0
