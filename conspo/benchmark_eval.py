"""``conspo eval``: benchmark a model the way papers report it.

Per benchmark: greedy accuracy, avg@k (mean correctness of k samples), unbiased pass@k' for
every k' <= k (Chen et al. 2021), mean completion length and truncation rate. Writes
``results.json`` (numbers plus template, sampling settings, grader and package versions) and
``completions.jsonl`` (every completion with its score) to the output directory, and prints a
markdown table. Generation: transformers (any machine) or vLLM (``--backend vllm``, when it is
installed and a GPU is present; ``auto`` picks it then).
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating LLMs trained on code"):

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


#: Built-in tasks ``conspo eval`` can score (their held-out split, prompts and verifier).
BUILTIN_TASKS = ("addition", "chain")
MATH_MAX_NEW_TOKENS = 3072  # the math benchmarks' default generation limit


@dataclass
class EvalSettings:
    model: str
    benchmarks: list[str] = field(default_factory=list)  # empty: the model's own task (tiny model) or math500
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 0  # 0: the task's own limit (built-in tasks), else MATH_MAX_NEW_TOKENS
    backend: str = "auto"
    template: str = "qwen_math_boxed"
    data_dir: str | None = None
    limit: int = 0
    batch_size: int = 32
    seed: int = 0
    output_dir: str = ""
    verify_timeout_s: float = 5.0
    answer_extraction: str = "lenient"
    decimal_match: str = "exact"  # conspo.rewards.math.parse_decimal_match
    dtype: str = "auto"
    threads: int = 0  # torch CPU threads; 0: torch's default (one per core)
    overwrite: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Benchmark:
    """What one benchmark gives the evaluation: problems (ids, prompts, gold answers) and a scorer."""

    name: str
    ids: list[str]
    prompts: list[str]
    answers: list[str]
    max_new_tokens: int
    score: object  # (completions, index of each completion's problem) -> (scores, statuses, timeouts)
    stop_strings: tuple[str, ...] = ()  # the prompt template's (plain form only)


def _builtin_benchmark(name: str, settings: EvalSettings) -> Benchmark:
    from conspo.tasks import get_task

    task = get_task(name)
    problems = task.heldout_problems()[: settings.limit or None]

    def score(texts, which):
        scores = task.score([problems[i] for i in which], texts)
        return scores, ["correct" if s >= 0.5 else "wrong" for s in scores], 0

    return Benchmark(
        name,
        [p.id for p in problems],
        [p.prompt for p in problems],
        [p.answer for p in problems],
        settings.max_new_tokens or task.max_new_tokens,
        score,
    )


def _math_benchmark(name: str, settings: EvalSettings, tokenizer, verifier) -> Benchmark:
    from conspo.tasks.data import load_problem_set
    from conspo.tasks.math_data import build_prompt, stop_strings

    examples = load_problem_set(name, settings.data_dir)[: settings.limit or None]  # the resolver train uses

    def score(texts, which):
        result = verifier.score(texts, [examples[i].answer for i in which])
        return result.scores, result.statuses, result.timeouts

    return Benchmark(
        name,
        [e.id for e in examples],
        [build_prompt(e, settings.template, tokenizer) for e in examples],
        [e.answer for e in examples],
        settings.max_new_tokens or MATH_MAX_NEW_TOKENS,
        score,
        stop_strings(settings.template, tokenizer),
    )


def resolve_model_dir(model: str) -> str:
    """A run directory stands for its ``final/`` model."""
    return str(Path(model) / "final") if (Path(model) / "final" / "config.json").exists() else model


@dataclass
class Generation:
    texts: list[str]  # k completions per prompt, prompt-major
    lengths: list[int]
    truncated: list[bool]


def _hf_generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int,
    greedy: bool,
    settings: EvalSettings,
    progress,
    max_new_tokens: int,
    stop_strings: tuple[str, ...],
) -> Generation:
    from conspo.rollout import generate

    out = Generation([], [], [])
    step = max(settings.batch_size // max(n, 1), 1)
    for start in range(0, len(prompts), step):
        rollouts = generate(
            model,
            tokenizer,
            prompts[start : start + step],
            num_generations=n,
            max_new_tokens=max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            greedy=greedy,
            stop_strings=stop_strings,
        )
        out.texts += rollouts.texts
        out.lengths += rollouts.completion_mask.sum(1).tolist()
        out.truncated += rollouts.truncated.tolist()
        progress.update(len(prompts[start : start + step]))
    return out


def _vllm_generate(
    llm,
    tokenizer,
    prompts: list[str],
    *,
    n: int,
    greedy: bool,
    settings: EvalSettings,
    progress,
    max_new_tokens: int,
    stop_strings: tuple[str, ...],
    stop_ids: tuple[int, ...],
) -> Generation:
    from vllm import SamplingParams

    from conspo.rollout import with_bos

    # every field that shapes the distribution, set: the same sampler as the HF backend (the engine is built
    # with generation_config="vllm", so nothing comes from the model's generation_config.json either)
    params = SamplingParams(
        n=n,
        temperature=0.0 if greedy else settings.temperature,
        top_p=1.0 if greedy else settings.top_p,
        top_k=-1,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=max_new_tokens,
        stop_token_ids=list(stop_ids),
        stop=list(stop_strings) or None,
        seed=settings.seed,
    )
    out = Generation([], [], [])
    # token ids, not text: vLLM would add a BOS in front of a chat template's own (the HF backend's rule instead)
    token_prompts = [
        {"prompt_token_ids": ids}
        for ids in tokenizer(with_bos(tokenizer, prompts), add_special_tokens=False)["input_ids"]
    ]
    for request in llm.generate(token_prompts, params, use_tqdm=False):
        for completion in request.outputs:
            out.texts.append(completion.text)
            out.lengths.append(len(completion.token_ids))
            out.truncated.append(completion.finish_reason == "length")
        progress.update(1)
    return out


def model_generation_config(model: str):
    """The model folder's own generation_config.json (None when it has none): read for its EOS ids, and to
    say which of its sampling settings conspo ignores."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None


