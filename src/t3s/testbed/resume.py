"""Resumable testbed training runs: where a killed run picks up, and the training time across resumes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.io import write_json

SECONDS = "t3s-train-seconds.json"  # in each checkpoint: the training seconds spent up to it


def resume_point(trainer_dir: Path) -> Path | None:
    """The latest checkpoint in `trainer_dir` that a run can resume from (a half-written one is removed)."""
    from t3s.training import list_checkpoints, remove_incomplete_checkpoints

    remove_incomplete_checkpoints(trainer_dir)
    return (list_checkpoints(trainer_dir, resumable=True) or [None])[-1]


def train_seconds_so_far(checkpoint: Path | None) -> float:
    if checkpoint is None:
        return 0.0
    path = checkpoint / SECONDS
    if not path.exists():
        raise T3SError(f"{path}: missing, so the resumed run's training time is unknown")
    return float(json.loads(path.read_text())["seconds"])


def wall_clock(before: float) -> Any:
    """A callback that writes the training seconds (`before` this run's start, plus its own) into each checkpoint."""
    from transformers import TrainerCallback

    begin = time.time()

    class WallClock(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(checkpoint / SECONDS, {"seconds": before + time.time() - begin})
            return control

    return WallClock()
