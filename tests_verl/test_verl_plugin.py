"""conspo.integrations.verl: registries, estimator, loss, options, config check, version check."""

import pytest

pytest.importorskip("verl", reason="verl is not installed: run `make test-verl` (builds .venv-verl)")
pytest.importorskip("transfer_queue", reason="verl's v1 trainer needs TransferQueue: run `make test-verl`")

import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import torch
import verl
import verl_sim as vs
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.config import omega_conf_to_dataclass

import conspo.integrations.verl as plugin
from conspo.objectives import ADVANTAGE_STD_EPS, conspo_coefficients, grpo_loss, sequence_scores

F64 = torch.float64


def conspo_config(*overrides, **kwargs):
    kwargs = {"prompts": 4, "n": 4, "mini": 4, **kwargs}
    return vs.verl_config(vs.CONSPO_OVERRIDES + list(overrides), **kwargs)


# ---- registries ------------------------------------------------------------------------------


def test_pieces_are_in_verls_registries():
    assert core_algos.get_policy_loss_fn("conspo") is plugin.compute_policy_loss_conspo
    assert core_algos.get_adv_estimator_fn("conspo") is plugin.compute_conspo_outcome_advantage
    assert get_trainer_cls("conspo_sync") is plugin.ConSPOTrainerSync


