"""The testbed's procedural task: sums of a few numbers, an exact verifier, and answer styles.

The student's own style adds left to right with running partial sums; each teacher writes the
same kind of `a + b = c` additions in its own words and order. Answers are short (20-40
tokens), so generation on a CPU stays cheap.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from t3s.verify import Verdict

Numbers = tuple[int, ...]


@dataclass(frozen=True)
class TaskSpec:
    """Problems: the sum of `count` numbers (a count drawn from `counts`), each in [low, high]."""

    counts: tuple[int, ...] = (3,)
    low: int = 10
    high: int = 99

    def draw(self, rng: random.Random) -> Numbers:
        return tuple(rng.randint(self.low, self.high) for _ in range(rng.choice(self.counts)))


def make_problems(spec: TaskSpec, n: int, seed: int, exclude: set[Numbers] = frozenset()) -> list[Numbers]:  # type: ignore[assignment]
    """`n` distinct problems, none of them in `exclude` (so held-out sets never meet training sets)."""
    rng = random.Random(seed)
    seen: set[Numbers] = set(exclude)
    out: list[Numbers] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from {spec}")
        numbers = spec.draw(rng)
        if numbers not in seen:
            seen.add(numbers)
            out.append(numbers)
    return out


def prompt(numbers: Numbers) -> str:
    return f"Q: {'+'.join(map(str, numbers))}=?\nA:"


_PROMPT = re.compile(r"Q: ([0-9+]+)=\?")


def parse_prompt(text: str) -> Numbers:
    match = _PROMPT.search(text)
    if not match:
        raise ValueError(f"not a testbed prompt: {text!r}")
    return tuple(int(x) for x in match.group(1).split("+"))


def problem_id(numbers: Numbers) -> str:
    return "s" + "-".join(map(str, numbers))


# -- answer styles ---------------------------------------------------------------------------------
def running(numbers: Numbers) -> str:
    """The student's own style: left to right, each partial sum carried into the next line."""
    total = numbers[0] + numbers[1]
    parts = [f" {numbers[0]} + {numbers[1]} = {total}."]
    for x in numbers[2:]:
        parts.append(f" Then {total} + {x} = {total + x}.")
        total += x
    return "".join(parts) + f" Answer: {total}"


def reverse(numbers: Numbers) -> str:
    """A teacher: the same additions from the last number backwards, in other words."""
    order = numbers[::-1]
    total = order[0] + order[1]
    parts = [f" Step 1: {order[0]} + {order[1]} = {total}."]
    for k, x in enumerate(order[2:], start=2):
        parts.append(f" Step {k}: {total} + {x} = {total + x}.")
        total += x
    return "".join(parts) + f" So the total is {total}. #### {total}"


def words(numbers: Numbers) -> str:
    """A third style, only mixed into stage 0 so the student is not bound to a single format."""
    total = numbers[0] + numbers[1]
    parts = [f" First, {numbers[0]} plus {numbers[1]} makes {total}."]
    for x in numbers[2:]:
        parts.append(f" Next, {total} plus {x} makes {total + x}.")
        total += x
    return "".join(parts) + f" The result is {total}."


def columns(numbers: Numbers) -> str:
    """A teacher whose procedure the student cannot follow: column addition with carries (a fresh start)."""
    digits = [list(map(int, str(n)[::-1])) for n in numbers]
    width = max(len(d) for d in digits)
    carry, out_digits, parts = 0, [], []
    for place, name in zip(range(width), ("Units", "Tens", "Hundreds", "Thousands"), strict=False):
        col = [d[place] for d in digits if place < len(d)]
        s = sum(col) + carry
        terms = "+".join(map(str, col)) + (f"+{carry}" if carry else "")
        parts.append(f" {name}: {terms}={s}, write {s % 10} carry {s // 10}.")
        out_digits.append(s % 10)
        carry = s // 10
    total = sum(numbers)
    return "".join(parts) + f" So the total is {total}. #### {total}"


STYLES: dict[str, Callable[[Numbers], str]] = {
    "running": running,
    "reverse": reverse,
    "columns": columns,
    "words": words,
}
STYLE_PREFIX = {"running": "", "reverse": " Step 1:", "columns": " Units:", "words": " First,"}


def style_of(completion: str) -> str:
    """Which style an answer is written in: running, reverse, columns, or other (hybrids included)."""
    text = completion.strip()
    if text.startswith("Step 1:"):
        return "reverse"
    if text.startswith("Units:"):
        return "columns"
    if text.startswith("First,"):
        return "words"
    if re.match(r"^\d+ \+ \d+ = \d+\.", text):
        return "running"
    return "other"


# -- verification ----------------------------------------------------------------------------------
_INT = re.compile(r"-?\d+")


def verify(gold: str, completion: str) -> Verdict:
    """Exact: the last integer of the answer must equal the gold sum."""
    found = _INT.findall(completion)
    if not found:
        return Verdict(False, None)
    return Verdict(found[-1] == gold.strip(), found[-1])


@dataclass(frozen=True)
class Split:
    """A set of problems written as prompt rows (for `t3s teacher`) or bench rows (for `t3s eval`)."""

    problems: Sequence[Numbers] = field(default_factory=list)

    def prompt_rows(self) -> list[dict[str, str]]:
        return [{"id": problem_id(p), "prompt": prompt(p), "answer": str(sum(p))} for p in self.problems]

    def bench_rows(self) -> list[dict[str, str]]:
        return [{"id": problem_id(p), "problem": prompt(p), "answer": str(sum(p))} for p in self.problems]

    def corpus_rows(self, style: str) -> list[dict[str, str]]:
        fn = STYLES[style]
        return [{**r, "response": fn(p)} for r, p in zip(self.prompt_rows(), self.problems, strict=True)]
