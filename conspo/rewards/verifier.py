"""The batch API: ``MathVerifier`` (hard per-answer time limits, from any thread) and ``math_reward``."""

from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from conspo.rewards.compare import (
    DECIMAL_MATCH_DEFAULT,
    check_answer,
    parse_decimal_match,
    warm_up,
)
from conspo.rewards.extract import extract_answer
from conspo.rewards.normalize import (
    fast_key,
    is_ambiguous,
    normalize_answer,
    normalize_gold,
    number_verdict,
)
from conspo.rewards.pool import HardTimeoutPool

__all__ = ["DEFAULT_TIMEOUT_S", "MAX_ANSWER_CHARS", "STATUSES", "MathVerifier", "VerifyResult", "math_reward"]

#: Default hard limit for the symbolic comparison of one answer, in seconds.
DEFAULT_TIMEOUT_S = 5.0
#: Extracted answers longer than this are not verified (score 0): no real final answer is this long.
MAX_ANSWER_CHARS = 4000
#: Why a completion scored what it did (``VerifyResult.statuses``). "error": the check raised or
#: its worker died (e.g. at the memory limit); rare, and also counted in ``VerifyResult.errors``.
#: "ambiguous": the answer has digits separated by spaces that are neither thousands groups nor a
#: spelled-out number (``\\boxed{3 4}`` against 7 or 34: see ``normalize_answer``); scored 0.
STATUSES = ("correct", "wrong", "no_answer", "ambiguous", "timeout", "gold_unparsable", "error")