def test_external_modules_hook_registers_everything_in_a_fresh_process():
    """How verl's Ray workers load the plug-in: VERL_USE_EXTERNAL_MODULES, read when verl is imported."""
    code = (
        "import verl; from verl.trainer.ppo import core_algos as c; from verl.trainer.ppo.v1 import get_trainer_cls;"
        "print(c.get_policy_loss_fn('conspo').__module__, c.get_adv_estimator_fn('conspo').__module__,"
        " get_trainer_cls('conspo_sync').__name__)"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "conspo.integrations.verl"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["conspo.integrations.verl", "conspo.integrations.verl", "ConSPOTrainerSync"]


def test_other_verl_versions_are_refused(monkeypatch):
    monkeypatch.setattr(verl, "__version__", "0.10.0")
    spec = importlib.util.spec_from_file_location("conspo_verl_copy", plugin.__file__)
    with pytest.raises(ImportError, match=r"supports verl 0\.9\.x; found 0\.10\.0.*pip install verl==0\.9\.1"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# ---- options ----------------------------------------------------------------------------------


def test_hydra_overrides_reach_the_actor_config_the_workers_build():
    config = conspo_config(
        "+actor_rollout_ref.actor.policy_loss.tau=0.7",
        "+actor_rollout_ref.actor.policy_loss.margin_schedule=cosine",
        "+actor_rollout_ref.actor.policy_loss.margin_end=0.2",
        "+actor_rollout_ref.actor.policy_loss.positive_threshold=0.9",
        "+actor_rollout_ref.actor.policy_loss.positive_rule=threshold",
        "+actor_rollout_ref.actor.policy_loss.score=sum",
    )
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    options = actor.policy_loss
    assert isinstance(options, plugin.ConSPOPolicyLossConfig)
    assert (
        options.loss_mode,
        options.tau,
        options.margin_schedule,
        options.margin_end,
        options.positive_threshold,
        options.score,
    ) == ("conspo", 0.7, "cosine", 0.2, 0.9, "sum")
    assert options.margin_at(0, 10) == 0.0 and options.margin_at(10, 10) == pytest.approx(0.2)
    assert options.margin_at(5, 10) == pytest.approx(0.1)  # cosine half-way


@pytest.mark.parametrize(
    "override, message",
    [
        ("tau=0", "policy_loss.tau=0: must be a finite number > 0"),
        ("margin_schedule=exp", "policy_loss.margin_schedule='exp': must be one of"),
        ("margin_horizon=-1", "policy_loss.margin_horizon=-1: must be an integer >= 0"),
        ("positive_rule=median", "policy_loss.positive_rule='median': must be one of"),
        ("score=max", "policy_loss.score='max': must be one of mean, sum"),
        ("margin_end=0.2", "policy_loss.margin_end=0.2 has no effect with margin_schedule constant"),
    ],
)
def test_bad_options_are_refused(override, message):
    config = conspo_config(f"+actor_rollout_ref.actor.policy_loss.{override}")
    with pytest.raises(Exception, match=message):
        omega_conf_to_dataclass(config.actor_rollout_ref.actor.policy_loss)


@pytest.mark.parametrize(
    "objective, options",
    [("disco", {"tau": 0.5}), ("conspo", {"positive_threshold": 0.7}), ("conspo", {"score_tau": 2.0})],
)
def test_verl_refuses_what_the_native_trainer_refuses_in_the_same_words(objective, options):
    from conspo.config import TrainConfig
    from conspo.errors import ConfigError

    with pytest.raises(ConfigError) as native:
        TrainConfig(objective=objective, **options).validate()
    with pytest.raises(ValueError) as from_verl:
        plugin.ConSPOPolicyLossConfig(objective=objective, **options)
    assert str(from_verl.value) == "policy_loss." + str(native.value).removeprefix("invalid config: ")


# ---- estimator ---------------------------------------------------------------------------------


def test_estimator_gives_objectives_coefficients_for_rows_in_any_order():
    """Rows shuffled, groups of unequal size (5, 3, 4) and an empty row: same c_i as the contiguous layout."""
    g = torch.Generator().manual_seed(0)
    sizes, uids = [5, 3, 4], []
    for gi, n in enumerate(sizes):
        uids += [f"g{gi}"] * n
    B, T = len(uids), 6
    mask = (torch.rand(B, T, generator=g) < 0.8).to(torch.int64)
    mask[:, 0] = 1
    mask[7] = 0  # a rollout of group 1 with no response tokens: excluded
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    rewards = torch.tensor([1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0], dtype=F64)
    token_rewards = torch.zeros(B, T, dtype=F64)
    token_rewards[:, -1] = rewards
    options = plugin.ConSPOPolicyLossConfig(tau=0.4)

    perm = torch.randperm(B, generator=g)
    metrics = {}
    adv, ret = core_algos.get_adv_estimator_fn("conspo")(
        token_level_rewards=token_rewards[perm],
        response_mask=mask[perm],
        index=np.array(uids, dtype=object)[perm.numpy()],
        old_log_probs=old[perm],
        loss_config=options,
        margin=0.1,
        metrics=metrics,
    )
    assert torch.equal(adv, ret)
    coef = plugin.row_coefficients(adv, mask[perm])
    assert torch.equal(adv, coef[:, None] * mask[perm])  # c_i on every response token, 0 elsewhere

    # reference: contiguous groups padded to 5 with absent rows
    layout = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 8, 9, 10, 11, -1])
    real = layout >= 0
    scores = torch.zeros(15, dtype=F64)
    scores[real] = sequence_scores(old, mask)
    r = torch.zeros(15, dtype=F64)
    r[real] = rewards
    present = torch.zeros(15, dtype=torch.bool)
    present[real] = mask.bool().any(-1)
    want = conspo_coefficients(scores, r, 5, margin=0.1, tau=0.4, present=present)[real]
    torch.testing.assert_close(coef, want[perm], rtol=1e-14, atol=0)
    assert coef[perm.argsort()][7] == 0
    assert metrics["conspo/valid_group_frac"] == 1.0 and metrics["conspo/margin"] == 0.1


def test_estimator_under_a_stock_trainer_says_what_to_set():
    with pytest.raises(RuntimeError, match="trainer.v1.trainer_mode=conspo_sync"):
        core_algos.get_adv_estimator_fn("conspo")(
            token_level_rewards=torch.zeros(2, 3), response_mask=torch.ones(2, 3), index=np.array(["a", "a"])
        )


# ---- policy loss -------------------------------------------------------------------------------


