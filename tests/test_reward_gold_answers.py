"""Every gold answer of every set in the shared data parses, or is matched by the text rule.

The text rule (conspo/rewards/math.py, ``gold_parses``): a gold answer math-verify cannot parse
is compared with the prediction as normalised text only (spaces ignored, words compared
case-insensitively), and a completion that does not match it that way gets the status
"gold_unparsable" rather than "wrong", so ``conspo audit-rewards`` shows it. Plain numbers are
checked by a regex (they always parse); everything else goes through math-verify in worker
processes with a time limit. The test prints, per set, how many gold answers do not parse, and
fails if a set has more than the documented count (MAX_UNPARSABLE; bench/VERIFY_RESULTS.md).

Data: ``$CONSPO_DATA_DIR`` or ../shared/data (skipped when absent).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conspo.rewards.math import gold_answer

DATA_DIR = Path(os.environ.get("CONSPO_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
#: Gold answers that math-verify does not parse, per set, as measured (listed in
#: bench/VERIFY_RESULTS.md): Minerva's "np.arcsin(10/13)", two answers with E_{1}/E_{2}, a
#: differential equation and an expression with \hbar; OlympiadBench's sentence-long answer and
#: "t(0,4]". Every other set: none.
MAX_UNPARSABLE = {"minerva_math/test.jsonl": 5, "olympiadbench/test.jsonl": 2}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _gold_files() -> list[Path]:
    if not DATA_DIR.is_dir():
        return []
    return sorted(p for p in DATA_DIR.glob("*/*.jsonl") if p.name != "original.jsonl")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_gold_answer_parses_or_matches_as_text():
    files = _gold_files()
    if not files:
        pytest.skip(f"no benchmark data under {DATA_DIR} (set CONSPO_DATA_DIR)")
    from conspo.rewards.pool import HardTimeoutPool

    report, too_many = [], []
    with HardTimeoutPool(
        "conspo.rewards.math:gold_parses", num_workers=min(2, os.cpu_count() or 1), timeout_s=20.0
    ) as pool:
        for path in files:
            name = f"{path.parent.name}/{path.name}"
            with open(path) as f:
                golds = [json.loads(line)["answer"] for line in f if line.strip()]
            assert all(isinstance(g, str) and g.strip() for g in golds), f"{name}: empty gold answer"
            # plain numbers need no parser (and are most of GSM8K); solutions are reduced to their answer
            rest = sorted({g for g in golds if not _NUMBER.fullmatch(gold_answer(g).strip())})
            outcomes = pool.run([(g,) for g in rest])
            bad = [g for g, o in zip(rest, outcomes) if not (o.status == "ok" and o.value)]
            solutions = sum(1 for g in golds if gold_answer(g) != g)
            report.append(
                f"{name}: {len(golds)} gold answers, {len(bad)} do not parse"
                + (f" (e.g. {', '.join(repr(b[:60]) for b in bad[:3])})" if bad else "")
                + (f"; {solutions} are worked solutions" if solutions else "")
            )
            if len(bad) > MAX_UNPARSABLE.get(name, 0):
                too_many.append(f"{name}: {len(bad)} > {MAX_UNPARSABLE.get(name, 0)}: {bad}")
    print("\n" + "\n".join(report))
    assert not too_many, "more gold answers fail to parse than documented:\n" + "\n".join(too_many)
