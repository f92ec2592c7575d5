"""Progress bars for the long stages: count, rate and ETA, quiet when not on a terminal's main process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _is_main() -> bool:
    from t3s import distributed

    return bool(distributed.state().is_main_process)


class Bar:
    """One progress bar; `advance(n)` counts units (examples, tokens, samples).

    `also` counts a second quantity (e.g. tokens beside samples) whose rate is shown too.
    """

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, also: float = 0, **fields: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **fields)


# The display on screen: rich allows one live display, so a bar opened inside another joins it.
_live: list[Progress] = []


@contextlib.contextmanager
def bar(
    description: str, total: float | None, unit: str = "it", also_unit: str | None = None
) -> Iterator[Bar]:
    if not _is_main():
        yield Bar(None, None)
        return
    if _live:
        task = _live[-1].add_task(description, total=total, rate="")
        try:
            yield _RateBar(_live[-1], task, unit, also_unit)
        finally:
            _live[-1].remove_task(task)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")
        _live.append(progress)
        try:
            yield _RateBar(progress, task, unit, also_unit)
        finally:
            _live.pop()


class _RateBar(Bar):
    def __init__(self, progress: Progress, task: int, unit: str, also_unit: str | None = None) -> None:
        super().__init__(progress, task)
        self._unit, self._also_unit = unit, also_unit
        self._also, self._start = 0.0, time.monotonic()

    def advance(self, n: float = 1, also: float = 0, **fields: object) -> None:
        assert self._progress is not None and self._task is not None
        self._progress.update(self._task, advance=n, **fields)
        self._also += also
        # Task ids are not list positions once a nested bar's task has been removed.
        speed = next(t.speed for t in self._progress.tasks if t.id == self._task)
        if speed:
            rate = f"{speed:,.1f} {self._unit}/s"
            if self._also_unit and self._also:
                rate += f", {self._also / (time.monotonic() - self._start):,.0f} {self._also_unit}/s"
            self._progress.update(self._task, rate=rate)