def test_loss_is_the_coefficient_surrogate_scaled_by_dp_size():
    """sum_i c_i s_i(theta) through agg_loss token-sum: x dp_size (FSDP averages gradients over ranks)."""
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    logp = (-torch.rand(4, 4, generator=g, dtype=F64)).requires_grad_()
    coef = torch.tensor([0.3, -0.7, 0.5, 0.2], dtype=F64)
    actor = omega_conf_to_dataclass(conspo_config().actor_rollout_ref.actor)
    fn = core_algos.get_policy_loss_fn("conspo")
    losses = []
    for dp in (1, 3):
        actor.global_batch_info.update(dp_size=dp, batch_num_tokens=9, global_batch_size=4)
        loss, metrics = fn(
            old_log_prob=logp.detach(),
            log_prob=logp,
            advantages=coef[:, None] * mask,
            response_mask=mask.bool(),
            loss_agg_mode="token-mean",
            config=actor,
        )
        losses.append(loss)
        assert metrics["conspo/score_drift"] == 0.0
    want = (torch.tensor([0.3, -0.7, 0.0, 0.2], dtype=F64) * sequence_scores(logp, mask)).sum()
    torch.testing.assert_close(losses[0], want, rtol=1e-15, atol=0)
    torch.testing.assert_close(losses[1], 3 * want, rtol=1e-15, atol=0)


def test_loss_refuses_missing_options_and_importance_weights():
    mask = torch.ones(2, 3, dtype=torch.bool)
    logp = torch.zeros(2, 3)
    stock = omega_conf_to_dataclass(vs.verl_config([], prompts=4, n=4, mini=4).actor_rollout_ref.actor)
    with pytest.raises(TypeError, match="ConSPOPolicyLossConfig"):
        plugin.compute_policy_loss_conspo(logp, logp, logp, mask, config=stock)
    actor = omega_conf_to_dataclass(conspo_config().actor_rollout_ref.actor)
    with pytest.raises(ValueError, match="rollout_is=null"):
        plugin.compute_policy_loss_conspo(logp, logp, logp, mask, config=actor, rollout_is_weights=torch.ones(2, 3))


# ---- configuration check -------------------------------------------------------------------------


def test_exact_configuration_passes_silently():
    assert plugin.check_config(conspo_config()) == []
    assert plugin.check_config(vs.verl_config(vs.GRPO_OVERRIDES, prompts=4, n=4, mini=4)) == []  # not ConSPO


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], "policy_loss.loss_mode=conspo"),
        (["algorithm.adv_estimator=grpo"], "algorithm.adv_estimator=conspo"),
        (
            ["actor_rollout_ref.actor.policy_loss._target_=verl.workers.config.PolicyLossConfig"],
            "_target_=conspo.integrations.verl.ConSPOPolicyLossConfig",
        ),
        (["trainer.v1.trainer_mode=sync"], "trainer.v1.trainer_mode=conspo_sync"),
        (["trainer.use_v1=False"], "trainer.use_v1=True"),
        (["actor_rollout_ref.rollout.n=1"], "rollout.n >= 2"),
        (["algorithm.use_kl_in_reward=True"], "use_kl_in_reward=False"),
        (["algorithm.rollout_correction.rollout_is=token"], "rollout_is=null"),
    ],
)
def test_settings_that_are_not_conspo_are_refused_with_the_fix(overrides, fix):
    with pytest.raises(ValueError, match=fix.replace(".", r"\.").replace("(", r"\(")):
        plugin.check_config(conspo_config(*overrides))


@pytest.mark.parametrize(
    "overrides, kwargs, note",
    [
        ([], dict(epochs=2), "2 optimizer steps"),
        ([], dict(prompts=8, mini=2), "4 optimizer steps"),
        (["actor_rollout_ref.actor.use_kl_loss=True"], {}, "use_kl_loss"),
        (["actor_rollout_ref.actor.entropy_coeff=0.01"], {}, "entropy"),
        (["algorithm.rollout_correction.bypass_mode=True"], {}, "bypass_mode"),
    ],
)
def test_inexact_settings_are_warned_about(overrides, kwargs, note):
    notes = plugin.check_config(conspo_config(*overrides, **kwargs))
    assert len(notes) == 1 and note in notes[0]
    if "optimizer steps" in note:
        assert "ppo_mini_batch_size=data.train_batch_size" in notes[0] and "ppo_epochs=1" in notes[0]


