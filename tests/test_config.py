"""Options: every TrainConfig field is honoured or refused by each engine; the house rules of the package."""

import ast
import dataclasses
import pathlib
import typing

import pytest
import torch

from conspo.config import TrainConfig, engine_hint, engine_support
from conspo.errors import ConfigError
from conspo.integrations.trl_engine import trl_arguments
from conspo.objectives import OBJECTIVES, POSITIVE_RULES, get_objective
from conspo.schedules import MARGIN_SCHEDULES
from conspo.update import GROUP_MODES

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _other_value(name):
    """A valid value different from the field's default, for every field type."""
    default = getattr(TrainConfig(), name)
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(default, list):
        return ["r.py:f"] if name == "reward" else [2.0]
    special = {
        "report_to": "tensorboard",
        "group_size": 4,
        "micro_batch_size": 16,
        "dtype": "bfloat16",
        "device": "cpu",
        "resume": "runs/x",
        "top_p": 0.9,
        "max_new_tokens": 7,
        "beta": 0.1,
        "sft_decay_steps": 1000,
        "mixed_precision": "bf16",
        "decimal_match": "sig:2",
    }
    if name in special:
        return special[name]
    if typing.get_origin(hint) is typing.Literal:
        return next(v for v in typing.get_args(hint) if v != default)
    if isinstance(default, bool):
        return not default
    if default is None:
        return 0.1
    if isinstance(default, (int, float)):
        return default + 1 if default >= 1 or isinstance(default, int) else default * 2 + 0.1
    return default + "-other"


def where_it_has_an_effect(cfg, name):
    """``cfg`` changed so that option ``name`` has an effect (conspo/options.py's OPTION_NEEDS)."""
    from conspo.options import OPTION_NEEDS

    need = OPTION_NEEDS.get(name)
    if need is not None:
        cfg = dataclasses.replace(
            cfg,
            **{
                "objective": lambda v: {"objective": v},
                "model": lambda v: {},
                "task": lambda v: {"task": v, "model": "some/model", "train_data": "x.jsonl", "reward": ["r.py:f"]},
                "reward": lambda v: {"reward": ["r.py:f"]},
            }[need.axis](need.values[0]),
        )
    if name == "score_tau":  # the other score objectives' temperature
        cfg = dataclasses.replace(cfg, objective="disco")
    if name in ("margin_end", "margin_horizon", "margin_schedule"):  # a ramp that goes somewhere
        cfg = dataclasses.replace(cfg, margin_schedule="linear", margin_end=0.3)
    return cfg


def test_every_field_is_classified_for_both_engines():
    support = engine_support()
    assert sorted(support) == sorted(FIELDS)
    for name, engines in support.items():
        assert engines and set(engines) <= {"native", "trl"}, f"{name}: no engine honours it"
        for engine in {"native", "trl"} - set(engines):
            assert engine_hint(name), f"{name}: say what to do instead with --engine {engine}"


