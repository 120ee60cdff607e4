"""Accuracy of the math reward on the development set, per family, next to plain math-verify.

The development set (bench/verify_dev/pairs.jsonl, described in bench/verify_dev/README.md)
holds hand-written (completion, gold) pairs labelled by their mathematical meaning
("equivalent": true/false) with a family tag. Each pair is scored by

  ours         conspo.rewards.MathVerifier() (the default: lenient extraction)
  ours-strict  MathVerifier(lenient=False) (no answer marker, no answer)
  math-verify  plain math-verify: verify(parse(gold), parse(completion)), default settings
  math-verify ($gold$)  the same with a plain gold answer wrapped in $...$ (its LaTeX extraction
               needs delimiters; without them it falls back to numbers and string equality)
  before       conspo.rewards at the revision before issue 11 (--baseline-rev), if git has it

and the report gives accuracy, false positives (scored 1, not equivalent) and false negatives
(scored 0, equivalent) per family, as a markdown table. Single process plus one verification
worker per scorer; about a minute on a shared 2-core machine.

    .venv/bin/python bench/verify_dev.py                 # table
    .venv/bin/python bench/verify_dev.py --show-errors   # and every pair a scorer gets wrong
    .venv/bin/python bench/verify_dev.py --decimal-policies exact,places:2,places:4,sig:2,sig:4
                                                         # and ours under each decimal_match setting
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify_baseline import DEFAULT_BASELINE_REV, load_baseline  # noqa: E402

from conspo.rewards import MathVerifier  # noqa: E402

PAIRS = Path(__file__).resolve().parent / "verify_dev" / "pairs.jsonl"


def plain_math_verify(completions: list[str], golds: list[str]) -> list[float]:
    """math-verify with its default settings (it uses its own signal timeouts: main thread only)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    out = []
    for c, g in zip(completions, golds):
        try:
            out.append(float(bool(verify(parse(g), parse(c)))))
        except Exception:  # noqa: BLE001 - a crash is a 0, as in a training loop
            out.append(0.0)
    return out


def dollar_gold(gold: str) -> str:
    """The gold wrapped in $...$ when it has no math delimiters (math-verify's LaTeX extraction
    needs them; graders that use math-verify usually wrap plain gold answers this way)."""
    if any(t in gold for t in ("$", "\\(", "\\[", "\\boxed")) or "\n" in gold.strip() or len(gold.split()) > 3:
        return gold
    return f"${gold}$"


def load_pairs(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=str(PAIRS))
    ap.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV, help="git revision for the 'before' column")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--show-errors", action="store_true", help="list every pair a scorer gets wrong")
    ap.add_argument(
        "--decimal-policies",
        default="",
        help="comma-separated decimal_match settings: also score ours under each (a table)",
    )
    args = ap.parse_args(argv)

    pairs = load_pairs(Path(args.pairs))
    completions = [p["completion"] for p in pairs]
    golds = [p["gold"] for p in pairs]
    labels = [1.0 if p["equivalent"] else 0.0 for p in pairs]

    scorers: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with MathVerifier(num_workers=1) as v:
        res = v.score(completions, golds)
        scorers["ours"] = res.scores
    seconds["ours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with MathVerifier(num_workers=1, lenient=False) as v:
        scorers["ours-strict"] = v.score(completions, golds).scores
    seconds["ours-strict"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorers["math-verify"] = plain_math_verify(completions, golds)
    seconds["math-verify"] = time.perf_counter() - t0
    scorers["math-verify ($gold$)"] = plain_math_verify(completions, [dollar_gold(g) for g in golds])
    baseline_note = ""
    if not args.no_baseline:
        mod, why = load_baseline(args.baseline_rev)
        if mod is None:
            baseline_note = f"(no 'before' column: {why})"
        else:
            t0 = time.perf_counter()
            with mod.MathVerifier(num_workers=1) as v:
                scorers["before"] = v.score(completions, golds).scores
            seconds["before"] = time.perf_counter() - t0

    families = list(dict.fromkeys(p["family"] for p in pairs))
    names = list(scorers)

    def stats(idx: list[int], name: str) -> tuple[int, int, int]:
        s = scorers[name]
        ok = sum(1 for i in idx if s[i] == labels[i])
        fp = sum(1 for i in idx if s[i] == 1.0 and labels[i] == 0.0)
        fn = sum(1 for i in idx if s[i] == 0.0 and labels[i] == 1.0)
        return ok, fp, fn

    n_eq = sum(1 for x in labels if x == 1.0)
    print(
        f"Development set: {len(pairs)} pairs ({n_eq} equivalent, {len(pairs) - n_eq} must differ), "
        f"{len(families)} families. {baseline_note}\n"
    )
    print("Accuracy (FP / FN) per family; FP = scored correct but not equivalent, FN = scored wrong but equivalent.\n")
    print("| family | pairs (equiv / differ) | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    rows = [(fam, [i for i, p in enumerate(pairs) if p["family"] == fam]) for fam in families]
    rows.append(("**all**", list(range(len(pairs)))))
    worse = []
    for fam, idx in rows:
        eq = sum(1 for i in idx if labels[i] == 1.0)
        cells = []
        for name in names:
            ok, fp, fn = stats(idx, name)
            cells.append(f"{ok / len(idx):.1%} ({fp} / {fn})")
        if any(stats(idx, "ours")[0] < stats(idx, mv)[0] for mv in ("math-verify", "math-verify ($gold$)")):
            worse.append(fam)
        print(f"| {fam} | {len(idx)} ({eq} / {len(idx) - eq}) | " + " | ".join(cells) + " |")
    ok, fp, fn = stats(list(range(len(pairs))), "ours")
    print(
        f"\nours: false positives {fp}/{len(pairs) - n_eq} must-differ pairs "
        f"({fp / max(1, len(pairs) - n_eq):.1%}), {fp / len(pairs):.1%} of all pairs; false negatives {fn}/{n_eq}."
    )
    print("families where ours is below plain math-verify: " + (", ".join(worse) if worse else "none"))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if args.decimal_policies:
        print("\nours under each decimal_match setting (all pairs; approximation family):\n")
        print("| decimal_match | all: accuracy (FP / FN) | approximation: accuracy (FP / FN) |")
        print("|---|---:|---:|")
        approx = [i for i, p in enumerate(pairs) if p["family"] == "approximation"]
        for policy in args.decimal_policies.split(","):
            with MathVerifier(num_workers=1, decimal_match=policy) as v:
                scorers[f"ours {policy}"] = v.score(completions, golds).scores
            cells = []
            for idx in (list(range(len(pairs))), approx):
                ok, fp, fn = stats(idx, f"ours {policy}")
                cells.append(f"{ok / len(idx):.1%} ({fp} / {fn})")
            print(f"| {policy} | " + " | ".join(cells) + " |")
        names = [n for n in names if not n.startswith("ours ")]
    if args.show_errors:
        for name in names:
            bad = [i for i in range(len(pairs)) if scorers[name][i] != labels[i]]
            print(f"\n### {name}: {len(bad)} wrong")
            for i in bad:
                p = pairs[i]
                kind = "FP" if labels[i] == 0.0 else "FN"
                print(f"- {kind} {p['id']}: {p['completion'][-110:]!r} vs gold {p['gold'][-70:]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
