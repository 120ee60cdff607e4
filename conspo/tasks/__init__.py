"""Tasks: where prompts and gold answers come from, and how completions are scored.

A task gives the trainer three things: a pool of training problems to sample from, a
fixed held-out set, and a batch scorer ``score(problems, completions) -> list[float]``.
A task may also offer ``stop_strings`` (strings that end a completion, e.g. the ``plain`` math
template's end of line) and ``last_score_metrics() -> dict`` (the math task: ``reward/no_answer_frac``,
``reward/timeout_frac``, ...), which the trainer logs with each step.
A task that the tiny model can be warmed up on also offers ``solution(problem) -> str``, the
completion the supervised warm-up teaches (the answer itself when absent).
Built-in: ``addition`` (the CPU default, synthetic and exactly verifiable), ``chain`` (running
sums written out as worked chains of 11-64 tokens, final answer verified) and ``math`` (a math
training set and a benchmark, rewards from ``conspo.rewards.MathVerifier``); ``data`` trains on the
user's rows with the user's rewards (conspo/tasks/data.py). Every task's verifier is also a reward of
TRL's shape (``verifier_reward``), the one reward interface (conspo/rewards/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class Problem:
    """One prompt with its gold answer. ``prompt`` is the exact text given to the model."""

    id: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task(Protocol):
    name: str
    max_new_tokens: int

    def train_problems(self) -> list[Problem]: ...

    def heldout_problems(self) -> list[Problem]: ...

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]: ...


def reward_inputs(problems: list[Problem], texts: list[str]) -> tuple[list, list, list[dict]]:
    """(prompts, completions, columns) for the rewards, as TRL passes them: a conversational prompt (chat
    messages) gets its completion as ``[{"role": "assistant", "content": text}]``; columns are the row's
    own (``--train-data``) or, for the built-in tasks, ``id`` and ``answer``."""
    prompts = [p.meta.get("reward_prompt", p.prompt) for p in problems]
    completions = [
        [{"role": "assistant", "content": t}] if isinstance(pr, list) else t for pr, t in zip(prompts, texts)
    ]
    columns = [p.meta["columns"] if "columns" in p.meta else {"id": p.id, "answer": p.answer} for p in problems]
    return prompts, completions, columns


def verifier_reward(task: Task) -> Callable:
    """The task's verifier as a reward of TRL's shape, ``(prompts, completions, id, **columns) -> list[float]``."""
    by_id: dict[str, Problem] = {}

    def reward(prompts, completions, id, **_):  # noqa: A002 - the column's name
        from conspo.rewards.verifiers import completion_text

        if not by_id or any(i not in by_id for i in id):  # built lazily: prompts may wait for the tokenizer
            by_id.update({p.id: p for p in [*task.train_problems(), *task.heldout_problems()]})
        return task.score([by_id[i] for i in id], [completion_text(c) for c in completions])

    reward.__name__ = reward.__qualname__ = f"{task.name}_verifier"
    return reward


def get_task(name: str, **options) -> Task:
    """Build a task by name. Unknown names list the valid ones."""
    if name == "addition":
        from conspo.tasks.arithmetic import AdditionTask

        return AdditionTask(**{k: v for k, v in options.items() if k in ("digits", "heldout_size", "seed")})
    if name == "chain":
        from conspo.tasks.chain import ChainTask

        return ChainTask(
            **{
                k: v
                for k, v in options.items()
                if k in ("min_terms", "max_terms", "largest_term", "heldout_size", "seed")
            }
        )
    if name == "math":
        from conspo.tasks.math_task import MathTask

        return MathTask(**options)
    if name == "data":
        from conspo.tasks.data import DataTask

        return DataTask(**options)
    raise ValueError(f"unknown task {name!r}; valid tasks are: addition, chain, math, data")


def task_from_config(cfg) -> Task:
    """The task a ``TrainConfig`` names (prompts, held-out problems, verifier); bad data is a ConfigError."""
    from conspo.errors import ConfigError

    try:
        if cfg.task == "math":
            return get_task(
                "math",
                train=cfg.train_data or "math_train",
                heldout=cfg.eval_data or "math500",
                data_dir=cfg.data_dir or None,
                template=cfg.prompt_template,
                answer_extraction=cfg.answer_extraction,
                decimal_match=cfg.decimal_match,
                reward_audit_every=cfg.reward_audit_every,
            )
        if cfg.task == "data":
            return get_task(
                "data",
                train=cfg.train_data,
                heldout=cfg.eval_data,
                data_dir=cfg.data_dir or None,
                prompt_field=cfg.prompt_field,
                reward_funcs=load_rewards(cfg.reward),
                reward_weights=cfg.reward_weights or None,
                reward_errors=cfg.reward_errors,
            )
    except (ValueError, OSError) as e:  # the loaders name the file, line and field
        raise ConfigError(f"task {cfg.task}: {e}") from None
    return get_task(cfg.task)


def load_rewards(specs) -> list[Callable]:
    """``--reward`` specs as functions; a spec that cannot be loaded is a ConfigError in one line."""
    from conspo.errors import ConfigError
    from conspo.rewards import load_reward

    try:
        return [load_reward(spec) for spec in specs]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_rewards(cfg, task):
    """The ``RewardSet`` a run scores with: the data task's, ``--reward``'s, or the task's own verifier."""
    from conspo.rewards import RewardSet

    if getattr(task, "rewards", None) is not None:
        return task.rewards
    funcs = load_rewards(cfg.reward) if cfg.reward else [verifier_reward(task)]
    return RewardSet(funcs, cfg.reward_weights or None, errors=cfg.reward_errors)
