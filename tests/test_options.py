"""No silent options: walk the objective x option, task x option, model x option and reward x option tables
(conspo/options.py, and the objective options' own rule in conspo/objective_options.py). Every option set away
from its default either changes what the run consumes or is refused before any work, in one line naming it."""

import dataclasses

import pytest
from helpers import run_cli

from conspo import tasks as tasks_module
from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.objective_options import ObjectiveOptions
from conspo.objectives import OBJECTIVES, get_objective
from conspo.options import OPTION_NEEDS
from conspo.schedules import margin_curriculum

#: every value of each axis the table names, as config changes
AXES = {
    "objective": {name: {"objective": name} for name in OBJECTIVES},
    "task": {
        "addition": {},
        "chain": {},
        "math": {"task": "math", "model": "some/model"},
        "data": {"task": "data", "model": "some/model", "train_data": "x.jsonl", "reward": ["r.py:f"]},
    },
    "model": {"tiny": {}, "yours": {"model": "some/model"}},
    "reward": {"none": {}, "given": {"reward": ["r.py:f"]}},
}
#: where each objective option has an effect, written here independently of conspo/objective_options.py
MARGIN_CURRICULUM_OPTIONS = ("margin_end", "margin_horizon")
OBJECTIVE_OPTION_NEEDS = {
    **{
        name: ("conspo",)
        for name in ("tau", "margin_schedule", "margin_start", *MARGIN_CURRICULUM_OPTIONS, "positive_rule")
    },
    "positive_threshold": ("conspo",),
    "score": ("conspo",),
    "score_tau": ("disco", "disco_ratio", "real"),
}
OTHER = {
    "tau": 0.7,
    "margin_schedule": "cosine",
    "margin_start": 0.1,
    "margin_end": 0.2,
    "margin_horizon": 5,
    "positive_rule": "threshold",
    "positive_threshold": 0.7,
    "score": "sum",
    "eps_low": 0.1,
    "eps_high": 0.3,
    "train_data": "other.jsonl",
    "eval_data": "other.jsonl",
    "data_dir": "/elsewhere",
    "prompt_template": "r1",
    "answer_extraction": "strict",
    "prompt_field": "question",
    "sft_steps": 7,
    "sft_seed": 3,
    "sft_lr": 1e-4,
    "sft_decay_steps": 900,
    "sft_batch_size": 16,
    "sft_stop_accuracy": 0.3,
    "reward_weights": [2.0],
    "reward_errors": "zero",
    "decimal_match": "sig:2",
    "reward_audit_every": 5,
    "score_tau": 2.0,
}
#: options that are only meaningful together with another one
_RAMP = {"margin_schedule": "linear", "margin_end": 0.3}
ALSO = {
    "positive_threshold": {"positive_rule": "threshold"},
    "margin_end": _RAMP,
    "margin_schedule": _RAMP,
    "margin_horizon": _RAMP,
}


