"""Answer verification: math-verify by default, any `module:function` for other domains.

Verifiers run in a pool of worker processes with a per-answer time limit: math-verify's own
timeouts rely on `signal.alarm`, which works only in a process's main thread, and a pathological
answer must not hang or crash a whole probe or evaluation. A verdict whose verifier raised or
timed out carries the error; callers count those apart from wrong answers.

The same pool groups the extracted answers of one problem for maj@k: math-verify groups answers
it finds equal ("0.5", "\\frac{1}{2}", "x = 1/2"); a custom verifier groups by its `equivalent`
attribute, an `(answer, answer) -> bool` function, if it has one, else by exact string.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.pool import Pool
from typing import Any

from t3s.imports import import_callable


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    error: str | None = None


VerifyFn = Callable[[str, str], Verdict]
EquivalentFn = Callable[[str, str], bool]


@dataclass(frozen=True)
class Grouping:
    """Each sample's answer group (None: no answer); `error` when grouping failed and fell back to exact."""

    groups: tuple[int | None, ...]
    error: str | None = None


def math_verify(gold: str, completion: str) -> Verdict:
    """Parse the gold answer and the completion's final answer (last \\boxed{} first) and compare."""
    from math_verify import parse, verify

    gold_parsed = parse(gold)
    if not gold_parsed:
        return Verdict(False, None, f"gold answer {gold!r} cannot be parsed")
    pred = parse(completion)
    if not pred:
        return Verdict(False, None)
    return Verdict(bool(verify(gold_parsed, pred)), str(pred[-1]))


@lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    # An extracted answer is bare LaTeX ("x = \\frac{1}{2}", "(1,2)"): delimiters make the LaTeX
    # extractor read all of it, where a bare parse would keep only a trailing number or nothing.
    return tuple(parse(f"${answer}$") or parse(answer))


def math_equivalent(a: str, b: str) -> bool:
    """Whether math-verify finds two extracted answers equal, taking either one as the reference.

    `verify` is asymmetric (the gold's format decides how assignments and relations are read);
    two answers are one vote if either accepts the other.
    """
    from math_verify import verify

    pa, pb = _parse_answer(a), _parse_answer(b)
    return bool(pa and pb and (verify(list(pa), list(pb)) or verify(list(pb), list(pa))))


def equivalence_of(fn: VerifyFn) -> EquivalentFn | None:
    """How answers of `fn` are grouped for maj@k: None means by exact string."""
    if fn is math_verify:
        return math_equivalent
    equivalent = getattr(fn, "equivalent", None)
    return equivalent if callable(equivalent) else None


def group_answers(equivalent: EquivalentFn | None, answers: Sequence[str | None]) -> Grouping:
    """Each answer joins the first group whose first answer is equivalent to it, else opens a group.

    Groups are numbered in order of first appearance, so the groups of a prefix of the answers
    are those the prefix alone would get (maj@k votes over the first k samples).
    """
    firsts: list[str] = []
    groups: list[int | None] = []
    try:
        for answer in answers:
            if answer is None:
                groups.append(None)
                continue
            g = next(
                (
                    g
                    for g, first in enumerate(firsts)
                    if answer == first or (equivalent is not None and equivalent(first, answer))
                ),
                None,
            )
            if g is None:
                firsts.append(answer)
                g = len(firsts) - 1
            groups.append(g)
    except Exception as exc:  # like a verdict: the problem is marked, its vote falls back to exact strings
        return Grouping(group_answers(None, answers).groups, _error(exc))
    return Grouping(tuple(groups))


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def load_verifier(spec: str | None) -> VerifyFn:
    """`None` or 'math' gives math-verify; 'package.module:function' a custom (gold, completion) -> Verdict."""
    if spec in (None, "math"):
        return math_verify
    return import_callable(spec, f"verifier {spec!r}")


def _call(fn: VerifyFn, gold: str, completion: str) -> Verdict:
    try:
        out = fn(gold, completion)
    except Exception as exc:  # a verifier bug on one answer marks that answer, not the run
        return Verdict(False, None, _error(exc))
    if isinstance(out, Verdict):
        return out
    if isinstance(out, bool):
        return Verdict(out, None)
    correct, extracted = out
    return Verdict(bool(correct), None if extracted is None else str(extracted))


class VerifierPool:
    """Verify many (gold, completion) pairs in worker processes, each answer within `timeout` s."""

    def __init__(self, fn: VerifyFn = math_verify, workers: int | None = None, timeout: float = 10.0) -> None:
        self.fn = fn
        self.equivalent = equivalence_of(fn)
        # How maj@k grouped the answers, as summaries record it.
        if self.equivalent is None:
            self.grouping = "exact"
        elif self.equivalent is math_equivalent:
            self.grouping = "math-verify"
        else:
            self.grouping = f"{self.equivalent.__module__}:{self.equivalent.__qualname__}"
        self.workers = workers or max(1, min(4, len(os.sched_getaffinity(0))))
        self.timeout = timeout
        self._pool: Pool | None = None
        atexit.register(self.close)

    def _get_pool(self) -> Pool:
        if self._pool is None:
            # spawn: forking a process that holds torch threads can deadlock.
            self._pool = mp.get_context("spawn").Pool(self.workers)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _map(
        self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], limits: Sequence[float]
    ) -> list[Any]:
        """`fn(*a)` for each of `args` in the workers; None where one ran past its limit in seconds."""
        out: list[Any] = [None] * len(args)
        todo = list(range(len(args)))
        while todo:
            pool = self._get_pool()
            jobs: list[tuple[int, Any]] = [(i, pool.apply_async(fn, args[i])) for i in todo]
            todo = []
            # Results are awaited in submission order, so the first one that times out is itself
            # stuck, not queued behind a stuck answer; the pool is replaced and the rest resubmitted.
            for pos, (i, job) in enumerate(jobs):
                try:
                    out[i] = job.get(timeout=limits[i])
                except mp.TimeoutError:
                    self.close()
                    todo = [j for j, _ in jobs[pos + 1 :]]
                    break
        return out

    def verify(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        got = self._map(_call, [(self.fn, *pair) for pair in pairs], [self.timeout] * len(pairs))
        return [
            v if v is not None else Verdict(False, None, f"timeout after {self.timeout:g} s") for v in got
        ]

    def group_answers(self, problems: Sequence[Sequence[str | None]]) -> list[Grouping]:
        """Each problem's answers grouped by the verifier's equivalence, `timeout` s per answer."""
        if self.equivalent is None:  # exact strings: nothing to run in a worker
            return [group_answers(None, answers) for answers in problems]
        limits = [self.timeout * max(1, sum(a is not None for a in answers)) for answers in problems]
        got = self._map(group_answers, [(self.equivalent, answers) for answers in problems], limits)
        return [
            g
            if g is not None
            else Grouping(group_answers(None, answers).groups, f"timeout after {limit:g} s")
            for g, answers, limit in zip(got, problems, limits, strict=True)
        ]
