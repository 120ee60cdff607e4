"""Sequence-score objectives (conspo.score_objectives): DisCO and REAL against loop references written from their
papers' formulas, coefficients by autograd against ConSPO's closed form, and the coefficient route on split batches."""

import pytest
import torch
from helpers import make_batch
from reference import disco_loss_loop, real_loss_loop

from conspo import score_objectives as so
from conspo.objectives import coefficient_surrogate, conspo_coefficients, get_objective

LOOPS = {
    "disco": lambda x, old, mask, r, G, tau: disco_loss_loop(x, old, mask, r, G, tau, "mean_logp"),
    "disco_ratio": lambda x, old, mask, r, G, tau: disco_loss_loop(x, old, mask, r, G, tau, "mean_ratio"),
    "real": real_loss_loop,
}
DEFAULT_TAU = {"disco": 10.0, "disco_ratio": 1.0, "real": 0.5}


@pytest.mark.parametrize("name", list(LOOPS))
@pytest.mark.parametrize("G,binary,tau", [(4, True, None), (3, False, None), (5, True, 0.7)])
def test_value_and_gradient_equal_the_loop_reference(name, G, binary, tau):
    """float64: the registry's objective (scores, then the group loss) equals the paper's formula written as loops,
    in value and in gradient with respect to every token log-prob, with empty completions and all-equal groups."""
    logps, old, mask, rewards = make_batch(6, G, 7, seed=G + 11, binary=binary, zero_length_rows=2)
    rewards[-G:] = 1.0  # one all-correct group: dropped
    objective = get_objective(name)
    options = {} if tau is None else {"tau": tau}
    x = logps.clone().requires_grad_(True)
    loss, metrics = objective.loss(x, old, mask, rewards, G, **options)
    loss.backward()
    y = logps.clone().requires_grad_(True)
    ref = LOOPS[name](y, old, mask, rewards, G, tau or DEFAULT_TAU[name])
    ref.backward()
    assert abs(float(ref.detach())) > 1e-3 and y.grad.abs().max() > 1e-3, "the comparison is not vacuous"
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    assert metrics["objective/loss"] == pytest.approx(float(ref), rel=1e-12)
    assert torch.count_nonzero(x.grad[-G:]) == 0, "an all-correct group carries no contrast"


def test_published_defaults_and_scores():
    assert so.get_score_objective("disco").option_defaults == {"tau": 10.0}
    assert so.get_score_objective("disco_ratio").option_defaults == {"tau": 1.0}
    assert so.get_score_objective("real").option_defaults == {"tau": 0.5}
    assert [so.get_score_objective(n).score for n in ("disco", "disco_ratio", "real")] == [
        "mean_logp",
        "mean_ratio",
        "mean_log_ratio",
    ]
    assert get_objective("real").uses_old_logps and not get_objective("disco").uses_old_logps


@pytest.mark.parametrize("kind", so.SCORES)
def test_sequence_scores_by_kind(kind):
    logps, old, mask, _ = make_batch(2, 3, 5, seed=4, zero_length_rows=1)
    s = so.sequence_score(kind, logps, old, mask)
    for i in range(len(s)):
        m = mask[i].bool()
        if not m.any():
            assert s[i] == 0
            continue
        tokens = {
            "mean_logp": logps[i][m],
            "sum_logp": logps[i][m],
            "mean_log_ratio": (logps - old)[i][m],
            "mean_ratio": torch.exp(logps - old)[i][m],
        }[kind]
        want = tokens.sum() if kind == "sum_logp" else tokens.mean()
        torch.testing.assert_close(s[i], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["group_mean", "threshold"])
def test_autograd_coefficients_equal_conspos_closed_form(rule):
    """The closed form is only an optimisation: autograd on the detached scores gives the same dL/ds."""
    logps, _, mask, rewards = make_batch(5, 4, 6, seed=3, binary=False, zero_length_rows=1)
    scores = so.sequence_score("mean_logp", logps, None, mask)
    present = mask.bool().any(-1)
    options = dict(margin=0.15, tau=0.4, positive_rule=rule)
    closed = conspo_coefficients(scores, rewards, 4, present=present, **options)
    by_autograd = so.ScoreObjective(name="conspo_autograd", loss=so.conspo_score_loss)
    c, metrics = so.score_coefficients(by_autograd, scores, rewards, present, 4, **options)
    assert closed.abs().max() > 1e-3
    torch.testing.assert_close(c, closed, rtol=1e-12, atol=1e-14)
    c2, metrics2 = so.score_coefficients(so.get_score_objective("conspo"), scores, rewards, present, 4, **options)
    torch.testing.assert_close(c2, closed, rtol=0, atol=0)
    assert metrics == metrics2


