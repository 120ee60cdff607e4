"""Options: every TrainConfig field is honoured or refused by each engine; the house rules of the package."""

import ast
import dataclasses
import pathlib
import typing

import pytest

from conspo.config import ENGINE_HINTS, ENGINE_SUPPORT, TrainConfig
from conspo.errors import ConfigError
from conspo.integrations.trl_engine import trl_arguments
from conspo.objectives import GROUP_MODES, OBJECTIVES, get_objective
from conspo.schedules import MARGIN_SCHEDULES

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _other_value(name):
    """A valid value different from the field's default, for every field type."""
    default = getattr(TrainConfig(), name)
    hint = typing.get_type_hints(TrainConfig)[name]
    if typing.get_origin(hint) is typing.Literal:
        return next(v for v in typing.get_args(hint) if v != default)
    special = {"report_to": "tensorboard", "group_size": 4, "micro_batch_size": 16, "dtype": "bfloat16",
               "device": "cpu", "resume": "runs/x", "top_p": 0.9, "max_new_tokens": 7, "beta": 0.1}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if default is None:
        return 0.1
    if isinstance(default, (int, float)):
        return default + 1 if default >= 1 or isinstance(default, int) else default * 2 + 0.1
    return default + "-other"


def test_every_field_is_classified_for_both_engines():
    assert sorted(ENGINE_SUPPORT) == sorted(FIELDS), "a new TrainConfig field must say which engines honour it"
    for name, engines in ENGINE_SUPPORT.items():
        assert "native" in engines, f"{name}: the native engine honours every option"
        if "trl" not in engines:
            assert ENGINE_HINTS.get(name), f"{name}: say what to do instead with --engine trl"


@pytest.mark.parametrize("name", FIELDS)
def test_option_is_honoured_or_refused_by_each_engine(name):
    value = _other_value(name)
    for engine in ("native", "trl"):
        objective = "grpo" if name == "beta" else "conspo"
        cfg = dataclasses.replace(TrainConfig(engine=engine, objective=objective), **{name: value})
        if name == "objective":
            cfg = dataclasses.replace(cfg, objective=value)
        if name == "engine":
            continue
        if engine in ENGINE_SUPPORT[name]:
            if name == "micro_batch_size" or name == "group_size":
                cfg = dataclasses.replace(cfg, group_size=4)
            cfg.validate()
        else:
            with pytest.raises(ConfigError, match=f"{name}=.*not supported by --engine {engine}"):
                cfg.validate()


# Fields the TRL engine consumes through TRL's config (the others are read by the shared run code:
# conspo/run.py builds the task, the model and the run directory the same way for both engines).
TRL_ARG_FIELDS = ["steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature", "top_p",
                  "updates_per_batch", "lr", "lr_warmup_steps", "weight_decay", "max_grad_norm", "seed", "report_to",
                  "progress", "tau", "margin_schedule", "margin_start", "margin_end", "margin_horizon",
                  "positive_threshold", "score", "group_mode", "objective", "gradient_checkpointing",
                  "mixed_precision"]


@pytest.mark.parametrize("name", TRL_ARG_FIELDS)
def test_trl_honoured_options_reach_trls_config(name):
    base = TrainConfig(engine="trl", margin_schedule="linear")
    changed = dataclasses.replace(base, **{name: _other_value(name)})
    if name == "margin_schedule":
        changed = dataclasses.replace(base, margin_schedule="cosine")

    def args(cfg):
        return trl_arguments(cfg, max_new_tokens=cfg.max_new_tokens or 8, output_dir="x", use_cpu=True, bf16=False)

    assert args(changed) != args(base)


@pytest.mark.parametrize("name,value,attr", [("lora_r", 8, "r"), ("lora_alpha", 64, "lora_alpha"),
                                             ("lora_dropout", 0.1, "lora_dropout"),
                                             ("lora_target_modules", "q_proj,v_proj", "target_modules")])
def test_lora_options_reach_trls_peft_config(name, value, attr):
    pytest.importorskip("peft")
    from conspo.integrations.trl_engine import trl_peft_config

    assert trl_peft_config(TrainConfig(engine="trl")) is None
    config = trl_peft_config(dataclasses.replace(TrainConfig(engine="trl", lora_r=4), **{name: value}))
    got = getattr(config, attr)
    assert (set(got) == set(value.split(",")) if isinstance(value, str) else got == value)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_trl_baselines_use_the_objectives_clip_defaults(name):
    defaults = get_objective(name).option_defaults
    args = trl_arguments(TrainConfig(engine="trl", objective=name), max_new_tokens=8, output_dir="x", use_cpu=True,
                         bf16=False)
    assert (args["epsilon"], args["epsilon_high"]) == (defaults["eps_low"], defaults["eps_high"])
    args = trl_arguments(TrainConfig(engine="trl", objective=name, eps_high=0.5), max_new_tokens=8, output_dir="x",
                         use_cpu=True, bf16=False)
    assert args["epsilon_high"] == 0.5


def test_literal_choices_match_the_registries():
    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["objective"]) == tuple(OBJECTIVES)
    assert typing.get_args(hints["group_mode"]) == GROUP_MODES
    assert typing.get_args(hints["margin_schedule"]) == MARGIN_SCHEDULES


def test_trl_refuses_float16_and_conspo_kl():
    with pytest.raises(ConfigError, match="float16"):
        TrainConfig(engine="trl", dtype="float16").validate()
    with pytest.raises(ConfigError, match="beta"):
        TrainConfig(engine="trl", beta=0.1).validate()


PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "conspo"


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("conspo"):
            yield node.module, [a.name for a in node.names], node


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{p.relative_to(PACKAGE.parent)}: from {m} import {n}" for p in PACKAGE.rglob("*.py")
                 for m, names, _ in _imports(p) for n in names if n.startswith("_")]
    assert not offenders, offenders


def test_no_import_cycle_inside_the_package():
    """Module-level imports only (function-level imports are deliberate lazy loads)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        graph[module] = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                         and n.module.startswith("conspo")}

    def visit(node, stack):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node):], node]))
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])

    for module in graph:
        visit(module, [])


def test_each_rule_is_written_once():
    """The ConSPO group rule, the group-mode resolution and the clip defaults each live in one place."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}

    def where(pattern):
        return sorted(str(p.relative_to(PACKAGE)) for p, text in sources.items() if pattern in text)

    assert where(">= positive_threshold") == ["objectives.py"]
    assert where("< positive_threshold") == ["objectives.py"]
    assert where("% group_size != 0") == ["objectives.py"]
    assert where("eps_high: float = 0.28") == ["objectives.py"]
    assert where("epsilon_high=0.28") == [] and where("epsilon=3e-4") == []
