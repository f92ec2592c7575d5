"""The resumable sample store: one JSON line per sample, appended durably as soon as it is made.

Evaluation, the probe and the teacher keep their samples this way. A file may hold several key
spaces: a row belongs to a store when its `space` fields match (a model and sampling parameters, a
teacher and its generation hash), and within it a sample's key is its `key` fields and its sample
index. Changing what the space covers (another model, other sampling parameters) starts a separate
key space in the same file; asking for more samples per prompt only tops prompts up. A later line
with the same key replaces an earlier one (a sample verified again); a torn last line, left by a
write that was killed, is ignored. The processes of a multi-process job each append to a file of
their own beside it (`partial_path`), which the main process merges into it (`merge_partials`).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.io import append_jsonl, append_jsonl_rows, read_jsonl

Key = tuple[Any, ...]


class SampleStore:
    """The rows of one key space of a JSONL file, by (key fields..., sample index), in file order."""

    def __init__(
        self,
        path: str | Path,
        space: dict[str, Any],
        key: tuple[str, ...] = ("id", "prompt"),
        *,
        append_to: str | Path | None = None,
    ) -> None:
        """`key` defaults to that of verified samples (`t3s.sampling`): problem id and prompt key.
        New rows go to `append_to` when given (a process's own file), else to `path`."""
        self.path = Path(path)
        self.append_to = Path(append_to) if append_to is not None else self.path
        self.space, self.key = space, key
        self.rows: dict[Key, dict[str, Any]] = {}
        try:
            rows = read_jsonl(self.path)
        except ValueError as exc:
            raise T3SError(f"{self.path}: a line is not valid JSON ({exc}); remove it or the file") from exc
        for row in rows:
            if all(row.get(k) == v for k, v in space.items()):
                self.rows[self._key(row)] = row

    def _key(self, row: dict[str, Any]) -> Key:
        return (*(row.get(k) for k in self.key), row.get("sample"))

    def add(self, row: dict[str, Any]) -> None:
        """Append `row` (its space fields included) durably and index it."""
        append_jsonl(self.append_to, row)
        self.rows[self._key(row)] = row


def partial_path(path: Path, process: int | str) -> Path:
    """The file process `process` of a multi-process job appends `path`'s new rows to."""
    return path.with_name(f"{path.stem}.process-{process}{path.suffix}")


def merge_partials(path: Path) -> None:
    """Append the rows of `path`'s partial files (of a finished or killed job) to it; remove them.

    A kill between the append and the removal repeats rows, which a store reads as one."""
    pattern = glob.escape(path.stem) + ".process-*" + glob.escape(path.suffix)
    for part in sorted(path.parent.glob(pattern)):
        append_jsonl_rows(path, read_jsonl(part))
        part.unlink()
