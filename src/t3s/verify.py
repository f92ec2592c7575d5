"""Answer verification: math-verify by default, any `module:function` for other domains.

Verifiers run in a pool of worker processes with a per-answer time limit: math-verify's own
timeouts rely on `signal.alarm`, which works only in a process's main thread, and a pathological
answer must not hang or crash a whole probe or evaluation.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Any

from t3s.imports import import_callable


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    error: str | None = None


VerifyFn = Callable[[str, str], Verdict]


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


def load_verifier(spec: str | None) -> VerifyFn:
    """`None` or 'math' gives math-verify; 'package.module:function' a custom (gold, completion) -> Verdict."""
    if spec in (None, "math"):
        return math_verify
    return import_callable(spec, f"verifier {spec!r}")


def _call(fn: VerifyFn, gold: str, completion: str) -> Verdict:
    try:
        out = fn(gold, completion)
    except Exception as exc:  # a verifier bug on one answer marks that answer, not the run
        return Verdict(False, None, f"{type(exc).__name__}: {exc}"[:200])
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

    def verify(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))
        while todo:
            pool = self._get_pool()
            jobs: list[tuple[int, Any]] = [(i, pool.apply_async(_call, (self.fn, *pairs[i]))) for i in todo]
            todo = []
            # Results are awaited in submission order, so the first one that times out is itself
            # stuck, not queued behind a stuck answer; the pool is replaced and the rest resubmitted.
            for pos, (i, job) in enumerate(jobs):
                try:
                    out[i] = job.get(timeout=self.timeout)
                except mp.TimeoutError:
                    out[i] = Verdict(False, None, f"timeout after {self.timeout:g} s")
                    self.close()
                    todo = [j for j, _ in jobs[pos + 1 :]]
                    break
        return [v for v in out if v is not None]
