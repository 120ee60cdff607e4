"""Command line: ``conspo train | compare | eval``. Options are generated from TrainConfig.

conspo train                                  # the default job: tiny model, addition, ConSPO
conspo train --objective grpo --steps 200
conspo train --config my.yaml --lr 1e-5       # YAML file, then command-line overrides
conspo train --resume runs/conspo-seed0-...   # continue a run from its newest checkpoint
conspo compare --objectives conspo,grpo --seeds 3
conspo eval --model runs/x/final --benchmarks math500,aime24 --k 8
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from conspo.config import TrainConfig, field_help, help_sections, upgrade_saved_options
from conspo.errors import ConfigError, Interrupted, RunError


def _parse_optional_float(text: str) -> float | None:
    if text.strip().lower() in ("none", "null", "default"):
        return None
    return float(text)


def add_config_arguments(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    """One --option per TrainConfig field, its help from the field's docstring, grouped by section
    (``hidden``: accepted but left out of --help, which points to ``conspo train --help`` instead)."""
    helps = field_help()
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in fields(TrainConfig)}
    for title, names in help_sections():
        group = parser if hidden else parser.add_argument_group(title)
        for name in names:
            _add_field_argument(group, by_name[name], hints[name], helps.get(name, ""), hidden)


def _add_field_argument(group, f, hint, help_text: str, hidden: bool) -> None:
    """One argparse option for TrainConfig field ``f`` (type ``hint``)."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else f.default_factory()
    text = f"{help_text} (default: {default!r})".replace("%", "%%")  # argparse formats help with %
    if hidden:
        text = argparse.SUPPRESS
    kwargs: dict = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
    if hint is bool:
        kwargs.update(action=argparse.BooleanOptionalAction)
    elif typing.get_origin(hint) is typing.Literal:
        # choices shown, checked by TrainConfig.validate so the error is the same one line as from YAML
        kwargs.update(type=str, metavar="{" + ",".join(typing.get_args(hint)) + "}")
    elif typing.get_origin(hint) is list:  # --reward a.py:f --reward b.py:g; --reward-weights 1 0.5
        item = typing.get_args(hint)[0]
        many = dict(action="append", type=item) if item is str else dict(nargs="+", type=item)
        kwargs.update(metavar=item.__name__.upper(), **many)
    elif hint in (int, float, str):
        kwargs.update(type=hint, metavar=hint.__name__.upper())
    else:  # float | None
        kwargs.update(type=_parse_optional_float, metavar="FLOAT|none")
    group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """TrainConfig from --config (YAML, safe loader) then explicit options; and the set of fields given."""
    values: dict = {}
    names = {f.name for f in fields(TrainConfig)}
    if getattr(args, "config", None):
        try:
            with open(args.config) as fh:
                loaded = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"--config {args.config}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {args.config}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"--config {args.config}: expected a mapping of option: value, got {type(loaded).__name__}"
            )
        loaded.pop("resolved", None)  # a run's config.yaml records what it resolved there: not options
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ConfigError(
                f"--config {args.config}: unknown option(s) {unknown}; valid options: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(TrainConfig)
        for key, value in upgrade_saved_options(loaded).items():
            values[key] = _coerce(key, value, hints[key], args.config)
    for name in names:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    if "task" not in values and values.get("train_data") and values.get("reward"):
        values["task"] = "data"  # your data with your reward: no --task needed (config.yaml records it)
    # the task's own calibrated defaults (e.g. --task chain's warm-up and budget), under what was given
    return TrainConfig.for_task(**values), set(values)


def _coerce(key, value, hint, source):
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if typing.get_origin(hint) is typing.Literal:  # a choice: TrainConfig.validate names the valid ones
        if not isinstance(value, str):
            raise ConfigError(f"--config {source}: {key}={value!r} should be one of {', '.join(typing.get_args(hint))}")
        return value
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        values = value if isinstance(value, list) else [value]
        return [_coerce(key, v, item, source) for v in values]
    if hint is float or hint not in ok:  # YAML 1.1 reads 1e-5 (no dot) as a string: accept what float() reads
        value = _number_from_text(value)
    if hint in ok:
        if not ok[hint](value):
            raise ConfigError(f"--config {source}: {key}={value!r} should be of type {hint.__name__}")
        return float(value) if hint is float else value
    if value is None or ok[float](value):  # float | None
        return None if value is None else float(value)
    raise ConfigError(f"--config {source}: {key}={value!r} should be a number or null")


def _number_from_text(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_numbers(argv: list[str]) -> list[str]:
    """``--lr -1e-5`` -> ``--lr=-1e-5``: argparse takes ``-1e-5`` for an option (it only knows plain -1, -0.5)."""
    out: list[str] = []
    for token in argv:
        if out and NEGATIVE_NUMBER.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    from conspo import __version__

    parser = argparse.ArgumentParser(
        prog="conspo", description="RL with verifiable rewards: ConSPO and GRPO-family objectives."
    )
    parser.add_argument("--version", action="version", version=f"conspo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser(
        "train",
        help="train a policy (no options: the CPU default job)",
        description="Train a policy with RL from verifiable rewards. With no options: the default "
        "job (tiny Qwen2 on 2-digit addition, ConSPO), a few minutes on a laptop CPU.",
    )
    p_train.add_argument("--config", help="YAML file of options (command-line options override it)")
    add_config_arguments(p_train)

    p_cmp = sub.add_parser(
        "compare",
        help="same task and budget for several objectives and seeds: table and plot",
        description="Train each objective with each seed on the same task and budget; "
        "print a table of final held-out accuracy (mean +- std) and plot the curves.",
    )
    p_cmp.add_argument("--objectives", default="conspo,grpo", help="comma-separated objectives (default: conspo,grpo)")
    p_cmp.add_argument(
        "--seeds", type=int, default=3, help="N runs per objective, seeds S..S+N-1 with S from --seed (default: 3)"
    )
    p_cmp.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="report steps to reach this held-out accuracy (default: mean accuracy before + 0.10)",
    )
    p_cmp.add_argument(
        "--reference",
        default=None,
        help="objective the others are compared with, seed by seed "
        "(paired difference, 95%% CI; default: conspo when compared, else the first)",
    )
    p_cmp.add_argument(
        "--from-runs",
        default="",
        metavar="DIR",
        help="train nothing: the tables and plots of the "
        "finished runs in DIR (<objective>-seed<seed> folders, as compare writes them)",
    )
    p_cmp.add_argument("--config", help="YAML file of training options shared by every run")
    p_cmp.add_argument_group(
        "training options",
        "every option of `conspo train` (see conspo train --help) applies "
        "to each run, e.g. --steps 300 --task addition --lr 1e-4; --seed is the first seed",
    )
    add_config_arguments(p_cmp, hidden=True)

    p_eval = sub.add_parser(
        "eval",
        help="benchmark a model: greedy accuracy, avg@k, pass@k",
        description="Evaluate a model the way papers report it: greedy accuracy, avg@k and "
        "pass@k on math benchmarks, or on the built-in task's held-out split (the tiny model's default).",
    )
    p_eval.add_argument(
        "--model", required=True, help="transformers model directory or hub id; a run directory means its final/ model"
    )
    p_eval.add_argument(
        "--benchmarks",
        default="",
        help="comma-separated: the built-in tasks addition and chain, math short "
        "names (math500, aime24, aime25, amc23, minerva_math, olympiadbench, gsm8k) or JSONL paths "
        "(default: the tiny model's own task, math500 otherwise)",
    )
    p_eval.add_argument("--k", type=int, default=8, help="samples per problem for avg@k and pass@k (default: 8)")
    p_eval.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    p_eval.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    p_eval.add_argument(
        "--max-new-tokens",
        type=int,
        default=0,
        help="generation limit (default 0: the built-in task's own, 3072 for math benchmarks)",
    )
    p_eval.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "hf", "vllm"],
        help="generation backend (auto: vllm when installed with a GPU, else transformers)",
    )
    p_eval.add_argument(
        "--answer-extraction",
        default="lenient",
        choices=["lenient", "strict"],
        help="a completion without an answer marker is judged by its last math expression "
        "(lenient, as published graders do) or scores 0 (strict) (default: lenient)",
    )
    p_eval.add_argument(
        "--decimal-match",
        default="exact",
        metavar="exact|places:N|sig:N",
        help="when a decimal counts for an exact gold such as pi or 1/3: exact (math-verify's own "
        "comparison, 6 places; the default), places:N or sig:N (a correctly rounded decimal with at "
        "least N places / significant digits); see docs/rewards.md",
    )
    p_eval.add_argument(
        "--template", default="qwen_math_boxed", help="prompt template: qwen_math_boxed, r1, plain, raw"
    )
    p_eval.add_argument(
        "--data-dir",
        default=None,
        help="folder of the benchmark sets "
        "(default: $CONSPO_DATA_DIR, else ../shared/data beside a development checkout)",
    )
    p_eval.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0: all)")
    p_eval.add_argument("--batch-size", type=int, default=32, help="completions generated at once (hf backend)")
    p_eval.add_argument("--seed", type=int, default=0)
    p_eval.add_argument("--dtype", default="auto", help="auto, float32, bfloat16")
    p_eval.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default 0: one per core); use 1 "
        "when another job shares the cores (two evaluations at once on 2 cores: 52 s with 1 thread "
        "each, over 5 minutes with the default; BENCHMARKS.md section 7)",
    )
    p_eval.add_argument(
        "--output-dir", default="", help="where results.json and completions.jsonl go (default: runs/eval-<date-time>)"
    )
    p_eval.add_argument("--overwrite", action="store_true", help="replace the results in a non-empty --output-dir")

    sub.add_parser(
        "audit-rewards",
        add_help=False,
        help="why each completion of a run or eval scored what it did (conspo audit-rewards --help)",
    )

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["audit-rewards"]:  # its own parser (conspo/audit.py)
        from conspo.audit import main as audit_main

        return audit_main(argv[1:])
    args = parser.parse_args(join_negative_numbers(argv))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars would bury the training bar
    if args.command == "eval":
        from conspo.benchmark_eval import EvalSettings, run_eval

        settings = EvalSettings(**{k: v for k, v in vars(args).items() if k not in ("command",)})
        settings.benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        try:
            run_eval(settings)
        except (ConfigError, ValueError, FileNotFoundError) as e:  # bad input: the loaders name file, line, field
            print(f"conspo eval: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "conspo eval: interrupted (results.json is written only when every benchmark is done)", file=sys.stderr
            )
            return 130
        return 0
    cfg = None
    try:
        cfg, explicit = config_from_args(args)
        if args.command == "train":
            from tqdm.auto import tqdm

            run_training(cfg, log=tqdm.write, explicit=explicit)
        else:
            from conspo.compare import compare, report

            if args.from_runs:
                report(Path(args.from_runs), reference=args.reference, target_accuracy=args.target_accuracy)
            else:
                compare(
                    cfg,
                    objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
                    seeds=args.seeds,
                    target_accuracy=args.target_accuracy,
                    train_fn=run_training,
                    reference=args.reference,
                )
    except ConfigError as e:
        print(f"conspo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"conspo {args.command}: {e}", file=sys.stderr)
        return 130
    except RunError as e:
        print(f"conspo {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the first step, or a second Ctrl-C
        intact = ""
        if cfg is not None and cfg.output_dir and Path(cfg.output_dir).is_dir():
            from conspo.run import what_is_intact

            intact = f"; {what_is_intact(Path(cfg.output_dir))}"
        print(f"conspo {args.command}: interrupted{intact}", file=sys.stderr)
        return 130
    return 0


def entry_point() -> None:
    """The ``conspo`` command and ``python -m conspo``: run :func:`main` and exit with its status."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        leave_without_teardown(code)
    sys.exit(code)


def leave_without_teardown(code: int) -> None:
    """Flush and ``os._exit``: skip the interpreter's teardown in a torchrun/accelerate worker.

    Why: gloo's worker threads outlive ``destroy_process_group`` while DDP still holds the group, and
    one of them may still be dropping the last collective's work (a tensor with a Python object)
    when the interpreter finalizes; taking the GIL then ends that thread inside a C++ destructor and
    the process dies with "terminate called without an active exception" (SIGABRT) after a
    successful run (backtrace: ``AsyncAllgatherWork::~AsyncAllgatherWork`` -> ``gil_scoped_acquire``
    -> ``PyThread_exit_thread``; pytorch/pytorch PR #179291 describes the same race). Everything the
    command writes is closed by then; only buffered streams and logging handlers need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def run_training(cfg: TrainConfig, *, log=print, explicit: set[str] | None = None) -> dict:
    """Merge a resumed run's saved config, validate, set threads, and train with the chosen engine.

    A run that fails before writing anything leaves no empty run directory behind.
    """
    import torch

    from conspo.run import merge_resumed_config, remove_if_empty

    if cfg.resume:
        cfg = merge_resumed_config(cfg, explicit or set())
    cfg.validate()
    if cfg.cpu_threads():
        torch.set_num_threads(cfg.cpu_threads())
    existed = bool(cfg.output_dir) and Path(cfg.output_dir).exists()
    try:
        if cfg.engine == "trl":
            from conspo.integrations.trl_engine import train_with_trl

            return train_with_trl(cfg, log=log)
        from conspo.train import train

        return train(cfg, log=log)
    except BaseException:
        if not existed and cfg.output_dir:
            remove_if_empty(Path(cfg.output_dir))
        raise
