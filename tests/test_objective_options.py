"""The objective options are declared once (conspo/objective_options.py) and checked once: the native TrainConfig
and TRL's ConSPOConfig inherit the same fields and refuse the same settings with the same words (verl's policy-loss
config: tests_verl/test_verl_plugin.py)."""

import ast
import dataclasses
from pathlib import Path

import pytest

from conspo.config import TrainConfig, field_help
from conspo.errors import ConfigError
from conspo.objective_options import CONSPO_TAU, ObjectiveOptions

NAMES = [f.name for f in dataclasses.fields(ObjectiveOptions)]
PACKAGE = Path(__file__).resolve().parents[1] / "conspo"

#: (objective, options) that every engine must refuse, and a fragment of the reason
REFUSED = [
    ("conspo", {"tau": 0.0}, "tau=0.0: must be a finite number > 0"),
    ("conspo", {"tau": float("nan")}, "tau=nan: must be a finite number > 0"),
    ("conspo", {"margin_schedule": "exponential"}, "margin_schedule='exponential': must be one of constant, linear"),
    ("conspo", {"positive_rule": "median"}, "positive_rule='median': must be one of threshold, group_mean"),
    ("conspo", {"score": "max"}, "score='max': must be one of mean, sum"),
    ("conspo", {"margin_horizon": -1}, "margin_horizon=-1: must be an integer >= 0"),
    ("conspo", {"margin_end": 0.2}, "margin_end=0.2 has no effect with margin_schedule constant"),
    ("conspo", {"margin_schedule": "linear"}, "margin_schedule='linear' has no effect with margin_start = margin_end"),
    ("conspo", {"positive_threshold": 0.7}, "positive_threshold=0.7 has no effect with positive_rule group_mean"),
    ("conspo", {"score_tau": 2.0}, "score_tau=2.0 has no effect with objective conspo"),
    ("disco", {"tau": 0.5}, "tau=0.5 has no effect with objective disco: it is a ConSPO option"),
    ("real", {"score": "sum"}, "score='sum' has no effect with objective real"),
    ("real", {"score_tau": -1.0}, "score_tau=-1.0: must be None or a finite number > 0"),
]


def test_every_engine_config_inherits_the_one_declaration():
    trl = pytest.importorskip("conspo.integrations.trl")
    own = {f.name: f for f in dataclasses.fields(ObjectiveOptions)}
    for host in (TrainConfig, trl.ConSPOConfig):
        assert issubclass(host, ObjectiveOptions)
        fields = {f.name: f for f in dataclasses.fields(host)}
        for name in NAMES:
            assert fields[name].default == own[name].default and fields[name].metadata == own[name].metadata, name
    assert TrainConfig().tau == trl.ConSPOConfig(output_dir="x", use_cpu=True, report_to=[]).tau == CONSPO_TAU


def test_no_module_declares_an_objective_option_again():
    """No dataclass field, function default or keyword named like an option outside objective_options.py restates
    an option's default: a field annotation ``tau: float = ...`` in a class body is the one sign of a second
    declaration (the loss functions' keyword arguments are the math, not options). ``score`` alone is a common
    word (a benchmark's score function): the other names are ConSPO's own."""
    own = set(NAMES) - {"score"}
    seen = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "objective_options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) in own:
                        seen.append(f"{path.relative_to(PACKAGE)}:{item.lineno} {node.name}.{item.target.id}")
    assert not seen, seen


def test_score_option_has_one_name():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "length_normalized_score" not in text, path


def test_help_of_an_inherited_option_reaches_the_cli():
    helps = field_help()
    assert all(helps[name] for name in NAMES)
    assert "ConSPO temperature" in helps["tau"]


@pytest.mark.parametrize("objective,options,reason", REFUSED, ids=[r for _, _, r in REFUSED])
def test_native_and_trl_refuse_the_same_settings_in_the_same_words(objective, options, reason):
    with pytest.raises(ConfigError) as native:
        TrainConfig(objective=objective, **options).validate()
    assert reason in str(native.value)
    trl = pytest.importorskip("conspo.integrations.trl")
    with pytest.raises(ValueError) as from_trl:
        trl.ConSPOConfig(output_dir="x", use_cpu=True, report_to=[], num_generations=4, objective=objective, **options)
    assert str(from_trl.value) == "ConSPOConfig." + str(native.value).removeprefix("invalid config: ")


def test_loss_options_per_objective():
    options = ObjectiveOptions(margin_schedule="linear", margin_end=0.2, score="sum")
    assert options.loss_options("conspo", 0.1) == dict(
        margin=0.1, tau=CONSPO_TAU, positive_threshold=0.5, positive_rule="group_mean", score="sum"
    )
    assert ObjectiveOptions(score_tau=4.0).loss_options("disco") == {"tau": 4.0}
    assert ObjectiveOptions().loss_options("disco") == {}
    assert ObjectiveOptions(score_tau=4.0).loss_options("grpo") == {}
    assert options.margin_at(0, 10) == 0.0 and options.margin_at(10, 10) == pytest.approx(0.2)
    assert options.margin_at(5, 10) == pytest.approx(0.1)


def test_a_config_saved_by_0_2_0_with_score_tau_0_still_loads(tmp_path):
    """0.2.0 wrote score_tau 0 for "the objective's default" (None now): its config.yaml passed back with --config,
    or resumed, means the same run."""
    import argparse

    from conspo.cli import config_from_args

    saved = tmp_path / "config.yaml"
    saved.write_text("objective: disco\nscore_tau: 0.0\nsteps: 3\n")
    cfg, given = config_from_args(argparse.Namespace(config=str(saved)))
    cfg.validate()
    assert cfg.score_tau is None and cfg.objective == "disco" and "score_tau" in given
