"""Progress bars for the long stages: count, rate and ETA, quiet when not on a terminal's main process."""

from __future__ import annotations

import contextlib
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
    from accelerate import PartialState

    return PartialState().is_main_process


class Bar:
    """One progress bar; `advance(n)` counts units (examples, tokens, samples)."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextlib.contextmanager
def bar(description: str, total: float | None, unit: str = "it") -> Iterator[Bar]:
    if not _is_main():
        yield Bar(None, None)
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
        wrapper = _RateBar(progress, task, unit)
        yield wrapper


class _RateBar(Bar):
    def __init__(self, progress: Progress, task: int, unit: str) -> None:
        super().__init__(progress, task)
        self._unit = unit

    def advance(self, n: float = 1, **fields: object) -> None:
        assert self._progress is not None and self._task is not None
        self._progress.update(self._task, advance=n, **fields)
        speed = self._progress.tasks[self._task].speed
        if speed:
            self._progress.update(self._task, rate=f"{speed:,.1f} {self._unit}/s")