def _pick_backend(requested: str) -> str:
    import importlib.util

    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if requested == "auto":
        return "vllm" if has_vllm else "hf"
    if requested == "vllm" and not has_vllm:
        from conspo.errors import ConfigError

        raise ConfigError("--backend vllm needs the vllm package and a CUDA GPU; use --backend hf")
    if requested not in ("hf", "vllm"):
        raise ValueError(f"--backend must be hf, vllm or auto, got {requested!r}")
    return requested


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "math-verify", "vllm", "conspo"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def run_eval(settings: EvalSettings, *, log=print) -> dict:
    """Evaluate ``settings.model`` on each benchmark; write results.json and completions.jsonl.

    Everything that can be checked is checked before the model is loaded (the output folder,
    the k, the data files), and nothing is written until generation starts.
    """
    import torch
    from tqdm.auto import tqdm

    from conspo.errors import ConfigError
    from conspo.models import (
        TINY_MARKER,
        check_positions,
        load_model_config,
        load_policy,
        load_tokenizer,
        unknown_token_fraction,
    )
    from conspo.rewards import MathVerifier
    from conspo.rewards.math import parse_decimal_match
    from conspo.rollout import ignored_generation_settings, ignored_settings_note, sampler_settings, stop_rule

    if settings.k < 1:
        raise ConfigError(f"--k must be >= 1, got {settings.k}")
    if settings.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: torch's default), got {settings.threads}")
    try:
        parse_decimal_match(settings.decimal_match)
    except ValueError as e:
        raise ConfigError(f"--decimal-match: {e}") from None
    backend = _pick_backend(settings.backend)
    settings.model = resolve_model_dir(settings.model)
    marker = Path(settings.model) / TINY_MARKER
    if not settings.benchmarks:  # the tiny model can only read its own task's prompts
        # (markers written before the chain task existed name no task: those models are addition's)
        settings.benchmarks = (
            [json.loads(marker.read_text()).get("task", "addition")] if marker.exists() else ["math500"]
        )
    out_dir = Path(settings.output_dir or f"runs/eval-{datetime.now():%Y%m%d-%H%M%S}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output-dir {out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not settings.overwrite:
        raise ConfigError(
            f"--output-dir {out_dir} is not empty: pass --overwrite to replace its results, or another --output-dir"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    config = load_model_config(settings.model)  # a mistyped local path fails here, before any hub retry
    try:
        tokenizer = load_tokenizer(settings.model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {settings.model}: could not load its tokenizer: {str(e).splitlines()[0]}") from None
    lenient = settings.answer_extraction == "lenient"
    with MathVerifier(
        timeout_s=settings.verify_timeout_s, lenient=lenient, decimal_match=settings.decimal_match
    ) as verifier:
        benchmarks = [
            _builtin_benchmark(name, settings)
            if name in BUILTIN_TASKS
            else _math_benchmark(name, settings, tokenizer, verifier)
            for name in settings.benchmarks
        ]
        for b in benchmarks:
            unknown = unknown_token_fraction(tokenizer, b.prompts)
            if unknown > 0:
                log(
                    f"WARNING {b.name}: {unknown:.0%} of the prompt tokens are unknown to this model's tokenizer "
                    "(mapped to its unknown token): it cannot read these prompts and its scores will mean little"
                )
        for b in benchmarks:  # the tiny model's positions are nominal (rotary, no weights): it reads any benchmark
            if not marker.exists():
                check_positions(settings.model, config, tokenizer, b.prompts, b.max_new_tokens)
        own_generation_config = model_generation_config(settings.model)
        stop = stop_rule(own_generation_config, tokenizer)
        ignored = ignored_generation_settings(own_generation_config)
        if ignored:
            log(ignored_settings_note(ignored, "results.json, `sampler`"))
        if backend == "hf" and not torch.cuda.is_available():
            longest = max(b.max_new_tokens for b in benchmarks)
            total = sum(len(b.prompts) for b in benchmarks) * (1 + settings.k)
            if total * longest > 200_000:
                log(
                    f"note: {total:,} completions of up to {longest:,} tokens on the CPU can take hours; "
                    "--limit, --k and --max-new-tokens shorten it (the progress bar shows the estimate)"
                )
        if backend == "vllm":
            from vllm import LLM

            engine = LLM(model=settings.model, seed=settings.seed, dtype=settings.dtype, generation_config="vllm")
            generate = functools.partial(_vllm_generate, engine, tokenizer, settings=settings, stop_ids=stop.token_ids)
        else:
            cuda = torch.cuda.is_available()
            dtype = (
                torch.bfloat16
                if settings.dtype == "auto" and cuda
                else (torch.float32 if settings.dtype == "auto" else getattr(torch, settings.dtype))
            )
            try:
                model = load_policy(settings.model, dtype=dtype, device="cuda" if cuda else "cpu")
            except (OSError, ValueError) as e:
                raise ConfigError(f"--model {settings.model}: could not load it: {str(e).splitlines()[0]}") from None
            generate = functools.partial(_hf_generate, model, tokenizer, settings=settings)

        results: dict = {
            "settings": {k: v for k, v in vars(settings).items() if k != "extra"},
            "backend": backend,
            "grader": f"conspo.rewards.MathVerifier(timeout_s={settings.verify_timeout_s}, "
            f"lenient={lenient}, decimal_match={settings.decimal_match!r}); "
            "built-in tasks: the task's own exact check",
            "sampler": {
                mode: {
                    k: v
                    for k, v in sampler_settings(  # limits: per benchmark below
                        stop,
                        greedy=mode == "greedy",
                        temperature=settings.temperature,
                        top_p=settings.top_p,
                        max_new_tokens=0,
                    ).items()
                    if k != "max_new_tokens"
                }
                for mode in ("greedy", "sampled")
            },
            "stop_strings": {b.name: list(b.stop_strings) for b in benchmarks},
            "ignored_model_generation_settings": {k: repr(v) for k, v in ignored.items()},
            "versions": _versions(),
            "date": datetime.now().isoformat(timespec="seconds"),
            "benchmarks": {},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "completions.jsonl", "w") as dump:
            for b in benchmarks:
                results["benchmarks"][b.name] = _evaluate_one(b, generate, settings, dump, tqdm)
    with open(out_dir / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    log(
        format_results(results)
        + f"\n\nresults: {out_dir / 'results.json'}  completions: {out_dir / 'completions.jsonl'}"
    )
    return results


def _evaluate_one(b: Benchmark, generate, settings: EvalSettings, dump, tqdm) -> dict:
    """Greedy and k sampled completions per problem of one benchmark; rows to ``dump``; its numbers."""
    started, k = time.time(), settings.k
    with tqdm(total=2 * len(b.prompts), desc=f"{b.name} (greedy + {k} samples)", unit="prompt") as bar:
        greedy = generate(
            b.prompts, n=1, greedy=True, progress=bar, max_new_tokens=b.max_new_tokens, stop_strings=b.stop_strings
        )
        sampled = generate(
            b.prompts, n=k, greedy=False, progress=bar, max_new_tokens=b.max_new_tokens, stop_strings=b.stop_strings
        )
    g_scores, g_statuses, g_timeouts = b.score(greedy.texts, list(range(len(b.prompts))))
    s_scores, s_statuses, s_timeouts = b.score(sampled.texts, [i for i in range(len(b.prompts)) for _ in range(k)])
    for i, (problem_id, answer) in enumerate(zip(b.ids, b.answers)):
        rows = [("greedy", greedy, i, g_scores, g_statuses)] + [
            (j, sampled, i * k + j, s_scores, s_statuses) for j in range(k)
        ]
        for sample, gen, r, scores, statuses in rows:
            dump.write(
                json.dumps(
                    {
                        "benchmark": b.name,
                        "id": problem_id,
                        "sample": sample,
                        "answer": answer,
                        "completion": gen.texts[r],
                        "score": scores[r],
                        "status": statuses[r],
                        "length": gen.lengths[r],
                        "truncated": gen.truncated[r],
                    }
                )
                + "\n"
            )
    dump.flush()
    summary = summarise_benchmark(g_scores, s_scores, k, sampled.lengths, sampled.truncated)
    statuses = g_statuses + s_statuses
    summary.update(
        {
            "max_new_tokens": b.max_new_tokens,
            "verify_timeouts": g_timeouts + s_timeouts,
            "no_answer_frac": statuses.count("no_answer") / max(len(statuses), 1),
            "timeout_frac": statuses.count("timeout") / max(len(statuses), 1),
            "seconds": round(time.time() - started, 1),
        }
    )
    return summary


def summarise_benchmark(
    greedy_scores: list[float], sample_scores: list[float], k: int, lengths: list[int], truncated: list[bool]
) -> dict:
    """Aggregate per-problem scores (samples prompt-major, k per problem)."""
    n = len(greedy_scores)
    correct = [sum(1 for s in sample_scores[i * k : (i + 1) * k] if s >= 0.5) for i in range(n)]
    return {
        "n": n,
        "greedy_accuracy": sum(1 for s in greedy_scores if s >= 0.5) / max(n, 1),
        f"avg@{k}": sum(correct) / max(n * k, 1),
        "pass@k": {str(kk): sum(pass_at_k(k, c, kk) for c in correct) / max(n, 1) for kk in range(1, k + 1)},
        "mean_length": sum(lengths) / max(len(lengths), 1),
        "truncated_frac": sum(truncated) / max(len(truncated), 1),
    }


def format_results(results: dict) -> str:
    k = results["settings"]["k"]
    shown = sorted({1, k} | {2**i for i in range(1, 10) if 2**i < k})
    head = (
        ["benchmark", "n", "greedy", f"avg@{k}"]
        + [f"pass@{kk}" for kk in shown]
        + ["mean len", "truncated", "no answer"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["benchmarks"].items():
        row = [name, str(r["n"]), f"{r['greedy_accuracy']:.1%}", f"{r[f'avg@{k}']:.1%}"]
        row += [f"{r['pass@k'][str(kk)]:.1%}" for kk in shown]
        row += [f"{r['mean_length']:.0f}", f"{r['truncated_frac']:.1%}", f"{r.get('no_answer_frac', 0.0):.1%}"]
        lines.append("| " + " | ".join(row) + " |")
    s = results["settings"]
    limits = sorted({r.get("max_new_tokens", s["max_new_tokens"]) for r in results["benchmarks"].values()})
    lines.append(
        f"\nmodel {s['model']} | template {s['template']} | T={s['temperature']} top_p={s['top_p']} "
        f"max_new_tokens={'/'.join(map(str, limits))} | backend {results['backend']}"
    )
    return "\n".join(lines)
