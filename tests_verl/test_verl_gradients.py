"""The parameter gradient of one verl step equals the single-graph gradient of the whole batch.

Each test runs one verl 0.9.1 training step on CPU (``verl_sim.run_step``): verl's own
``_balance_batch`` scatters the rows over simulated data-parallel ranks (Karmarkar-Karp on
sequence lengths, so groups straddle ranks), verl's ``train_mini_batch`` / ``prepare_micro_batches``
split each rank's rows into mini- and micro-batches (fixed size, or dynamic by token budget
with shuffling), and verl's ``ppo_loss`` calls the registered policy loss. The gradients of the
ranks are averaged, as FSDP's all-reduce does, and compared with autograd through
``conspo.objectives.conspo_loss`` (or ``grpo_loss``) on the whole batch in one graph, in float64.
"""

import pytest

pytest.importorskip("verl", reason="verl is not installed: run `make test-verl` (builds .venv-verl)")
pytest.importorskip("transfer_queue", reason="verl's v1 trainer needs TransferQueue: run `make test-verl`")

import torch
import verl_sim as vs
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

import conspo.loss_pieces as loss_pieces
import conspo.objectives as objectives
from conspo.integrations.verl import ConSPOTrainerSync
from conspo.objectives import conspo_loss, grpo_loss

G = 4
COMPOSITIONS = {
    # valid groups, an all-correct and an all-wrong group, and one rollout with an empty response mask
    "mixed": ([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]], (0, 2)),
    "all_valid": ([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 0, 0]], None),
    # nothing to contrast: the gradient is exactly zero on both sides
    "no_valid": ([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], None),
}
PROMPTS = 6
# (Hydra overrides of ConSPO's options, global step of the batch, the loss options they mean)
OPTIONS = {
    "no_margin": ([], 1, dict(margin=0.0, tau=0.3)),
    # linear 0.1 -> 0.5 over 4 training steps; batch of global step 3 = 2 steps done: 0.1 + 0.4 * 2/4
    "margin": (
        [
            "+actor_rollout_ref.actor.policy_loss.tau=0.5",
            "+actor_rollout_ref.actor.policy_loss.margin_schedule=linear",
            "+actor_rollout_ref.actor.policy_loss.margin_start=0.1",
            "+actor_rollout_ref.actor.policy_loss.margin_end=0.5",
            "+actor_rollout_ref.actor.policy_loss.margin_horizon=4",
        ],
        3,
        dict(margin=0.3, tau=0.5),
    ),
}
# (dp ranks, config kwargs): fixed micro-batches of 4 rows; dynamic token-budget micro-batches, shuffled
LAYOUTS = {
    "dp2_fixed": (2, dict(micro=4)),
    "dp3_dynamic_shuffled": (3, dict(dynamic=True, max_tokens=24, shuffle=True)),
}


def rewards_of(rows):
    return torch.tensor([r["reward"] for r in rows], dtype=vs.DTYPE)


def conspo_reference(policy, rows, **options):
    policy.zero_grad(set_to_none=True)
    logps, mask = policy.padded_response_logps(rows)
    loss, metrics = conspo_loss(logps, mask, rewards_of(rows), G, **options)
    loss.backward()
    return vs.grads(policy), metrics


def assert_scattered(record):
    """The test is only meaningful if verl really split groups across ranks and micro-batches."""
    ranks_of = {}
    for rank, micro_batches in enumerate(record.micro_batch_uids):
        assert len(micro_batches) >= 2, f"rank {rank} got {len(micro_batches)} micro-batch(es)"
        for uids in micro_batches:
            for uid in uids:
                ranks_of.setdefault(uid, set()).add(rank)
    assert any(len(r) > 1 for r in ranks_of.values()), "no group straddles ranks"
    split = [uid for uid in ranks_of if sum(uid in uids for mb in record.micro_batch_uids for uids in mb) > 1]
    assert split, "no group straddles micro-batches"


def assert_grads_equal(got, want, rtol=1e-10, atol=1e-13):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("composition", list(COMPOSITIONS))
def test_conspo_step_gradient_equals_single_graph(composition, option, layout, monkeypatch):
    groups, masked = COMPOSITIONS[composition]
    overrides, global_steps, loss_options = OPTIONS[option]
    dp, layout_cfg = LAYOUTS[layout]
    rows = vs.make_rows(groups, seed=len(composition) + dp, masked=masked)
    config = vs.verl_config(vs.CONSPO_OVERRIDES + overrides, prompts=PROMPTS, n=G, mini=PROMPTS, **layout_cfg)
    policy = vs.ToyPolicy(seed=dp)

    record, metrics, _ = vs.run_step(
        ConSPOTrainerSync, config, policy, rows, dp=dp, global_steps=global_steps, monkeypatch=monkeypatch
    )
    want, want_metrics = conspo_reference(policy, rows, **loss_options)

    assert_scattered(record)
    steps = record.dp_average()
    assert len(steps) == 1  # one mini-batch, one epoch: one optimizer step
    assert_grads_equal(steps[0], want)
    if composition == "no_valid":
        assert all(float(w.abs().max()) == 0.0 for w in want)
    else:
        assert max(float(w.abs().max()) for w in want) > 1e-3
    assert metrics["conspo/margin"] == pytest.approx(loss_options["margin"])
    assert metrics["conspo/tau"] == loss_options["tau"]
    assert metrics["conspo/loss"] == pytest.approx(want_metrics["objective/loss"], rel=1e-12, abs=1e-15)
    assert metrics["conspo/valid_group_frac"] == want_metrics["conspo/valid_group_frac"]
    assert metrics["conspo/coef_staleness_steps_max"] == 0.0
    assert max(m["conspo/score_drift"] for m in record.loss_metrics) < 1e-12  # fresh coefficients