@dataclass
class VerifyResult:
    """Scores of one batch and what happened while computing them.

    scores: 1.0 / 0.0 per completion, in input order.
    statuses: why, per completion: one of ``STATUSES`` ("correct", "wrong", "no_answer",
        "ambiguous", "timeout", "gold_unparsable", "error").
    answers: the extracted final answer per completion (None when there is none).
    timeouts: answers whose symbolic check ran past the limit (scored 0).
    errors: answers whose check raised or whose worker died (scored 0).
    no_answer: completions with no extractable final answer (scored 0; not an error).
    gold_unparsable: completions whose gold answer could not be parsed (and did not match as text).
    fast_path: answers decided without a worker (same normalised text, or two plain numbers).
    seconds: wall-clock time of the call.
    """

    scores: list[float]
    timeouts: int = 0
    errors: int = 0
    no_answer: int = 0
    fast_path: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    gold_unparsable: int = 0

    def status_counts(self) -> dict[str, int]:
        """Completions per status (every status in ``STATUSES``, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for s in self.statuses:
            counts[s] = counts.get(s, 0) + 1
        return counts

    def fraction(self, status: str) -> float:
        """Share of the batch with this status (0.0 for an empty batch)."""
        return self.statuses.count(status) / len(self.statuses) if self.statuses else 0.0


class MathVerifier:
    """Scores completions against gold answers with a hard per-answer time limit, from any thread.

    Args:
        num_workers: verification processes (default: ``conspo.rewards.pool.default_num_workers()``: this
            process's share of the CPUs it may use, at most 8; ``CONSPO_REWARD_WORKERS`` overrides). Started
            on first need: a batch decided entirely by the fast path starts none.
        timeout_s: hard limit for the symbolic comparison of one answer.
        lenient: extraction fallback to the last math expression / number when a completion has
            no answer marker (default True; False is the strict "no marker, no answer" rule;
            see ``extract_answer``).
        max_memory_mb: address-space limit per worker process (None: unlimited).
        cache_size: (prediction, gold) results kept across calls; repeated answers (common across
            the rollouts of a group) are verified once. 0 disables.
        decimal_match: when a decimal may stand for an exact gold: "exact" (default: math-verify's
            own comparison; a coarse ``3.1`` for pi scores 0), "places:N" or "sig:N"
            (``parse_decimal_match``). A bad value raises ValueError here.

    Use as a context manager or call ``close()``; ``score`` is thread-safe.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        lenient: bool = True,
        max_memory_mb: int | None = 4096,
        cache_size: int = 65536,
        decimal_match: str = DECIMAL_MATCH_DEFAULT,
    ):
        parse_decimal_match(decimal_match)  # fail here, not in a worker
        self.decimal_match = decimal_match.strip().lower()
        self.pool = HardTimeoutPool(
            check_answer,
            num_workers=num_workers,
            timeout_s=timeout_s,
            max_memory_mb=max_memory_mb,
            initializer=warm_up,
        )
        self.timeout_s = float(timeout_s)
        self.lenient = lenient
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers

    def score(
        self, completions: Sequence[str], golds: Sequence[str], *, timeout_s: float | None = None
    ) -> VerifyResult:
        """Score ``completions[i]`` against ``golds[i]`` for every i (1.0 equivalent, else 0.0)."""
        t0 = time.perf_counter()
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers")
        n = len(completions)
        scores = [0.0] * n
        statuses = ["wrong"] * n
        res = VerifyResult(scores=scores, statuses=statuses, answers=[None] * n)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            if isinstance(gold, (int, float)) and not isinstance(gold, bool):
                gold = str(gold)  # a numeric gold (27, 27.0) is its decimal text
            if not isinstance(gold, str) or not gold.strip():
                raise ValueError(f"gold answer {i} must be a non-empty string or a number, got {gold!r}")
            gold_norm, gold_key = normalize_gold(gold)
            pred = extract_answer(completion, lenient=self.lenient)
            res.answers[i] = pred
            if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
                statuses[i] = "no_answer"
                continue
            pred_norm = normalize_answer(pred)
            if is_ambiguous(pred_norm):
                statuses[i] = "ambiguous"
                continue
            if fast_key(pred_norm) == gold_key:
                scores[i], statuses[i] = 1.0, "correct"
                res.fast_path += 1
                continue
            verdict = number_verdict(pred_norm, gold_norm)
            if verdict is not None:
                scores[i], statuses[i] = float(verdict == "correct"), verdict
                res.fast_path += 1
                continue
            key = (pred_norm, gold_norm, self.decimal_match)
            cached = self._cache_get(key)
            if cached is not None:
                scores[i], statuses[i] = float(cached == "correct"), cached
                continue
            pending.setdefault(key, []).append(i)
        if pending:
            keys = list(pending)
            outcomes = self.pool.run(keys, timeout_s=timeout_s)
            for key, out in zip(keys, outcomes):
                idx = pending[key]
                if out.status == "ok":
                    status = out.value if out.value in STATUSES else "error"
                    self._cache_put(key, status)
                elif out.status == "timeout":
                    status = "timeout"
                else:
                    status = "error"
                    res.error_messages.append(str(out.value))
                for i in idx:
                    statuses[i] = status
                    scores[i] = 1.0 if status == "correct" else 0.0
        res.no_answer = statuses.count("no_answer")
        res.timeouts = statuses.count("timeout")
        res.errors = statuses.count("error")
        res.gold_unparsable = statuses.count("gold_unparsable")
        res.seconds = time.perf_counter() - t0
        return res

    def _cache_get(self, key):
        if self.cache_size <= 0:
            return None
        with self._cache_lock:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
            return v

    def _cache_put(self, key, value: str) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[key] = value
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self.pool.close()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: dict[str, MathVerifier] = {}
_DEFAULT_LOCK = threading.Lock()


def _default_verifier(decimal_match: str = DECIMAL_MATCH_DEFAULT) -> MathVerifier:
    parse_decimal_match(decimal_match)
    key = decimal_match.strip().lower()
    with _DEFAULT_LOCK:
        v = _DEFAULT.get(key)
        if v is None:
            v = _DEFAULT[key] = MathVerifier(num_workers=1, timeout_s=DEFAULT_TIMEOUT_S, decimal_match=key)
            atexit.register(v.close)
        return v


def math_reward(
    completion: str, gold: str, *, timeout_s: float | None = None, decimal_match: str = DECIMAL_MATCH_DEFAULT
) -> float:
    """1.0 if the final answer in ``completion`` is mathematically equivalent to ``gold``, else 0.0.

    Safe from any thread: the symbolic step runs in a shared one-worker ``MathVerifier`` with a
    hard time limit (``DEFAULT_TIMEOUT_S`` unless ``timeout_s`` is given). For batches, create a
    ``MathVerifier`` and call ``score``: it verifies in parallel and reports timeouts.
    ``decimal_match``: the decimal policy (``parse_decimal_match``).
    """
    return _default_verifier(decimal_match).score([completion], [gold], timeout_s=timeout_s).scores[0]
