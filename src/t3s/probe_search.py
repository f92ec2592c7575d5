"""The adaptive bottleneck search: which checkpoints the probe measures, as a pure function of what it has.

The exhaustive probe measures every checkpoint of its grid (θ0, every `eval.every` steps, the final
step). The adaptive search measures θ0, then every `stride`-th grid checkpoint (the coarse grid) until
training accuracy has recovered: a checkpoint after the running minimum whose one-sided Wilson lower
bound (at `confidence`) exceeds θ0's accuracy plus `margin`. Then it refines: it measures the grid
neighbours of the running minimum until both are measured, so that θb is a local minimum at the
grid's resolution. `next_step` says what to measure next, `needed` which unmeasured checkpoints may
still be asked for (to keep on disk); the live probe and `benchmarks/probe_search.py`'s replay of
stored exhaustive runs share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field


class AdaptiveSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stride: int = Field(
        3, ge=1, description="adaptive search: measure every Nth checkpoint of the grid first"
    )
    margin: float = Field(
        0.0, ge=0, le=1, description="adaptive search: recovered = accuracy above θ0's by this much"
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1, description="adaptive search: one-sided confidence of the recovery's bound"
    )


@dataclass(frozen=True)
class Point:
    """A measured checkpoint: correct samples out of all samples of the training subset."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def wilson_lower(correct: int, total: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a binomial proportion."""
    z = NormalDist().inv_cdf(confidence)
    p = correct / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - spread) / (1 + z * z / total)


def running_min(measured: Mapping[int, Point]) -> int | None:
    """The measured step > 0 with the lowest accuracy, ties to the earliest (as `choose_bottleneck`)."""
    steps = [s for s in measured if s > 0]
    return min(steps, key=lambda s: (measured[s].accuracy, s)) if steps else None


def recovered_at(measured: Mapping[int, Point], settings: AdaptiveSearch) -> int | None:
    """The first measured step after the running minimum whose accuracy has surely recovered past θ0's."""
    low = running_min(measured)
    if low is None or 0 not in measured:
        return None
    bar = measured[0].accuracy + settings.margin
    return next(
        (
            s
            for s in sorted(measured)
            if s > low and wilson_lower(measured[s].correct, measured[s].total, settings.confidence) > bar
        ),
        None,
    )


def _coarse_next(grid: Sequence[int], measured: Mapping[int, Point], settings: AdaptiveSearch) -> int | None:
    """The next unmeasured coarse checkpoint, or None once the coarse phase is over."""
    if recovered_at(measured, settings) is not None:
        return None
    return next((s for s in grid[:: settings.stride] if s not in measured), None)


def _neighbours(grid: Sequence[int], step: int) -> list[int]:
    i = grid.index(step)
    return [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]


def next_step(
    grid: Sequence[int], measured: Mapping[int, Point], settings: AdaptiveSearch, available: int
) -> int | None:
    """The checkpoint to measure next among those trained (steps <= `available`); None: wait for
    training, or the search is done (`done`). `grid` is sorted and starts at 0 (θ0)."""
    if 0 not in measured:
        return 0
    coarse = _coarse_next(grid, measured, settings)
    if coarse is not None:
        return coarse if coarse <= available else None
    # Refining before the coarse phase ends could be wasted on a minimum a later checkpoint beats.
    low = running_min(measured)
    assert low is not None  # the coarse grid has a step > 0 (the grid's last step at worst)
    todo = [s for s in _neighbours(grid, low) if s not in measured]
    return todo[0] if todo and todo[0] <= available else None


def done(grid: Sequence[int], measured: Mapping[int, Point], settings: AdaptiveSearch) -> bool:
    """The search has found θb: the coarse phase is over and the minimum's neighbours are measured."""
    return next_step(grid, measured, settings, available=grid[-1]) is None


def needed(grid: Sequence[int], measured: Mapping[int, Point], settings: AdaptiveSearch) -> set[int]:
    """Unmeasured checkpoints the search may still ask for (a superset), to keep on disk.

    The minimum only moves to a newly measured checkpoint, lower than it: a later coarse one, or a
    neighbour of the minimum, so refinement never walks past the coarse checkpoints either side of
    where it started. Keep those within `stride` grid places of the minimum, and all past the last
    coarse checkpoint measured while the coarse phase lasts."""
    if done(grid, measured, settings):
        return set()
    unmeasured = {i for i, s in enumerate(grid) if s not in measured}
    keep: set[int] = set()
    if _coarse_next(grid, measured, settings) is not None:
        last = max((i for i in range(0, len(grid), settings.stride) if grid[i] in measured), default=0)
        keep |= {i for i in unmeasured if i > last}
    low = running_min(measured)
    if low is not None:
        at = grid.index(low)
        keep |= {i for i in unmeasured if abs(i - at) < settings.stride}
    return {grid[i] for i in keep}


@dataclass(frozen=True)
class Replay:
    """An adaptive search replayed over a stored exhaustive probe: the order it measured in, and θb."""

    order: list[int]
    bottleneck: int


def replay(grid: Sequence[int], points: Mapping[int, Point], settings: AdaptiveSearch) -> Replay:
    """Run the search over measurements already made (every grid step in `points`), all trained."""
    measured: dict[int, Point] = {}
    order = []
    while (step := next_step(grid, measured, settings, available=grid[-1])) is not None:
        measured[step] = points[step]
        order.append(step)
    low = running_min(measured)
    assert low is not None
    return Replay(order, low)
