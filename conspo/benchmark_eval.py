"""``conspo eval``: benchmark a model the way papers report it.

Per benchmark: greedy accuracy, avg@k (mean correctness of k samples), unbiased pass@k' for
every k' <= k (Chen et al. 2021), mean completion length and truncation rate. Writes
``results.json`` (numbers plus template, sampling settings, grader and package versions) and
``completions.jsonl`` (every completion with its score) to the output directory, and prints a
markdown table. Generation: transformers (any machine) or vLLM (``--backend vllm``, when it is
installed and a GPU is present; ``auto`` picks it then).
"""

from __future__ import annotations

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


@dataclass
class EvalSettings:
    model: str
    benchmarks: list[str]
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 3072
    backend: str = "auto"
    template: str = "qwen_math_boxed"
    data_dir: str | None = None
    limit: int = 0
    batch_size: int = 32
    seed: int = 0
    output_dir: str = ""
    verify_timeout_s: float = 5.0
    answer_extraction: str = "lenient"
    dtype: str = "auto"
    extra: dict = field(default_factory=dict)


@dataclass
class Generation:
    texts: list[str]  # k completions per prompt, prompt-major
    lengths: list[int]
    truncated: list[bool]


def _hf_generate(model, tokenizer, prompts: list[str], *, n: int, greedy: bool, settings: EvalSettings, progress) -> Generation:
    from conspo.rollout import generate

    out = Generation([], [], [])
    step = max(settings.batch_size // max(n, 1), 1)
    for start in range(0, len(prompts), step):
        rollouts = generate(model, tokenizer, prompts[start : start + step], num_generations=n,
                            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, greedy=greedy)
        out.texts += rollouts.texts
        out.lengths += rollouts.completion_mask.sum(1).tolist()
        out.truncated += rollouts.truncated.tolist()
        progress.update(len(prompts[start : start + step]))
    return out


def _vllm_generate(llm, prompts: list[str], *, n: int, greedy: bool, settings: EvalSettings, progress) -> Generation:
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=0.0 if greedy else settings.temperature,
                            top_p=1.0 if greedy else settings.top_p, max_tokens=settings.max_new_tokens,
                            seed=settings.seed)
    out = Generation([], [], [])
    for request in llm.generate(prompts, params, use_tqdm=False):
        for completion in request.outputs:
            out.texts.append(completion.text)
            out.lengths.append(len(completion.token_ids))
            out.truncated.append(completion.finish_reason == "length")
        progress.update(1)
    return out


