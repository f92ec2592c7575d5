"""The resumable sample store: one JSON line per sample, appended durably as soon as it is made.

Evaluation, the probe and the teacher keep their samples this way. A file may hold several key
spaces: a row belongs to a store when its `space` fields match (a model and sampling parameters, a
teacher and its generation hash), and within it a sample's key is its `key` fields and its sample
index. Changing what the space covers (another model, other sampling parameters) starts a separate
key space in the same file; asking for more samples per prompt only tops prompts up. A later line
with the same key replaces an earlier one (a sample verified again); a torn last line, left by a
write that was killed, is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.io import append_jsonl, read_jsonl

Key = tuple[Any, ...]


class SampleStore:
    """The rows of one key space of a JSONL file, by (key fields..., sample index), in file order."""

    def __init__(
        self, path: str | Path, space: dict[str, Any], key: tuple[str, ...] = ("id", "prompt")
    ) -> None:
        """`key` defaults to that of verified samples (`t3s.sampling`): problem id and prompt key."""
        self.path = Path(path)
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
        append_jsonl(self.path, row)
        self.rows[self._key(row)] = row