@pytest.mark.parametrize("name", FIELDS)
def test_option_is_honoured_or_refused_by_each_engine(name, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec  # reporters' packages, vLLM and a GPU need not be here for this walk
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: object() if n in ("tensorboard", "wandb", "vllm") else real_find_spec(n, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    value = _other_value(name)
    for engine in ("native", "trl"):
        objective = "grpo" if name == "beta" else "conspo"
        cfg = dataclasses.replace(
            where_it_has_an_effect(TrainConfig(engine=engine, objective=objective), name), **{name: value}
        )
        if name == "task":  # the tiny model trains only addition
            cfg = dataclasses.replace(cfg, model="some/model")
        if name == "task" and value == "data":
            cfg = dataclasses.replace(cfg, train_data="x.jsonl", reward=["r.py:f"])
        if name == "objective":
            cfg = dataclasses.replace(cfg, objective=value)
        if name == "engine":
            continue
        if engine == "trl" and name.startswith("vllm_") and name != "vllm_mode":  # each is used in one mode only
            cfg = dataclasses.replace(cfg, vllm_mode="server" if name.startswith("vllm_server") else "colocate")
        if name == "overlong_penalty_factor":  # used only with the penalty on
            cfg = dataclasses.replace(cfg, overlong_buffer=2)
        if name in ("dtype", "low_precision_weights"):  # half-precision weights without LoRA need the explicit flag
            cfg = dataclasses.replace(cfg, dtype="bfloat16", low_precision_weights=True)
        if name == "positive_threshold":  # used only by the threshold rule
            cfg = dataclasses.replace(cfg, positive_rule="threshold")
        if engine in engine_support()[name]:
            if name == "micro_batch_size" or name == "group_size":
                cfg = dataclasses.replace(cfg, group_size=4)
            cfg.validate()
        else:
            with pytest.raises(ConfigError, match=f"{name}=.*not supported by --engine {engine}"):
                cfg.validate()


# Fields the TRL engine consumes through TRL's config (the others are read by the shared run code:
# conspo/run.py builds the task, the model and the run directory the same way for both engines).
TRL_ARG_FIELDS = [
    "steps",
    "prompts_per_step",
    "group_size",
    "max_new_tokens",
    "temperature",
    "top_p",
    "updates_per_batch",
    "lr",
    "lr_warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "report_to",
    "progress",
    "tau",
    "margin_schedule",
    "margin_start",
    "margin_end",
    "margin_horizon",
    "positive_threshold",
    "positive_rule",
    "score",
    "group_mode",
    "objective",
    "gradient_checkpointing",
    "mixed_precision",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_server_host",
    "vllm_server_port",
    "mask_truncated",
    "overlong_buffer",
    "overlong_penalty_factor",
]


@pytest.mark.parametrize("name", TRL_ARG_FIELDS)
def test_trl_honoured_options_reach_trls_config(name):
    base = TrainConfig(engine="trl", margin_schedule="linear", positive_rule="threshold")
    if name == "overlong_penalty_factor":  # its weight reaches TRL only with the penalty on
        base = dataclasses.replace(base, overlong_buffer=2)
    changed = dataclasses.replace(base, **{name: _other_value(name)})
    if name == "margin_schedule":
        changed = dataclasses.replace(base, margin_schedule="cosine")
    if name == "positive_rule":
        changed = dataclasses.replace(base, positive_rule="group_mean")

    def args(cfg):
        return trl_arguments(cfg, max_new_tokens=cfg.max_new_tokens or 8, output_dir="x", use_cpu=True)

    assert args(changed) != args(base)


@pytest.mark.parametrize(
    "name,value,attr",
    [
        ("lora_r", 8, "r"),
        ("lora_alpha", 64, "lora_alpha"),
        ("lora_dropout", 0.1, "lora_dropout"),
        ("lora_target_modules", "q_proj,v_proj", "target_modules"),
    ],
)
def test_lora_options_reach_trls_peft_config(name, value, attr):
    pytest.importorskip("peft")
    from conspo.integrations.trl_engine import trl_peft_config

    assert trl_peft_config(TrainConfig(engine="trl")) is None
    config = trl_peft_config(dataclasses.replace(TrainConfig(engine="trl", lora_r=4), **{name: value}))
    got = getattr(config, attr)
    assert set(got) == set(value.split(",")) if isinstance(value, str) else got == value


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_trl_baselines_use_the_objectives_clip_defaults(name):
    defaults = get_objective(name).option_defaults
    args = trl_arguments(TrainConfig(engine="trl", objective=name), max_new_tokens=8, output_dir="x", use_cpu=True)
    assert (args["epsilon"], args["epsilon_high"]) == (defaults["eps_low"], defaults["eps_high"])
    args = trl_arguments(
        TrainConfig(engine="trl", objective=name, eps_high=0.5), max_new_tokens=8, output_dir="x", use_cpu=True
    )
    assert args["epsilon_high"] == 0.5


def test_literal_choices_match_the_registries():
    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["objective"]) == tuple(OBJECTIVES)
    assert typing.get_args(hints["group_mode"]) == GROUP_MODES
    assert typing.get_args(hints["margin_schedule"]) == MARGIN_SCHEDULES
    assert typing.get_args(hints["positive_rule"]) == POSITIVE_RULES


def test_positive_rule_reaches_the_objective_and_a_threshold_it_ignores_is_refused():
    settings = TrainConfig(positive_rule="group_mean").objective_settings(margin=0.0, max_new_tokens=4)
    assert get_objective("conspo").options(settings)["positive_rule"] == "group_mean"
    with pytest.raises(
        ConfigError,
        match="positive_threshold=0.7 has no effect with positive_rule group_mean, "
        "which picks positives by the group.s mean reward: set positive_rule threshold",
    ):
        TrainConfig(positive_rule="group_mean", positive_threshold=0.7).validate()


def test_trl_refuses_float16_and_conspo_kl():
    with pytest.raises(ConfigError, match="float16"):
        TrainConfig(engine="trl", dtype="float16").validate()
    with pytest.raises(ConfigError, match="beta"):
        TrainConfig(engine="trl", beta=0.1).validate()


@pytest.mark.parametrize("objective", ["conspo", "grpo"])
def test_vllm_options_reach_trls_config(tmp_path, objective):
    """vLLM cannot run here: the options are checked where TRL reads them, in the built ConSPOConfig / GRPOConfig."""
    pytest.importorskip("trl")
    from trl import GRPOConfig

    from conspo.integrations.trl import ConSPOConfig

    config_class = ConSPOConfig if objective == "conspo" else GRPOConfig

    def built(**options):
        cfg = TrainConfig(engine="trl", objective=objective, **options)
        return config_class(**trl_arguments(cfg, max_new_tokens=8, output_dir=str(tmp_path), use_cpu=True))

    off = built()
    assert not off.use_vllm
    colocate = built(vllm_mode="colocate", vllm_gpu_memory_utilization=0.55, vllm_tensor_parallel_size=2)
    assert (
        colocate.use_vllm,
        colocate.vllm_mode,
        colocate.vllm_gpu_memory_utilization,
        colocate.vllm_tensor_parallel_size,
    ) == (True, "colocate", 0.55, 2)
    server = built(vllm_mode="server", vllm_server_host="10.0.0.7", vllm_server_port=8123)
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_host, server.vllm_server_port) == (
        True,
        "server",
        "10.0.0.7",
        8123,
    )
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}  # ours are TRL's defaults
    for name in ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_server_host", "vllm_server_port"):
        assert getattr(TrainConfig(), name) == defaults[name] == getattr(off, name), name