def _pick_backend(requested: str) -> str:
    import importlib.util

    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if requested == "auto":
        return "vllm" if has_vllm else "hf"
    if requested == "vllm" and not has_vllm:
        raise RuntimeError("--backend vllm needs the vllm package and a CUDA GPU; use --backend hf")
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
    import torch
    from tqdm.auto import tqdm

    from conspo.models import load_policy, load_tokenizer
    from conspo.rewards import MathVerifier
    from conspo.tasks.math_data import build_prompt, load_benchmark, load_jsonl

    if settings.k < 1:
        raise ValueError(f"--k must be >= 1, got {settings.k}")
    backend = _pick_backend(settings.backend)
    out_dir = Path(settings.output_dir or f"runs/eval-{datetime.now():%Y%m%d-%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model)
    if backend == "vllm":
        from vllm import LLM

        engine = LLM(model=settings.model, seed=settings.seed, dtype=settings.dtype)
        generate = lambda prompts, **kw: _vllm_generate(engine, prompts, settings=settings, **kw)  # noqa: E731
    else:
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if settings.dtype == "auto" and cuda else (
            torch.float32 if settings.dtype == "auto" else getattr(torch, settings.dtype))
        model = load_policy(settings.model, dtype=dtype, device="cuda" if cuda else "cpu")
        generate = lambda prompts, **kw: _hf_generate(model, tokenizer, prompts, settings=settings, **kw)  # noqa: E731

    results: dict = {"settings": {k: v for k, v in vars(settings).items() if k != "extra"}, "backend": backend,
                     "grader": f"conspo.rewards.MathVerifier(timeout_s={settings.verify_timeout_s}, "
                               f"lenient={settings.answer_extraction == 'lenient'})",
                     "versions": _versions(), "date": datetime.now().isoformat(timespec="seconds"), "benchmarks": {}}
    with MathVerifier(timeout_s=settings.verify_timeout_s, lenient=settings.answer_extraction == "lenient") as verifier, open(out_dir / "completions.jsonl", "w") as dump:
        for name in settings.benchmarks:
            examples = load_jsonl(name) if name.endswith(".jsonl") else load_benchmark(name, settings.data_dir)
            examples = examples[: settings.limit or None]
            prompts = [build_prompt(e, settings.template, tokenizer) for e in examples]
            started = time.time()
            with tqdm(total=2 * len(prompts), desc=f"{name} (greedy + {settings.k} samples)", unit="prompt") as bar:
                greedy = generate(prompts, n=1, greedy=True, progress=bar)
                sampled = generate(prompts, n=settings.k, greedy=False, progress=bar)
            g_scores = verifier.score(greedy.texts, [e.answer for e in examples])
            s_scores = verifier.score(sampled.texts, [e.answer for e in examples for _ in range(settings.k)])
            for i, e in enumerate(examples):
                dump.write(json.dumps({"benchmark": name, "id": e.id, "sample": "greedy", "answer": e.answer,
                                       "completion": greedy.texts[i], "score": g_scores.scores[i],
                                       "status": g_scores.statuses[i],
                                       "length": greedy.lengths[i], "truncated": greedy.truncated[i]}) + "\n")
                for j in range(settings.k):
                    r = i * settings.k + j
                    dump.write(json.dumps({"benchmark": name, "id": e.id, "sample": j, "answer": e.answer,
                                           "completion": sampled.texts[r], "score": s_scores.scores[r],
                                           "status": s_scores.statuses[r],
                                           "length": sampled.lengths[r], "truncated": sampled.truncated[r]}) + "\n")
            results["benchmarks"][name] = summarise_benchmark(g_scores.scores, s_scores.scores, settings.k,
                                                              sampled.lengths, sampled.truncated)
            statuses = g_scores.statuses + s_scores.statuses
            results["benchmarks"][name].update({"verify_timeouts": g_scores.timeouts + s_scores.timeouts,
                                                "no_answer_frac": statuses.count("no_answer") / max(len(statuses), 1),
                                                "timeout_frac": statuses.count("timeout") / max(len(statuses), 1),
                                                "seconds": round(time.time() - started, 1)})
    with open(out_dir / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    log(format_results(results) + f"\n\nresults: {out_dir / 'results.json'}  completions: {out_dir / 'completions.jsonl'}")
    return results


def summarise_benchmark(greedy_scores: list[float], sample_scores: list[float], k: int,
                        lengths: list[int], truncated: list[bool]) -> dict:
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
    head = ["benchmark", "n", "greedy", f"avg@{k}"] + [f"pass@{kk}" for kk in shown] + ["mean len", "truncated", "no answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["benchmarks"].items():
        row = [name, str(r["n"]), f"{r['greedy_accuracy']:.1%}", f"{r[f'avg@{k}']:.1%}"]
        row += [f"{r['pass@k'][str(kk)]:.1%}" for kk in shown]
        row += [f"{r['mean_length']:.0f}", f"{r['truncated_frac']:.1%}", f"{r.get('no_answer_frac', 0.0):.1%}"]
        lines.append("| " + " | ".join(row) + " |")
    s = results["settings"]
    lines.append(f"\nmodel {s['model']} | template {s['template']} | T={s['temperature']} top_p={s['top_p']} "
                 f"max_new_tokens={s['max_new_tokens']} | backend {results['backend']}")
    return "\n".join(lines)
