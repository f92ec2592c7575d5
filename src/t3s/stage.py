"""One shape for every stage: skip it when done with the same inputs, else run it and record how it went.

A stage is one command's work over a run directory (tokenize, probe, profile, select, train, rrt,
eval). `execute` keeps its books, the same way for all of them: it fingerprints the stage's inputs;
a stage done with that fingerprint whose outputs are on disk is skipped (its manifest entry is
returned); otherwise it is marked running, run on every process, and marked done with its seconds
and what it returned, or failed with the error. Only the main process writes the manifest, the
others wait at a barrier, so under `accelerate launch` or torchrun each process sees what the main
one wrote. What a stage resumes from within a run (probe checkpoints, profile shards, training
checkpoints) stays inside the stage. A stage whose work runs inside another loop (the probe driven
by a user's Trainer through `T3SCallback`) keeps the same books with `start` and `finish`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from t3s.errors import T3SError
from t3s.rundir import RunDir


class Processes(Protocol):
    """What the stages need of `accelerate.PartialState`: who is the main process, and a barrier."""

    @property
    def is_main_process(self) -> bool: ...

    def wait_for_everyone(self) -> None: ...


def processes() -> Processes:
    from t3s import distributed

    return distributed.state()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Attempt:
    """One run of a stage that was not skipped."""

    fingerprint: str
    previous: dict[str, Any]  # the stage's manifest entry before this run ({} if it never started)
    main: bool  # this is the main process: it writes what all processes share

    @property
    def stale(self) -> bool:
        """The stage was started before on other inputs: what it left is not this run's to resume."""
        return self.previous.get("fingerprint") not in (None, self.fingerprint)


class Stage(ABC):
    name: str  # its manifest entry: tokenize, probe, profile, select:<policy>, train:<policy>, ...
    # False for a stage that must run every time because its outputs are its cache (eval).
    skippable: bool = True

    @abstractmethod
    def fingerprint(self, run: RunDir) -> str:
        """A hash of every input that decides the outputs; called on every process."""

    def outputs_exist(self, run: RunDir) -> bool:
        return True

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        """Before the run, on every process: refuse what cannot resume, and (main process) remove what
        must not be resumed. Returns what to record with status `running`."""
        return {}

    @abstractmethod
    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        """The work, on every process; returns what to record with status `done` (e.g. `summary`)."""


def _error(exc: BaseException) -> str:
    # A T3SError is already the one line a user reads; anything else is named by its type.
    return (str(exc) if isinstance(exc, T3SError) else f"{type(exc).__name__}: {exc}")[:500]


@dataclass(frozen=True)
class Started:
    """A stage marked running: its attempt, the record written, and when it started."""

    attempt: Attempt
    running: dict[str, Any]
    start: float


def start(run: RunDir, stage: Stage, fingerprint: str, previous: dict[str, Any], procs: Processes) -> Started:
    """Prepare `stage` and mark it running (main process); every process leaves after the barrier."""
    attempt = Attempt(fingerprint, previous, procs.is_main_process)
    now = time.time()
    running = {
        "status": "running",
        "fingerprint": fingerprint,
        "started": time.ctime(now),
        **stage.prepare(run, attempt),
    }
    if attempt.main:
        run.set_stage(stage.name, **running)
    procs.wait_for_everyone()
    return Started(attempt, running, now)


def finish(
    run: RunDir, stage: Stage, started: Started, extras: dict[str, Any], procs: Processes
) -> dict[str, Any]:
    """Mark `stage` done with what its run returned; returns its manifest entry."""
    # A stage may report its own `seconds` (the probe counts from its first start, across resumes).
    done = {
        "status": "done",
        "finished": time.ctime(),
        "seconds": round(time.time() - started.start, 2),
        "error": None,
    }
    done.update(extras)
    if started.attempt.main:
        run.set_stage(stage.name, **done)
    procs.wait_for_everyone()
    return {**started.attempt.previous, **started.running, **done}


_announce: ContextVar[Callable[[str], None] | None] = ContextVar("t3s_announce", default=None)


@contextmanager
def announcing(say: Callable[[str], None]) -> Iterator[None]:
    """Within the block, `execute` calls `say(stage name)` on the main process before each stage,
    done or not: `t3s run`'s headings, for stages run through the API functions."""
    token = _announce.set(say)
    try:
        yield
    finally:
        _announce.reset(token)


def execute(run: RunDir, stage: Stage, procs: Processes | None = None) -> dict[str, Any]:
    """Run `stage` unless it is done with the same inputs; returns its manifest entry."""
    procs = procs or processes()
    say = _announce.get()
    if procs.is_main_process and say is not None:
        say(stage.name)
    fingerprint = stage.fingerprint(run)
    previous = run.stage(stage.name)
    if (
        stage.skippable
        and previous.get("status") == "done"
        and previous.get("fingerprint") == fingerprint
        and stage.outputs_exist(run)
    ):
        return previous
    started = start(run, stage, fingerprint, previous, procs)
    try:
        extras = stage.run(run, started.attempt)
    except BaseException as exc:
        if started.attempt.main:
            run.set_stage(stage.name, status="failed", error=_error(exc))
        raise
    return finish(run, stage, started, extras, procs)
