"""``conspo audit-rewards RUN_OR_EVAL_DIR``: why every completion scored what it did.

Reads the completions a run or an evaluation saved (a training run's ``samples.jsonl``:
prompt, answer, completion, reward; a ``conspo eval`` directory's ``completions.jsonl``:
benchmark, id, sample, answer, completion, score), checks each again with
``conspo.rewards.MathVerifier`` and prints

* how many completions have each status: correct, wrong, no_answer (no final answer could be
  extracted), timeout (the check ran past its time limit), gold_unparsable (the gold answer
  could not be parsed), error; per benchmark for an evaluation;
* how many recorded scores this check does not reproduce (the verifier changed since);
* a sample of each kind, with the gold, the extracted answer and the end of the completion.
  Wrong answers whose gold appears near the end of the completion are shown first and counted:
  they are where false negatives (correct answers scored 0) hide.

So a user can look at the reward errors before trusting a run's curves or an eval table.
``--out FILE`` writes every completion with its status and extracted answer as JSONL.

``--second-opinion`` also re-scores every completion with plain math-verify and with strict
extraction (conspo/rewards/second_opinion.py) and lists where they disagree with the recorded
reward (or, where none was recorded, with this check's score): false-negative candidates first
(recorded 0, a second opinion says 1), then false-positive candidates (recorded 1, plain
math-verify says 0).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["audit", "main"]

FILES = ("completions.jsonl", "samples.jsonl")  # conspo eval, conspo train


def _find_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"{path}: no {' or '.join(FILES)} here (a `conspo eval` output directory or a training run directory)"
    )


def _read_rows(path: Path) -> tuple[list[dict], int]:
    """Rows with a completion and a gold answer, and how many lines were skipped."""
    rows, skipped = [], 0
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("completion"), str)
                or not isinstance(row.get("answer"), str)
                or not row["answer"].strip()
            ):
                skipped += 1
                continue
            row["_line"] = line_no
            rows.append(row)
    return rows, skipped


def _where(row: dict) -> str:
    if "benchmark" in row:
        return f"{row['benchmark']} {row.get('id', '?')} sample {row.get('sample', '?')}"
    if "step" in row:
        return f"step {row['step']}"
    return f"line {row['_line']}"


def _recorded(row: dict) -> float | None:
    for key in ("score", "reward"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _gold_near_end(row: dict, tail_chars: int = 400) -> bool:
    """The gold answer (or its normalised form) appears in the last characters of the completion."""
    from conspo.rewards.math import gold_answer, normalize_answer

    tail = _squash(row["completion"][-tail_chars:])
    gold = gold_answer(row["answer"])
    forms = {_squash(gold), _squash(normalize_answer(gold))}
    for form in forms:
        if not form:
            continue
        if re.fullmatch(r"-?\d+(?:\.\d+)?", form):  # a number: as a whole number, not inside another
            if re.search(r"(?<![\d.])" + re.escape(form) + r"(?![\d])", tail):
                return True
        elif form in tail:
            return True
    return False


def _clip(text: str | None, n: int) -> str:
    if text is None:
        return "(none)"
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _tail(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "..." + text[-(n - 3) :]


def audit(
    path: str | Path,
    *,
    strict: bool = False,
    timeout_s: float = 5.0,
    workers: int | None = None,
    samples: int = 3,
    benchmark: str | None = None,
    seed: int = 0,
    max_chars: int = 300,
    out: str | Path | None = None,
    log=print,
    second_opinion: bool = False,
    decimal_match: str = "exact",
) -> dict:
    """Check every completion saved under ``path`` again and print the report; returns the counts.

    Returns {"file", "n", "skipped", "counts", "by_group", "changed", "gold_near_end"}, and with
    ``second_opinion`` also "second_opinion": {"compared", "fn_candidates", "fp_candidates",
    "disagree_math_verify", "disagree_strict"}.
    """
    from conspo.rewards import MathVerifier
    from conspo.rewards.math import STATUSES

    file = _find_file(Path(path))
    config = _run_config(file)
    if config is not None and (config.get("reward") or config.get("task") in ("addition", "chain")):
        return audit_own_rewards(file, config, samples=samples, log=log)  # not math: the run's own rewards
    if config is not None:
        strict = strict or config.get("answer_extraction") == "strict"  # the run's own setting
    rows, skipped = _read_rows(file)
    if benchmark:
        rows = [r for r in rows if r.get("benchmark") == benchmark]
    kind = "evaluation completions" if file.name == "completions.jsonl" else "training samples"
    log(
        f"audit-rewards: {file} ({len(rows)} {kind}"
        + (f"; {skipped} line(s) without a completion and gold answer skipped" if skipped else "")
        + ")"
    )
    log(
        f"verifier: {'strict' if strict else 'lenient'} extraction, decimal_match={decimal_match}, "
        f"{timeout_s:g} s limit per answer"
    )
    if not rows:
        log("nothing to audit")
        return {
            "file": str(file),
            "n": 0,
            "skipped": skipped,
            "counts": {},
            "by_group": {},
            "changed": 0,
            "gold_near_end": 0,
        }
    with MathVerifier(
        num_workers=workers, timeout_s=timeout_s, lenient=not strict, decimal_match=decimal_match
    ) as verifier:
        result = verifier.score([r["completion"] for r in rows], [r["answer"] for r in rows])
    for r, status, answer, score in zip(rows, result.statuses, result.answers, result.scores):
        r["_status"], r["_answer"], r["_score"] = status, answer, score

    counts = Counter(r["_status"] for r in rows)
    n = len(rows)
    log("\n| status | completions | share |\n|---|---:|---:|")
    for status in STATUSES:
        log(f"| {status} | {counts.get(status, 0)} | {counts.get(status, 0) / n:.1%} |")

    by_group: dict[str, Counter] = {}
    if any("benchmark" in r for r in rows):
        for r in rows:
            by_group.setdefault(str(r.get("benchmark", "?")), Counter())[r["_status"]] += 1
        if len(by_group) > 1 or benchmark is None:
            log("\n| benchmark | completions | " + " | ".join(STATUSES) + " |")
            log("|---|---:|" + "---:|" * len(STATUSES))
            for name, c in by_group.items():
                total = sum(c.values())
                log(
                    f"| {name} | {total} | "
                    + " | ".join(f"{c.get(s, 0)} ({c.get(s, 0) / total:.0%})" for s in STATUSES)
                    + " |"
                )

    changed = [r for r in rows if _recorded(r) is not None and _recorded(r) != r["_score"]]  # exact scores
    n_recorded = sum(1 for r in rows if _recorded(r) is not None)
    if n_recorded:
        log(
            f"\nrecorded scores this check does not reproduce: {len(changed)} of {n_recorded}"
            + (" (the verifier or its settings changed since they were written)" if changed else "")
        )

    wrong = [r for r in rows if r["_status"] == "wrong"]
    near = [r for r in wrong if _gold_near_end(r)]
    if wrong:
        log(
            f"wrong answers whose gold appears near the end of the completion: {len(near)} of {len(wrong)} "
            "(look at these first: possible false negatives)"
        )

    rng = random.Random(seed)
    for status in STATUSES:
        group = [r for r in rows if r["_status"] == status]
        if not group or samples <= 0:
            continue
        if status == "wrong":
            near_ids = {id(r) for r in near}
            rest = [r for r in group if id(r) not in near_ids]
            picked = near[:samples] + rng.sample(rest, min(len(rest), max(0, samples - len(near))))
        else:
            picked = rng.sample(group, min(samples, len(group)))
        log(f"\n== {status}: {len(picked)} of {len(group)}")
        for r in picked:
            flag = "  [gold near the end]" if status == "wrong" and _gold_near_end(r) else ""
            rec = _recorded(r)
            recorded = [f"score {rec:g}"] if rec is not None else []
            if isinstance(r.get("status"), str):  # written by a trainer/eval that records statuses
                recorded.append(f"status {r['status']}")
            log(f"- {_where(r)}{flag}" + (f"  (recorded {', '.join(recorded)})" if recorded else ""))
            log(f"  gold:      {_clip(r['answer'], 160)}")
            log(f"  extracted: {_clip(r['_answer'], 160)}")
            log(f"  end of completion: {_tail(r['completion'], max_chars)!r}")
    if changed and samples > 0:
        log(f"\n== recorded score differs: {min(samples, len(changed))} of {len(changed)}")
        for r in changed[:samples]:
            log(
                f"- {_where(r)}: recorded {_recorded(r):g}, now {r['_score']:g} ({r['_status']}); "
                f"gold {_clip(r['answer'], 80)!r}, extracted {_clip(r['_answer'], 80)!r}"
            )

    opinion_summary = None
    if second_opinion:
        opinion_summary = _second_opinion(
            rows,
            workers=workers,
            timeout_s=timeout_s,
            decimal_match=decimal_match,
            samples=samples,
            max_chars=max_chars,
            log=log,
        )

    if out:
        with open(out, "w") as f:
            for r in rows:
                record = {k: v for k, v in r.items() if not k.startswith("_") and k != "prompt"}
                record.update(
                    status=r["_status"],
                    extracted=r["_answer"],
                    rescored=r["_score"],
                    gold_near_end=(r["_status"] == "wrong" and _gold_near_end(r)),
                )
                if "_mv" in r:
                    record.update(math_verify=r["_mv"], strict=r["_strict"])
                f.write(json.dumps(record) + "\n")
        log(f"\nper-completion statuses: {out}")
    summary = {
        "file": str(file),
        "n": n,
        "skipped": skipped,
        "counts": dict(counts),
        "by_group": {k: dict(v) for k, v in by_group.items()},
        "changed": len(changed),
        "gold_near_end": len(near),
    }
    if opinion_summary is not None:
        summary["second_opinion"] = opinion_summary
    return summary


def _second_opinion(
    rows: list[dict], *, workers, timeout_s: float, decimal_match: str, samples: int, max_chars: int, log
) -> dict:
    """Re-score with plain math-verify and strict extraction; print and count the disagreements."""
    from conspo.rewards.second_opinion import second_opinions

    opinions = second_opinions(
        [r["completion"] for r in rows],
        [r["answer"] for r in rows],
        workers=workers,
        timeout_s=timeout_s,
        decimal_match=decimal_match,
    )
    fn, fp, d_mv, d_strict = [], [], 0, 0
    for r, o in zip(rows, opinions):
        r["_mv"], r["_strict"] = o.math_verify, o.strict
        rec = _recorded(r)
        base = (rec if rec is not None else r["_score"]) >= 0.5
        mv = None if o.math_verify is None else o.math_verify >= 0.5
        st = o.strict >= 0.5
        d_mv += mv is not None and mv != base
        d_strict += st != base
        if not base and (mv or st):
            fn.append(r)
        elif base and mv is False:
            fp.append(r)
    n = len(rows)
    log(
        f"\nsecond opinion (plain math-verify, LaTeX extraction; strict extraction) against the recorded reward "
        f"(this check's score where none was recorded), {n} completions:"
    )
    log(
        f"- plain math-verify disagrees on {d_mv} ({d_mv / n:.1%}); "
        f"strict extraction on {d_strict} ({d_strict / n:.1%})"
    )
    log(f"- false-negative candidates (recorded 0, a second opinion says 1): {len(fn)}")
    log(f"- false-positive candidates (recorded 1, plain math-verify says 0): {len(fp)}")
    for title, group in (("false-negative candidates", fn), ("false-positive candidates", fp)):
        if not group or samples <= 0:
            continue
        log(f"\n== {title}: {min(samples, len(group))} of {len(group)}")
        for r in group[:samples]:
            rec = _recorded(r)
            mv = "timeout/error" if r["_mv"] is None else f"{r['_mv']:g}"
            log(
                f"- {_where(r)}: recorded {'-' if rec is None else f'{rec:g}'}, now {r['_score']:g} ({r['_status']}), "
                f"math-verify {mv}, strict {r['_strict']:g}"
            )
            log(f"  gold:      {_clip(r['answer'], 160)}")
            log(f"  extracted: {_clip(r['_answer'], 160)}")
            log(f"  end of completion: {_tail(r['completion'], max_chars)!r}")
    return {
        "compared": n,
        "fn_candidates": len(fn),
        "fp_candidates": len(fp),
        "disagree_math_verify": d_mv,
        "disagree_strict": d_strict,
    }


def _run_config(file: Path) -> dict | None:
    """The config.yaml of the training run that wrote ``file`` (samples.jsonl), else None."""
    if file.name != "samples.jsonl" or not (file.parent / "config.yaml").is_file():
        return None
    import yaml

    with open(file.parent / "config.yaml") as f:
        return yaml.safe_load(f) or {}


def _samples_coverage(rows: list[dict], config: dict) -> str:
    """Which steps samples.jsonl holds, and the option that decides it."""
    steps = sorted({r["step"] for r in rows if isinstance(r.get("step"), int)})
    every, total = config.get("log_samples_every", 100), config.get("steps", 0)
    if not every:
        return "the run recorded no samples (--log-samples-every 0)"
    if total and total <= every:
        span = f"{steps[0]}..{steps[-1]}" if steps else "-"
        return f"every completion of steps {span} (a run no longer than --log-samples-every {every})"
    return (
        f"one group every {every} steps ({len(steps)} steps recorded); a run of at most --log-samples-every "
        "steps records every completion: pass --log-samples-every >= --steps for that"
    )


def audit_own_rewards(file: Path, config: dict, *, samples: int = 3, log=print) -> dict:
    """Re-score the run's samples with the run's own rewards (config.yaml: ``reward``, else the task's verifier)
    and compare each recorded score exactly. Returns {"file", "n", "rewards", "changed", "coverage"}."""
    from conspo.rewards import RewardSet
    from conspo.rewards.verifiers import chain_final_answer, exact_answer
    from conspo.tasks import load_rewards

    specs = list(config.get("reward") or [])
    funcs = load_rewards(specs) if specs else [{"addition": exact_answer, "chain": chain_final_answer}[config["task"]]]
    rewards = RewardSet(funcs, config.get("reward_weights") or None, errors="zero")
    rows = []
    with open(file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    coverage = _samples_coverage(rows, config)
    log(f"audit-rewards: {file} ({len(rows)} training samples; {coverage})")
    log("rewards: " + (", ".join(specs) if specs else f"the {config['task']} task's verifier ({rewards.names[0]})"))
    if not rows:
        log("nothing to audit")
        return {"file": str(file), "n": 0, "rewards": rewards.names, "changed": 0, "coverage": coverage}
    prompts = [r.get("reward_prompt", r.get("prompt")) for r in rows]
    completions = [
        [{"role": "assistant", "content": r["completion"]}] if isinstance(p, list) else r["completion"]
        for r, p in zip(rows, prompts)
    ]
    columns = [r.get("columns") or {"answer": r.get("answer")} for r in rows]
    scored = rewards.score(prompts, completions, columns)
    changed = []
    shaped = bool(config.get("overlong_buffer"))
    for i, r in enumerate(rows):
        now = {name: None if math.isnan(v[i]) else v[i] for name, v in zip(scored.names, scored.per_reward)}
        recorded = r.get("rewards")
        if recorded is None and not shaped and len(now) == 1:  # one reward, recorded as the reward trained on
            recorded = {scored.names[0]: r.get("reward")}
        if recorded is not None and any(recorded.get(name) != value for name, value in now.items()):
            changed.append((r, recorded, now))
    log(
        f"recorded scores the run's rewards do not reproduce exactly: {len(changed)} of {len(rows)}"
        + (
            " (the reward code or its inputs changed since the run, or a reward is not deterministic)"
            if changed
            else ""
        )
    )
    if shaped and not any("rewards" in r for r in rows):
        log(
            "(the recorded rewards include the overlong penalty: "
            "only rewards given with --reward are recorded unshaped)"
        )
    for r, recorded, now in changed[: max(samples, 0)]:
        log(
            f"- step {r.get('step', '?')}: recorded {recorded}, now {now}; "
            f"end of completion {_tail(r['completion'], 120)!r}"
        )
    return {"file": str(file), "n": len(rows), "rewards": scored.names, "changed": len(changed), "coverage": coverage}


def build_parser(prog: str = "conspo audit-rewards") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "path",
        metavar="RUN_OR_EVAL_DIR",
        help="a training run directory (samples.jsonl), a `conspo eval` output directory "
        "(completions.jsonl), or one of those files",
    )
    ap.add_argument("--samples", type=int, default=3, help="completions shown per status (default 3; 0: none)")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="strict extraction: a completion without an answer marker has no answer "
        "(default: lenient, the last math expression counts)",
    )
    ap.add_argument("--timeout", type=float, default=5.0, help="time limit per answer, seconds (default 5)")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="verification processes (default: the CPUs this process may use, at most 8; "
        "CONSPO_REWARD_WORKERS overrides)",
    )
    ap.add_argument("--benchmark", default=None, help="only this benchmark of an eval directory")
    ap.add_argument("--max-chars", type=int, default=300, help="characters of each completion's end to show")
    ap.add_argument("--seed", type=int, default=0, help="which completions are sampled")
    ap.add_argument("--out", default=None, help="write every completion with its status to this JSONL file")
    ap.add_argument(
        "--second-opinion",
        action="store_true",
        help="also re-score with plain math-verify and strict extraction and list where they disagree "
        "with the recorded reward, false-negative candidates first",
    )
    ap.add_argument(
        "--decimal-match",
        default="exact",
        metavar="exact|places:N|sig:N",
        help="the reward's decimal policy (default exact; see docs/rewards.md)",
    )
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        audit(
            args.path,
            strict=args.strict,
            timeout_s=args.timeout,
            workers=args.workers,
            samples=args.samples,
            benchmark=args.benchmark,
            seed=args.seed,
            max_chars=args.max_chars,
            out=args.out,
            second_opinion=args.second_opinion,
            decimal_match=args.decimal_match,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"audit-rewards: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
