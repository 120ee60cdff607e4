"""Recall and false accepts of the math reward on public, human-written worked solutions.

For each benchmark in ../shared/data (math500, minerva_math, olympiadbench, gsm8k) every row's
``solution`` field (the dataset's own worked solution; OlympiadBench stores a list of them, joined
here) is scored

* against its own ``answer``: recall (a worked solution that reaches the answer should score 1;
  some state it only in prose, or not at all, which caps what any grader can reach), and
* against another problem's answer (a fixed shuffle within the same benchmark; pairs whose two
  answers are equivalent are left out): false accepts (the target is 0).

Scorers: ours = ``MathVerifier(decimal_match=...)`` (lenient extraction, the reward's default);
math-verify = plain ``verify(parse(gold), parse(solution))`` with its default settings and a
plain gold wrapped in ``$...$`` (as in bench/verify_dev.py; the solutions are dataset text, not
model output). One verification worker; a few minutes on a shared 2-core machine.

    .venv/bin/python bench/verify_solutions.py                       # table
    .venv/bin/python bench/verify_solutions.py --show 5              # and examples of each failure
    .venv/bin/python bench/verify_solutions.py --decimal-match sig:2 --no-math-verify
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify_dev import dollar_gold, plain_math_verify  # noqa: E402

from conspo.rewards import MathVerifier  # noqa: E402

SETS = ("math500", "minerva_math", "olympiadbench", "gsm8k")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def solution_text(row: dict) -> str:
    """The worked solution of a row (OlympiadBench stores a Python-style list of strings)."""
    sol = row.get("solution") or ""
    if isinstance(sol, list):
        return "\n\n".join(map(str, sol))
    text = str(sol)
    if text.startswith("[") and text.endswith("]"):
        try:  # a literal list of strings: data, parsed as a literal only (nothing is evaluated)
            items = ast.literal_eval(text)
            if isinstance(items, list) and all(isinstance(x, str) for x in items):
                return "\n\n".join(items)
        except (ValueError, SyntaxError):
            pass
    return text


def load(data_dir: Path, name: str, limit: int) -> list[dict]:
    rows = []
    with open(data_dir / name / "test.jsonl") as f:
        for line in f:
            r = json.loads(line)
            sol = solution_text(r)
            if sol.strip() and str(r.get("answer", "")).strip():
                rows.append({"id": r.get("id"), "answer": str(r["answer"]), "solution": sol})
    return rows[:limit] if limit else rows


def shuffled_pairs(rows: list[dict], seed: int) -> list[int]:
    """index of the answer each solution is paired with: a derangement (never its own)."""
    n = len(rows)
    idx = list(range(n))
    rng = random.Random(seed)
    rng.shuffle(idx)
    return [idx[(idx.index(i) + 1) % n] for i in range(n)] if n > 1 else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each set (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the shuffle of answers")
    ap.add_argument("--decimal-match", default="exact")
    ap.add_argument("--no-math-verify", action="store_true", help="skip the plain math-verify columns")
    ap.add_argument("--show", type=int, default=0, help="examples of each kind of failure per set")
    args = ap.parse_args(argv)

    data_dir = Path(args.data_dir)
    table = []
    totals = {"n": 0, "pairs": 0, "ours_ok": 0, "ours_fa": 0, "mv_ok": 0, "mv_fa": 0}
    t_start = time.perf_counter()
    try:
        verifier = MathVerifier(num_workers=1, decimal_match=args.decimal_match)
    except TypeError:  # an older conspo (PYTHONPATH=<older checkout>): no decimal policy yet
        verifier = MathVerifier(num_workers=1)
        args.decimal_match = "(none: older code)"
    with verifier as v:
        for name in args.sets.split(","):
            rows = load(data_dir, name, args.limit)
            sols = [r["solution"] for r in rows]
            golds = [r["answer"] for r in rows]
            own = v.score(sols, golds)
            other_idx = shuffled_pairs(rows, args.seed)
            # leave out pairs whose two answers are the same answer (gsm8k repeats small numbers)
            same = v.score(
                [r"\boxed{" + golds[i] + "}" for i in range(len(rows))], [golds[j] for j in other_idx]
            ).scores
            keep = [i for i in range(len(rows)) if same[i] == 0.0 and golds[i].strip() != golds[other_idx[i]].strip()]
            shuffled = v.score([sols[i] for i in keep], [golds[other_idx[i]] for i in keep])
            row = {
                "set": name,
                "n": len(rows),
                "pairs": len(keep),
                "ours_ok": int(sum(own.scores)),
                "ours_fa": int(sum(shuffled.scores)),
            }
            if not args.no_math_verify:
                row["mv_ok"] = int(sum(plain_math_verify(sols, [dollar_gold(g) for g in golds])))
                mv_sh = plain_math_verify([sols[i] for i in keep], [dollar_gold(golds[other_idx[i]]) for i in keep])
                row["mv_fa"] = int(sum(mv_sh))
            table.append(row)
            for k in totals:
                totals[k] += row.get(k, 0)
            if args.show:
                misses = [i for i in range(len(rows)) if own.scores[i] == 0.0][: args.show]
                print(f"\n### {name}: misses (ours), {len(misses)} shown")
                for i in misses:
                    print(
                        f"- {rows[i]['id']}: gold {golds[i][:60]!r}, extracted {str(own.answers[i])[:60]!r} "
                        f"({own.statuses[i]}); end {sols[i][-120:]!r}"
                    )
                fas = [keep[j] for j, s in enumerate(shuffled.scores) if s == 1.0]
                print(f"### {name}: false accepts (ours), {len(fas)}")
                for i in fas:
                    print(
                        f"- {rows[i]['id']} vs answer of {rows[other_idx[i]]['id']} {golds[other_idx[i]][:60]!r}: "
                        f"extracted {sols[i][-120:]!r}"
                    )
    seconds = time.perf_counter() - t_start
    mv = not args.no_math_verify
    print(f"\nWorked solutions, decimal_match={args.decimal_match}, seed {args.seed}; {seconds:.0f} s in all.\n")
    head = (
        "| set | solutions | recall: ours |"
        + (" recall: math-verify |" if mv else "")
        + " shuffled pairs | false accepts: ours |"
        + (" false accepts: math-verify |" if mv else "")
    )
    print(head)
    print("|---|---:|---:|" + ("---:|" if mv else "") + "---:|---:|" + ("---:|" if mv else ""))
    for r in table + [dict(totals, set="**all**")]:
        cells = [r["set"], str(r["n"]), f"{r['ours_ok'] / max(r['n'], 1):.1%} ({r['ours_ok']})"]
        if mv:
            cells.append(f"{r['mv_ok'] / max(r['n'], 1):.1%} ({r['mv_ok']})")
        cells += [str(r["pairs"]), str(r["ours_fa"])]
        if mv:
            cells.append(str(r["mv_fa"]))
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