def what_the_run_consumes(cfg, monkeypatch):
    """Objective options over the run, the task's construction, the tiny base's warm-up and the rewards."""
    from conspo import models, warmup

    steps = [0, cfg.steps // 2, cfg.steps]
    margins = [
        margin_curriculum(
            cfg.margin_schedule,
            start=cfg.margin_start,
            end=cfg.margin_end,
            horizon=cfg.margin_horizon,
            total_steps=cfg.steps,
        )(s)
        for s in steps
    ]
    objective = [
        get_objective(cfg.objective).options(cfg.objective_settings(margin=m, max_new_tokens=8)) for m in margins
    ]
    monkeypatch.setattr(tasks_module, "get_task", lambda name, **kw: (name, kw))
    monkeypatch.setattr(tasks_module, "load_rewards", lambda specs: [len] * len(specs))
    task = tasks_module.task_from_config(cfg)
    if isinstance(task[1].get("reward_funcs"), list):  # the data task's rewards: compare their settings
        task[1]["reward_funcs"] = len(task[1]["reward_funcs"])
    warm_up = None
    if cfg.model == "tiny":
        monkeypatch.setattr(warmup, "tiny_base", lambda task, **kw: (_ for _ in ()).throw(LookupError(kw)))
        with pytest.raises(LookupError) as info:
            models.load_model(cfg, None, "cpu", None, print)
        warm_up = info.value.args[0]
    rewards = None
    if cfg.reward:
        reward_set = tasks_module.run_rewards(cfg, object())
        rewards = (reward_set.weights, reward_set.errors)
    return objective, task, warm_up, rewards


def need_of(name: str) -> tuple[str, tuple[str, ...]]:
    """(axis, the axis values under which option ``name`` has an effect)."""
    if name in OBJECTIVE_OPTION_NEEDS:
        return "objective", OBJECTIVE_OPTION_NEEDS[name]
    return OPTION_NEEDS[name].axis, OPTION_NEEDS[name].values


CASES = [(name, value) for name in [*OPTION_NEEDS, *OBJECTIVE_OPTION_NEEDS] for value in AXES[need_of(name)[0]]]


def test_every_objective_option_is_walked():
    assert sorted(OBJECTIVE_OPTION_NEEDS) == sorted(f.name for f in dataclasses.fields(ObjectiveOptions))


@pytest.mark.parametrize("name,axis_value", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_every_option_changes_the_run_or_is_refused(name, axis_value, monkeypatch):
    axis, values = need_of(name)
    meaningful = axis_value in values
    # the companions an option needs on top of its axis, where it has an effect (elsewhere they would be refused too)
    base = dataclasses.replace(TrainConfig(), **AXES[axis][axis_value], **(ALSO.get(name, {}) if meaningful else {}))
    changed = dataclasses.replace(base, **{name: OTHER[name]})
    if meaningful:
        base.validate()
        changed.validate()
        assert what_the_run_consumes(changed, monkeypatch) != what_the_run_consumes(base, monkeypatch), name
    else:
        with pytest.raises(ConfigError) as info:
            changed.validate()
        message = str(info.value)
        assert f"{name}=" in message and "has no effect" in message and "\n" not in message


@pytest.mark.parametrize("name", MARGIN_CURRICULUM_OPTIONS)
def test_margin_curriculum_options_need_a_schedule(name):
    """--margin-end 0.3 alone would keep the margin at margin_start: refused, naming the schedules."""
    with pytest.raises(
        ConfigError,
        match=rf"{name}=.* has no effect with margin_schedule constant .*"
        r"set margin_schedule linear, cosine or step",
    ):
        TrainConfig(**{name: OTHER[name]}).validate()


@pytest.mark.parametrize(
    "probe",
    [
        ["--tau", "0.5", "--objective", "grpo"],
        ["--eps-low", "0.1"],
        ["--positive-rule", "threshold", "--objective", "grpo"],
        ["--answer-extraction", "strict"],
        ["--prompt-template", "r1"],
        ["--sft-steps", "10", "--model", "some/model"],
        ["--margin-end", "0.3"],
        ["--train-data", "foo.jsonl"],
    ],
)
def test_probes_end_in_one_line_and_a_non_zero_exit(probe, tmp_path):
    proc = run_cli("train", *probe, "--output-dir", str(tmp_path / "run"), cache_dir=str(tmp_path), check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "has no effect" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_saved_by_an_older_version_drops_the_options_it_never_used():
    """Older config.yaml files hold every option (train_data on the addition task, positive_rule on GRPO):
    those had no effect then either, so a resume resets them instead of refusing the run."""
    from dataclasses import asdict

    from conspo.config import task_defaults
    from conspo.options import without_ineffective

    saved = TrainConfig(
        objective="grpo", positive_rule="threshold", train_data="math_train", eval_data="math500", margin_end=0.2
    )
    with pytest.raises(ConfigError):
        saved.validate()
    reset = without_ineffective(saved, asdict(TrainConfig()), task_defaults(saved.task))
    assert sorted(reset) == ["eval_data", "margin_end", "positive_rule", "train_data"]
    saved.validate()
    kept = TrainConfig(positive_rule="threshold")  # a ConSPO run trained with the threshold rule keeps it
    assert without_ineffective(kept, asdict(TrainConfig()), {}) == [] and kept.positive_rule == "threshold"