def _vllm_error(monkeypatch, *, gpu, package, **options):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: (object() if package else None) if n == "vllm" else real_find_spec(n, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    with pytest.raises(ConfigError) as error:
        TrainConfig(engine="trl", **options).validate()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_vllm_without_a_gpu_or_the_package_is_refused_with_the_fix(monkeypatch):
    message = _vllm_error(monkeypatch, gpu=False, package=True, vllm_mode="colocate")
    assert message.startswith("invalid config: vllm_mode='colocate': vLLM generates on CUDA GPUs and no CUDA GPU")
    assert "--vllm-mode none" in message
    message = _vllm_error(monkeypatch, gpu=True, package=True, vllm_mode="server", device="cpu")
    assert "vllm_mode='server'" in message and "device='cpu'" in message
    message = _vllm_error(monkeypatch, gpu=True, package=False, vllm_mode="server")
    assert message.startswith("invalid config: vllm_mode='server': needs the vllm package")
    assert "pip install 'vllm" in message and "--vllm-mode none" in message


@pytest.mark.parametrize(
    "options,expected",
    [
        (
            dict(vllm_server_port=9000),
            "vllm_server_port=9000: is only used with --vllm-mode server, not none: add --vllm-mode server",
        ),
        (
            dict(vllm_mode="colocate", vllm_server_host="h"),
            "vllm_server_host='h': is only used with --vllm-mode server, not colocate",
        ),
        (
            dict(vllm_mode="server", vllm_tensor_parallel_size=2),
            "vllm_tensor_parallel_size=2: is only used with --vllm-mode colocate, not server: "
            "the server takes `trl vllm-serve --tensor_parallel_size`",
        ),
        (
            dict(vllm_mode="colocate", vllm_gpu_memory_utilization=1.5),
            "vllm_gpu_memory_utilization=1.5: must be in (0, 1]",
        ),
        (dict(vllm_mode="server", vllm_server_port=0), "vllm_server_port=0: must be a TCP port"),
    ],
)
def test_vllm_option_outside_its_mode_or_range_is_refused(monkeypatch, options, expected):
    assert expected in _vllm_error(monkeypatch, gpu=True, package=True, **options)


def test_the_real_environment_without_vllm_gives_the_one_line_error():
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM and a GPU are here: nothing to refuse")
    with pytest.raises(ConfigError, match=r"^invalid config: vllm_mode='colocate': .*--vllm-mode none"):
        TrainConfig(engine="trl", vllm_mode="colocate").validate()


PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "conspo"


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("conspo"):
            yield node.module, [a.name for a in node.names], node


def test_no_module_imports_another_modules_private_names():
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}: from {m} import {n}"
        for p in PACKAGE.rglob("*.py")
        for m, names, _ in _imports(p)
        for n in names
        if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
    ]  # __version__ is public
    assert not offenders, offenders


def test_no_import_cycle_inside_the_package():
    """Module-level imports only (function-level imports are deliberate lazy loads)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        graph[module] = {
            n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("conspo")
        }

    def visit(node, stack):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node) :], node]))
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
    assert where("> group_mean") == ["objectives.py"]
    assert where("GRPO_ONLY_OPTIONS: dict") == ["integrations/trl_config.py"]
    assert where("% group_size != 0") == ["loss_pieces.py", "objectives.py", "update.py"]  # layout checks; group mode
    assert where("eps_high: float = 0.28") == ["grpo_family.py"]
    assert where("epsilon_high=0.28") == [] and where("epsilon=3e-4") == []


def test_task_defaults_are_applied_by_the_library_not_only_the_cli():
    import argparse

    from conspo.cli import config_from_args

    chain = TrainConfig.for_task("chain")
    assert (chain.task, chain.lr, chain.steps, chain.sft_lr) == ("chain", 3e-6, 300, 1e-3)
    assert TrainConfig.for_task("chain", lr=1e-5).lr == 1e-5  # what is given wins
    assert TrainConfig.for_task("addition") == TrainConfig()
    assert config_from_args(argparse.Namespace(task="chain", seed=3))[0] == TrainConfig.for_task("chain", seed=3)


def test_no_module_restates_the_list_of_fields():
    """Which engine honours an option and where --help lists it are declared at the field; no literal list in the
    package names a quarter of TrainConfig's fields (the hand-written tables that used to restate them all drifted)."""
    import ast

    limit = len(FIELDS) // 4
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in FIELDS}
                if len(names) >= limit:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} names {len(names)} fields")
    assert not found, found