def test_sum_score_and_threshold_options_reach_both_sides(monkeypatch):
    """score=sum (worker side) and positive_threshold (driver side) set by Hydra."""
    groups = [
        [0.9, 0.2, 0.6, 0.0],
        [0.7, 0.7, 0.1, 1.0],
        [0.3, 0.0, 0.0, 0.55],
        [1, 1, 1, 1],
        [0, 0, 0, 0],
        [0, 1, 0, 1],
    ]
    rows = vs.make_rows(groups, seed=7)
    overrides = [
        "+actor_rollout_ref.actor.policy_loss.score=sum",
        "+actor_rollout_ref.actor.policy_loss.positive_threshold=0.65",
        "+actor_rollout_ref.actor.policy_loss.positive_rule=threshold",
        "+actor_rollout_ref.actor.policy_loss.margin_start=0.2",
    ]
    config = vs.verl_config(vs.CONSPO_OVERRIDES + overrides, prompts=PROMPTS, n=G, mini=PROMPTS, micro=3)
    policy = vs.ToyPolicy(seed=3)
    record, metrics, _ = vs.run_step(ConSPOTrainerSync, config, policy, rows, dp=2, monkeypatch=monkeypatch)
    want, _ = conspo_reference(
        policy, rows, margin=0.2, tau=0.3, positive_threshold=0.65, positive_rule="threshold", score="sum"
    )
    assert_scattered(record)
    assert_grads_equal(record.dp_average()[0], want)


