"""Supervised warm-up that makes the tiny default model partly competent (a cached base).

RL needs a base that sometimes succeeds: from scratch, rewards are almost all zero and no
objective learns anything in minutes. The base is trained on the task's training problems
only (never on held-out ones) with teacher forcing on the answer tokens, and cached as
safetensors under ``cache_dir/<key>`` where the key hashes every setting that affects it.
docs/design.md section 8: accuracy jumps from ~5% to ~60% within seconds of training, so the
number of steps decides where the base lands; the default aims below 50% held-out.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch

from conspo.heldout import evaluate_greedy
from conspo.models import (
    TINY_MARKER,
    build_char_tokenizer,
    build_tiny_model,
    load_policy,
    load_tokenizer,
    save_pretrained,
)
from conspo.tasks import Task


def tiny_base(
    task: Task,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    cache_dir: str | Path,
    decay_steps: int = 0,
    stop_accuracy: float = 0.0,
    log=print,
):
    """Return (model, tokenizer, path) of the warmed-up tiny base, training it once if not cached.

    ``decay_steps``, ``stop_accuracy``: see :func:`supervised_warmup` (0: the learning rate reaches
    zero at ``steps``; no early stop).
    """
    settings = {
        "task": task.name,
        "digits": getattr(task, "digits", None),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "version": 1,
    }
    stops_early = bool(decay_steps) and decay_steps != steps  # a warm-up stopped before its lr reaches zero
    if stops_early:  # only then in the key: the keys of bases cached before the option stay valid
        settings["decay_steps"] = decay_steps
    if stop_accuracy:
        settings["stop_accuracy"] = stop_accuracy
    if hasattr(task, "settings"):  # a task whose problems depend on options (addition's only on digits: older keys)
        settings["task_settings"] = task.settings
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"tiny-{task.name}-{key}"
    if (path / TINY_MARKER).exists():
        log(f"tiny base: cached at {path}")
        return load_policy(str(path)), load_tokenizer(str(path)), path
    schedule = f" of a {decay_steps}-step schedule" if stops_early else ""
    until = (
        f", or until {stop_accuracy:.0%} of {WARMUP_CHECK_PROBLEMS} training problems are solved"
        if stop_accuracy
        else ""
    )
    log(f"tiny base: supervised warm-up for {steps} steps{schedule}{until} (once; cached at {path})")
    tokenizer = build_char_tokenizer()
    longest = max(len(p.prompt) for p in task.train_problems()) + task.max_new_tokens
    model = build_tiny_model(len(tokenizer), max_positions=64 if longest <= 64 else 128, seed=seed)
    started = time.time()
    trained = supervised_warmup(
        model,
        tokenizer,
        task,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        decay_steps=decay_steps,
        stop_accuracy=stop_accuracy,
        log=log,
    )
    log(f"tiny base: warm-up took {time.time() - started:.1f}s ({trained} steps)")
    tmp = path.with_name(path.name + f".tmp{random.randrange(1 << 30)}")
    try:
        save_pretrained(model, tokenizer, tmp, tiny_task=task.name)
        if path.exists() and not (path / TINY_MARKER).exists():  # an incomplete earlier attempt: replace it
            shutil.rmtree(path)
        tmp.rename(path)
    except OSError:
        if not (path / TINY_MARKER).exists():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave the temporary directory behind
    return load_policy(str(path)), load_tokenizer(str(path)), path


#: With a stop accuracy: how often and on how many training problems the warm-up checks itself
#: (not in the cache key: changing either changes where bases stop, so bump the key's "version").
WARMUP_CHECK_EVERY = 25
WARMUP_CHECK_PROBLEMS = 200


def supervised_warmup(
    model,
    tokenizer,
    task: Task,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    decay_steps: int = 0,
    stop_accuracy: float = 0.0,
    log=print,
) -> int:
    """Teacher-forced cross-entropy on ``prompt + solution + <eos>``, loss on the solution tokens only.

    The solution is ``task.solution(problem)`` where the task has one (a worked chain), else the answer.

    AdamW with the learning rate decaying linearly to zero over ``decay_steps`` (``steps`` when 0),
    lr_t = lr * (1 - t / decay_steps); training stops after ``steps``. Stopping before the end of
    the schedule leaves a base that is not annealed (on one machine RL improved such a chain base and
    made annealed ones worse; on another it made both worse: docs/experiments/chain.md).

    ``stop_accuracy`` > 0: every ``WARMUP_CHECK_EVERY`` steps, greedy accuracy on the first
    ``WARMUP_CHECK_PROBLEMS`` training problems (held-out ones are never looked at) is measured and
    the warm-up stops at the first check that reaches it. Returns the number of steps trained.
    """
    horizon = decay_steps or steps
    if horizon < steps:
        raise ValueError(f"warm-up decay_steps={decay_steps} must be 0 or >= steps={steps}")
    rng = random.Random(seed)
    problems = task.train_problems()
    eos = tokenizer.eos_token
    solution = getattr(task, "solution", lambda problem: problem.answer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    checked = problems[:WARMUP_CHECK_PROBLEMS]
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for step in range(steps):
            if stop_accuracy and step and step % WARMUP_CHECK_EVERY == 0:
                accuracy = greedy_accuracy(model, tokenizer, task, checked)
                log(f"tiny base: step {step}: {accuracy:.1%} of {len(checked)} training problems solved (greedy)")
                if accuracy >= stop_accuracy:
                    return step
            batch = rng.sample(problems, batch_size)
            prompts = tokenizer([p.prompt for p in batch], add_special_tokens=False)["input_ids"]
            answers = tokenizer([solution(p) + eos for p in batch], add_special_tokens=False)["input_ids"]
            width = max(len(a) + len(b) for a, b in zip(prompts, answers))
            ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            labels = torch.full((batch_size, width), -100)
            attention = torch.zeros((batch_size, width), dtype=torch.long)
            for row, (p, a) in enumerate(zip(prompts, answers)):  # right padding is fine without generation
                ids[row, : len(p) + len(a)] = torch.tensor(p + a)
                labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
                attention[row, : len(p) + len(a)] = 1
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - step / horizon)
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return steps


def greedy_accuracy(model, tokenizer, task: Task, problems) -> float:
    """Greedy accuracy of ``model`` on ``problems`` (the held-out evaluation's code; its generate() decodes
    in eval mode and restores train mode for the next warm-up step)."""
    result, _ = evaluate_greedy(model, tokenizer, task, problems, max_new_tokens=task.max_new_tokens)
    return result.accuracy
