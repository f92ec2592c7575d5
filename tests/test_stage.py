"""The stage driver: skip when done with the same inputs, rerun otherwise, record failures, and
let only the main process write the manifest."""

from pathlib import Path
from typing import Any

import pytest

from t3s.errors import T3SError
from t3s.rundir import RunDir
from t3s.stage import Attempt, Stage, execute


class Processes:
    """A stand-in for accelerate's PartialState: this process's rank and a counted barrier."""

    def __init__(self, main: bool = True) -> None:
        self.is_main_process, self.barriers = main, 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


class Count(Stage):
    """Writes `out.txt` holding its input; counts its runs; fails on demand."""

    name = "count"

    def __init__(self, value: str, fail: BaseException | None = None) -> None:
        self.value, self.fail, self.runs, self.attempts = value, fail, 0, []

    def fingerprint(self, run: RunDir) -> str:
        return f"fp-{self.value}"

    def outputs_exist(self, run: RunDir) -> bool:
        return (run.root / "out.txt").exists()

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        self.attempts.append(attempt)
        return {"value": self.value}

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        self.runs += 1
        if self.fail is not None:
            raise self.fail
        if attempt.main:
            (run.root / "out.txt").write_text(self.value)
        return {"summary": {"value": self.value}}


def test_done_with_the_same_fingerprint_is_skipped(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    stage = Count("a")
    first = execute(run, stage, Processes())
    assert stage.runs == 1 and stage.attempts[0].previous == {} and not stage.attempts[0].stale
    entry = run.stage("count")
    assert entry["status"] == "done" and entry["fingerprint"] == "fp-a" and entry["error"] is None
    assert entry["summary"] == {"value": "a"} and entry["value"] == "a" and entry["seconds"] >= 0
    assert first == entry  # what the run returns is what it recorded

    again = Count("a")
    assert execute(run, again, Processes()) == entry and again.runs == 0

    (tmp_path / "out.txt").unlink()  # done, but its outputs are gone: run again, not stale
    lost = Count("a")
    execute(run, lost, Processes())
    assert lost.runs == 1 and not lost.attempts[0].stale


def test_another_fingerprint_reruns_and_sees_the_stale_entry(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    execute(run, Count("a"), Processes())
    stage = Count("b")
    execute(run, stage, Processes())
    assert stage.runs == 1 and stage.attempts[0].stale
    assert stage.attempts[0].previous["fingerprint"] == "fp-a"
    assert run.stage("count")["fingerprint"] == "fp-b" and run.stage("count")["summary"] == {"value": "b"}


def test_an_exception_marks_the_stage_failed(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        execute(run, Count("a", fail=ValueError("boom")), Processes())
    assert run.stage("count")["status"] == "failed"
    assert run.stage("count")["error"] == "ValueError: boom"
    # A user-facing error is recorded as the one line it already is.
    with pytest.raises(T3SError):
        execute(run, Count("a", fail=T3SError("no masks for policy 't3s'")), Processes())
    assert run.stage("count")["error"] == "no masks for policy 't3s'"
    # A failed stage is never skipped, and resumes with the same inputs.
    stage = Count("a")
    execute(run, stage, Processes())
    assert stage.runs == 1 and not stage.attempts[0].stale and run.stage("count")["status"] == "done"


def test_only_the_main_process_writes_the_manifest(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    other = Processes(main=False)
    entry = execute(run, Count("a"), other)
    assert not run.manifest_path.exists() and not (tmp_path / "out.txt").exists()
    assert entry["status"] == "done" and entry["summary"] == {"value": "a"}
    assert other.barriers == 2  # after marking running, after marking done
    with pytest.raises(ValueError):
        execute(run, Count("a", fail=ValueError("boom")), other)
    assert not run.manifest_path.exists()


def test_an_unskippable_stage_runs_every_time(tmp_path: Path) -> None:
    class Always(Count):
        skippable = False

    run = RunDir(tmp_path)
    execute(run, Always("a"), Processes())
    stage = Always("a")
    execute(run, stage, Processes())
    assert stage.runs == 1 and not stage.attempts[0].stale