def test_trainer_warns_once_and_acts_as_verls_sync_trainer():
    config = conspo_config(epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = plugin.ConSPOTrainerSync(config)
    ours = [w for w in caught if "ConSPO on verl" in str(w.message)]
    assert len(ours) == 1 and "3 optimizer steps" in str(ours[0].message)
    assert trainer.trainer_mode == "sync" and trainer._requested_trainer_mode == "conspo_sync"
    assert type(trainer.replay_buffer) is ReplayBuffer  # the sync trainer's buffer, not the async one
    assert trainer._conspo_steps_per_batch == 3
    assert isinstance(trainer._conspo_loss_config, plugin.ConSPOPolicyLossConfig)


def test_trainer_refuses_agent_sessions_with_several_outputs():
    trainer = plugin.ConSPOTrainerSync.__new__(plugin.ConSPOTrainerSync)
    trainer._conspo_loss_config = plugin.ConSPOPolicyLossConfig()
    batch = vs.KVBatchMeta(keys=["u0_0_0", "u0_0_1"], tags=[{}, {}], partition_id="train")
    with pytest.raises(NotImplementedError, match="several outputs"):
        trainer._compute_advantage(batch, {})


# ---- GRPO through verl's stock pieces ---------------------------------------------------------------


def test_grpo_stock_estimator_and_vanilla_loss_equal_grpo_loss():
    """Identical tensors, ratios away from 1 so that clipping happens: same value and gradient.

    verl's GRPO estimator defaults to std + 1e-6; passing epsilon=1e-4 (conspo's and TRL's)
    makes it identical. Loss: verl 'vanilla' with loss_agg_mode=seq-mean-token-mean.
    """
    g = torch.Generator().manual_seed(3)
    B, T, G = 12, 7, 4
    mask = (torch.rand(B, T, generator=g) < 0.75).to(torch.int64)
    mask[:, 0] = 1
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=F64)).requires_grad_()
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0], dtype=F64)
    token_rewards = torch.zeros(B, T, dtype=F64)
    token_rewards[:, -1] = rewards
    index = np.array([f"p{i // G}" for i in range(B)], dtype=object)

    adv, _ = core_algos.get_adv_estimator_fn("grpo")(
        token_level_rewards=token_rewards, response_mask=mask, index=index, epsilon=ADVANTAGE_STD_EPS
    )
    actor = omega_conf_to_dataclass(vs.verl_config(vs.GRPO_OVERRIDES, prompts=3, n=G, mini=3).actor_rollout_ref.actor)
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B)
    verl_loss, verl_metrics = core_algos.get_policy_loss_fn("vanilla")(
        old_log_prob=old,
        log_prob=logp,
        advantages=adv,
        response_mask=mask.bool(),
        loss_agg_mode=actor.loss_agg_mode,
        config=actor,
    )
    (verl_grad,) = torch.autograd.grad(verl_loss, logp)
    ours, ours_metrics = grpo_loss(logp, old, mask, rewards, G)
    (our_grad,) = torch.autograd.grad(ours, logp)
    assert verl_metrics["actor/pg_clipfrac"] > 0  # clipping was exercised
    torch.testing.assert_close(verl_loss, ours, rtol=1e-7, atol=1e-12)  # verl: token-mean over (|o_i| + 1e-8)
    torch.testing.assert_close(verl_grad, our_grad, rtol=1e-7, atol=1e-12)

    default_adv, _ = core_algos.get_adv_estimator_fn("grpo")(
        token_level_rewards=token_rewards, response_mask=mask, index=index
    )
    assert not torch.allclose(default_adv, adv, rtol=1e-6, atol=0)  # verl's own default: std + 1e-6