def test_group_mean_positive_rule_reaches_the_driver(monkeypatch):
    """positive_rule=group_mean with graded rewards (no 0.5 crossing in some groups) set by Hydra."""
    groups = [
        [0.3, 0.2, 0.4, 0.1],
        [0.7, 0.7, 0.1, 1.0],
        [0.3, 0.3, 0.3, 0.3],
        [0.05, 0.0, 0.0, 0.45],
        [0.9, 0.2, 0.6, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    rows = vs.make_rows(groups, seed=8)
    overrides = [
        "+actor_rollout_ref.actor.policy_loss.positive_rule=group_mean",
        "+actor_rollout_ref.actor.policy_loss.margin_start=0.1",
    ]
    config = vs.verl_config(vs.CONSPO_OVERRIDES + overrides, prompts=PROMPTS, n=G, mini=PROMPTS, micro=3)
    policy = vs.ToyPolicy(seed=4)
    record, metrics, _ = vs.run_step(ConSPOTrainerSync, config, policy, rows, dp=2, monkeypatch=monkeypatch)
    want, want_metrics = conspo_reference(policy, rows, margin=0.1, tau=0.3, positive_rule="group_mean")
    # the groups of equal rewards have no positive; under threshold=0.5 the first and fourth would have none either
    assert want_metrics["conspo/valid_group_frac"] == pytest.approx(4 / 6)
    assert metrics["conspo/valid_group_frac"] == pytest.approx(4 / 6)
    assert_scattered(record)
    assert_grads_equal(record.dp_average()[0], want)


def test_several_optimizer_steps_add_up_and_are_reported(monkeypatch):
    """2 mini-batches x 2 epochs: four optimizer steps whose gradients (same weights here) sum to
    two ConSPO gradients; the staleness is stated in the metrics and by check_config."""
    groups, masked = COMPOSITIONS["mixed"]
    rows = vs.make_rows(groups, seed=11, masked=masked)
    config = vs.verl_config(
        vs.CONSPO_OVERRIDES, prompts=PROMPTS, n=G, mini=PROMPTS // 2, micro=2, epochs=2, shuffle=True
    )
    policy = vs.ToyPolicy(seed=5)
    record, metrics, _ = vs.run_step(ConSPOTrainerSync, config, policy, rows, dp=2, monkeypatch=monkeypatch)
    want, _ = conspo_reference(policy, rows, margin=0.0, tau=0.3)
    steps = record.dp_average()
    assert len(steps) == 4
    total = [sum(step[i] for step in steps) for i in range(len(want))]
    assert_grads_equal(total, [2 * w for w in want])
    first_epoch = [steps[0][i] + steps[1][i] for i in range(len(want))]
    assert_grads_equal(first_epoch, want)
    assert not torch.allclose(steps[0][0], want[0])  # one mini-batch alone is only part of the gradient
    assert metrics["conspo/optimizer_steps_per_batch"] == 4.0
    assert metrics["conspo/coef_staleness_steps_max"] == 3.0


def test_wrong_tau_breaks_the_equality(monkeypatch):
    """Mutation check: the comparison above is sharp (a different tau is caught)."""
    groups, masked = COMPOSITIONS["mixed"]
    rows = vs.make_rows(groups, seed=2, masked=masked)
    config = vs.verl_config(
        vs.CONSPO_OVERRIDES + ["+actor_rollout_ref.actor.policy_loss.tau=0.31"],
        prompts=PROMPTS,
        n=G,
        mini=PROMPTS,
        micro=4,
    )
    policy = vs.ToyPolicy(seed=2)
    record, _, _ = vs.run_step(ConSPOTrainerSync, config, policy, rows, dp=2, monkeypatch=monkeypatch)
    want, _ = conspo_reference(policy, rows, margin=0.0, tau=0.3)
    with pytest.raises(AssertionError):
        assert_grads_equal(record.dp_average()[0], want)


def test_grpo_through_verls_stock_trainer_equals_grpo_loss(monkeypatch):
    """verl's own sync trainer, GRPO estimator and vanilla PPO loss (seq-mean-token-mean), through
    the same balancing and micro-batching, give conspo.objectives.grpo_loss's gradient.

    verl adds 1e-6 to the group std (ours: 1e-4, as TRL), so the reference uses verl's epsilon;
    verl's seq-mean-token-mean divides by (|o_i| + 1e-8), hence rtol 1e-7.
    """
    groups, masked = COMPOSITIONS["mixed"]
    rows = vs.make_rows(groups, seed=4, masked=masked)
    config = vs.verl_config(vs.GRPO_OVERRIDES, prompts=PROMPTS, n=G, mini=PROMPTS, micro=4)
    policy = vs.ToyPolicy(seed=4)
    record, _, _ = vs.run_step(PPOTrainerSync, config, policy, rows, dp=2, monkeypatch=monkeypatch)
    assert_scattered(record)

    monkeypatch.setattr(loss_pieces, "ADVANTAGE_STD_EPS", 1e-6)  # where group_advantages reads it
    policy.zero_grad(set_to_none=True)
    logps, mask = policy.padded_response_logps(rows)
    loss, _ = grpo_loss(logps, logps.detach(), mask, rewards_of(rows), G)
    loss.backward()
    want = vs.grads(policy)
    assert max(float(w.abs().max()) for w in want) > 1e-3
    assert_grads_equal(record.dp_average()[0], want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("objective,score_tau", [("disco", None), ("disco_ratio", None), ("real", 0.7)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_score_objective_step_gradient_equals_single_graph(objective, score_tau, layout, monkeypatch):
    """DisCO and REAL take ConSPO's route on verl (policy_loss.objective): the same single-graph equality, with groups
    straddling ranks and micro-batches; the objective's value is logged as <objective>/loss."""
    groups, masked = COMPOSITIONS["mixed"]
    dp, layout_cfg = LAYOUTS[layout]
    rows = vs.make_rows(groups, seed=5 + dp, masked=masked)
    overrides = [f"+actor_rollout_ref.actor.policy_loss.objective={objective}"]
    if score_tau is not None:
        overrides.append(f"+actor_rollout_ref.actor.policy_loss.score_tau={score_tau}")
    config = vs.verl_config(vs.CONSPO_OVERRIDES + overrides, prompts=PROMPTS, n=G, mini=PROMPTS, **layout_cfg)
    policy = vs.ToyPolicy(seed=dp)

    record, metrics, _ = vs.run_step(
        ConSPOTrainerSync, config, policy, rows, dp=dp, global_steps=1, monkeypatch=monkeypatch
    )
    policy.zero_grad(set_to_none=True)
    logps, mask = policy.padded_response_logps(rows)  # on-policy: the old log-probs are the current ones
    want_loss, want_metrics = objectives.get_objective(objective).loss(
        logps, logps.detach(), mask, rewards_of(rows), G, **({} if score_tau is None else {"tau": score_tau})
    )
    want_loss.backward()
    want = vs.grads(policy)

    assert_scattered(record)
    steps = record.dp_average()
    assert len(steps) == 1
    assert_grads_equal(steps[0], want)
    assert max(float(w.abs().max()) for w in want) > 1e-3
    assert metrics[f"{objective}/loss"] == pytest.approx(float(want_loss.detach()), rel=1e-12, abs=1e-15)
