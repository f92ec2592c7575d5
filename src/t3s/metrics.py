"""Benchmark metrics over n samples per problem, with standard errors over problems.

- avg@n: the mean accuracy over the n samples (the paper's AIME protocol, 16 samples).
- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for c correct of
  n, the probability that k samples drawn without replacement include a correct one.
- maj@k: majority vote over the answers of the first k samples (samples are i.i.d., so the first
  k are as good a draw as any). Answers vote by group: the caller gives each sample's group, the
  verifier's equivalence class of its answer (so "0.5" and "\\frac{1}{2}" are one answer) or the
  answer string itself; a sample without an answer does not vote, ties go to the group seen
  first, and the vote is right when that group's first sample was verified correct. A problem
  with no answer at all scores 0.

Per-problem scores are averaged over problems; the standard error is the sample standard
deviation over problems divided by sqrt(#problems) (None for a single problem).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for `c` correct of `n` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"correct count {c} outside [0, {n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} outside [1, {n}]")
    # Python integers make the binomials exact; the one division rounds once.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def report_ks(n: int) -> list[int]:
    """The k reported for n samples: the powers of two up to n, and n itself."""
    if n < 1:
        raise ValueError(f"n = {n} must be at least 1")
    ks = [2**i for i in range(n.bit_length())]
    return ks if ks[-1] == n else [*ks, n]


def majority_vote(groups: Sequence[Hashable | None]) -> int | None:
    """Index of the first sample of the most frequent answer group (None: the sample does not vote)."""
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, group in enumerate(groups):
        if group is not None:
            counts[group] = counts.get(group, 0) + 1
            first.setdefault(group, i)
    if not counts:
        return None
    # max() keeps the first maximum; dict order is first occurrence, so ties go to the earliest.
    return first[max(counts, key=lambda a: counts[a])]


def problem_scores(correct: Sequence[bool], groups: Sequence[Hashable | None]) -> dict[str, float]:
    """avg@n, pass@k and maj@k of one problem's n samples (k from `report_ks(n)`); `groups` as voted."""
    n = len(correct)
    if n == 0 or len(groups) != n:
        raise ValueError(f"need as many answers as verdicts, at least one (got {n} and {len(groups)})")
    c = sum(bool(x) for x in correct)
    ks = report_ks(n)
    scores = {f"avg@{n}": c / n}
    scores.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks})
    for k in ks:
        winner = majority_vote(groups[:k])
        scores[f"maj@{k}"] = float(winner is not None and bool(correct[winner]))
    return scores


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(len))."""
    if not values:
        raise ValueError("no values")
    m = len(values)
    mean = sum(values) / m
    if m == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, math.sqrt(var / m)


def summarize(per_problem: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Each score's mean over problems and its standard error (as `<score>_stderr`)."""
    if not per_problem:
        raise ValueError("no problems")
    keys = list(per_problem[0])
    if any(list(p) != keys for p in per_problem):
        raise ValueError("every problem needs the same scores (the same number of samples)")
    out: dict[str, float | None] = {}
    for key in keys:
        out[key], out[f"{key}_stderr"] = mean_stderr([p[key] for p in per_problem])
    return out