@pytest.mark.parametrize("name", list(LOOPS))
def test_coefficient_surrogate_gradient_is_the_loss_gradient_for_every_split(name):
    """sum_i c_i s_i(theta) over any split of the rows, with c from the whole batch, has the full-batch gradient."""
    G = 4
    logps, old, mask, rewards = make_batch(4, G, 6, seed=9, zero_length_rows=1)
    objective = so.get_score_objective(name)
    x = logps.clone().requires_grad_(True)
    loss, _ = get_objective(name).loss(x, old, mask, rewards, G)
    loss.backward()
    with torch.no_grad():
        scores = so.sequence_score(objective.score, logps, old, mask)
    c, metrics = so.score_coefficients(objective, scores, rewards, mask.bool().any(-1), G)
    assert metrics["objective/loss"] == pytest.approx(float(loss), rel=1e-12)
    for micro in (1, 3, 5, 16):
        y = logps.clone().requires_grad_(True)
        for start in range(0, len(rewards), micro):
            rows = slice(start, start + micro)
            coefficient_surrogate(
                c[rows], so.sequence_score(objective.score, y[rows], old[rows], mask[rows])
            ).backward()
        torch.testing.assert_close(y.grad, x.grad, rtol=1e-12, atol=1e-14)


def test_no_valid_group_gives_zero_loss_and_zero_coefficients():
    scores = torch.tensor([-1.0, -2.0, -0.5, -0.7], dtype=torch.float64)
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for name in LOOPS:
        c, metrics = so.score_coefficients(so.get_score_objective(name), scores, rewards, torch.ones(4, dtype=bool), 2)
        assert metrics["objective/loss"] == 0.0 and torch.count_nonzero(c) == 0
        assert torch.isfinite(c).all()


def test_registering_a_score_objective_and_its_errors():
    def margin_loss(scores, rewards, present, group_size, *, scale: float = 2.0):
        loss = -(scale * scores * (rewards - rewards.mean())).sum()
        return loss, {"objective/loss": float(loss.detach())}

    mine = so.register_score_objective(so.ScoreObjective(name="test_margin", loss=margin_loss, score="sum_logp"))
    try:
        assert get_objective("test_margin").option_defaults == {"scale": 2.0}
        assert get_objective("test_margin").couples_group and get_objective("test_margin").normalizer is None
        s = torch.tensor([-1.0, -2.0], dtype=torch.float64)
        c, _ = so.score_coefficients(
            mine, s, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.ones(2, dtype=bool), 2
        )
        torch.testing.assert_close(c, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    finally:
        so.REGISTERED.pop("test_margin")
    with pytest.raises(ValueError, match="built-in objective"):
        so.register_score_objective(so.ScoreObjective(name="disco", loss=margin_loss))
    with pytest.raises(ValueError, match="score must be one of"):
        so.ScoreObjective(name="x", loss=margin_loss, score="max_logp")
    with pytest.raises(ValueError, match="tau must be > 0"):
        so.disco_loss(s, torch.tensor([1.0, 0.0]), torch.ones(2, dtype=bool), 2, tau=0.0)
    with pytest.raises(ValueError, match="needs the sampling policy"):
        so.sequence_score("mean_log_ratio", torch.zeros(1, 2), None, torch.ones(1, 2))


def test_train_config_routes_and_refusals():
    from conspo.config import TrainConfig
    from conspo.errors import ConfigError

    cfg = TrainConfig(objective="disco", score_tau=5.0)
    cfg.validate()
    assert get_objective("disco").options(cfg.objective_settings(margin=0.0, max_new_tokens=4)) == {"tau": 5.0}
    assert (
        get_objective("real").options(TrainConfig(objective="real").objective_settings(margin=0.0, max_new_tokens=4))
        == {}
    )
    with pytest.raises(ConfigError, match="tau=0.5 has no effect with objective disco"):
        TrainConfig(objective="disco", tau=0.5).validate()
    with pytest.raises(ConfigError, match="score_tau=2.0 has no effect with objective conspo"):
        TrainConfig(score_tau=2.0).validate()
    with pytest.raises(ConfigError, match="group_mode=whole exists for conspo only"):
        TrainConfig(objective="real", group_mode="whole").validate()
    with pytest.raises(ConfigError, match="score_tau=-1.0: must be None or a finite number > 0"):
        TrainConfig(objective="real", score_tau=-1.0).validate()


def test_trl_engine_runs_score_objectives_on_the_score_objective_trainer():
    pytest.importorskip("trl")
    from conspo.config import TrainConfig
    from conspo.integrations.trl import ScoreObjectiveConfig
    from conspo.integrations.trl_engine import trl_arguments

    args = trl_arguments(
        TrainConfig(engine="trl", objective="real", score_tau=0.7), max_new_tokens=8, output_dir="x", use_cpu=True
    )
    assert (args["objective"], args["score_tau"], args["beta"]) == ("real", 0.7, 0.0)
    assert ScoreObjectiveConfig(**args).objective == "real"
