"""The distillation corpus: schema, loading (JSONL, Parquet, HF datasets on disk) and validation.

A corpus row is `id`, `prompt` (a string or a list of chat messages), `response` (the teacher
trace), `answer` (the gold final answer) and an optional `teacher`. Every problem is reported as
`FILE:LINE` (JSONL) or `FILE row N` (Parquet, datasets), the field, and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.io import write_parquet

Prompt = str | list[dict[str, str]]
_ROLES = ("system", "user", "assistant")
_Row = TypeVar("_Row", "Example", "PromptItem")


@dataclass(frozen=True)
class Example:
    id: str
    prompt: Prompt
    response: str
    answer: str
    teacher: str | None = None


@dataclass(frozen=True)
class Problem:
    where: str
    field: str | None
    message: str

    def __str__(self) -> str:
        field = f" field '{self.field}':" if self.field else ""
        return f"{self.where}:{field} {self.message}"


# -- reading raw records -------------------------------------------------------------------------
def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | Problem]]:
    """Yield (location, record) pairs; a record that cannot be read is yielded as a Problem."""
    path = Path(path)
    if not path.exists():
        raise T3SError(f"{path}: no such file or directory")
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                where = f"{path}:{lineno}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, Problem(where, None, f"malformed JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(record, dict):
                    yield where, Problem(where, None, f"expected a JSON object, got {type(record).__name__}")
                    continue
                yield where, record
    elif path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise T3SError(f"{path}: not a readable Parquet file ({exc})") from exc
        for i, record in enumerate(table.to_pylist()):
            yield f"{path} row {i}", record
    elif _is_hf_dataset_dir(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds and len(ds) != 1:
                raise T3SError(
                    f"{path}: a DatasetDict with splits {list(ds)}; save one split or a 'train' split"
                )
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        for i, record in enumerate(ds):
            yield f"{path} row {i}", dict(record)
    else:
        raise T3SError(
            f"{path}: unknown corpus format (expected .jsonl, .parquet or a directory saved with datasets' save_to_disk)"
        )


# -- field checks --------------------------------------------------------------------------------
def _text_field(record: dict[str, Any], name: str, where: str, *, numbers: bool = False) -> str | Problem:
    if name not in record or record[name] is None:
        return Problem(where, name, "missing")
    value = record[name]
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return Problem(where, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        return Problem(where, name, "empty")
    return value


def _prompt_field(record: dict[str, Any], where: str, name: str = "prompt") -> Prompt | Problem:
    value = record.get(name)
    if isinstance(value, list):
        if not value:
            return Problem(where, name, "empty message list")
        for j, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                return Problem(where, name, f"message {j} is not an object with a string 'role'")
            if msg["role"] not in _ROLES:
                return Problem(where, name, f"message {j} has unknown role {msg['role']!r}")
            if not isinstance(msg.get("content"), str):
                return Problem(where, name, f"message {j} has no string 'content'")
        if value[-1]["role"] != "user":
            return Problem(where, name, "the last prompt message must have role 'user'")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return _text_field(record, name, where)


def parse_example(record: dict[str, Any], where: str) -> Example | Problem:
    fields: dict[str, Any] = {
        "id": _text_field(record, "id", where, numbers=True),
        "prompt": _prompt_field(record, where),
        "response": _text_field(record, "response", where),
        "answer": _text_field(record, "answer", where, numbers=True),
    }
    teacher = record.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        fields["teacher"] = Problem(where, "teacher", f"expected a string, got {type(teacher).__name__}")
    else:
        fields["teacher"] = teacher
    for value in fields.values():
        if isinstance(value, Problem):
            return value
    return Example(**fields)


def _decode_stored_prompt(record: dict[str, Any]) -> dict[str, Any]:
    """Our own corpus.parquet stores message-list prompts as JSON text beside `prompt_format`."""
    if record.get("prompt_format") == "messages" and isinstance(record.get("prompt"), str):
        record = {**record, "prompt": json.loads(record["prompt"])}
    return record


def _scan(
    path: str | Path, parse: Callable[[dict[str, Any], str], _Row | Problem]
) -> tuple[list[_Row], list[Problem]]:
    """Read and check every row with `parse`; return the good rows and every problem found."""
    rows: list[_Row] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for where, record in read_records(path):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        parsed = parse(_decode_stored_prompt(record), where)
        if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
        if parsed.id in seen:
            problems.append(Problem(where, "id", f"duplicate id {parsed.id!r} (first at {seen[parsed.id]})"))
            continue
        seen[parsed.id] = where
        rows.append(parsed)
    if not rows and not problems:
        problems.append(Problem(str(path), None, "no rows"))
    return rows, problems


def scan_corpus(path: str | Path) -> tuple[list[Example], list[Problem]]:
    """Read and check every row; return the good examples and every problem found."""
    return _scan(path, parse_example)


def load_corpus(path: str | Path) -> list[Example]:
    """Load a corpus, failing on the first problem with a one-line error."""
    examples, problems = scan_corpus(path)
    if problems:
        more = f" (and {len(problems) - 1} more problems; run `t3s validate`)" if len(problems) > 1 else ""
        raise T3SError(f"{problems[0]}{more}")
    return examples


# -- prompts with gold answers (no response yet): the input of teacher sampling -------------------
@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: Prompt
    answer: str


def parse_prompt_item(record: dict[str, Any], where: str) -> PromptItem | Problem:
    fields = {
        "id": _text_field(record, "id", where, numbers=True),
        "prompt": _prompt_field(record, where),
        "answer": _text_field(record, "answer", where, numbers=True),
    }
    for value in fields.values():
        if isinstance(value, Problem):
            return value
    return PromptItem(**fields)  # type: ignore[arg-type]


def load_prompts(path: str | Path) -> list[PromptItem]:
    """Load `id`, `prompt`, `answer` rows (other fields are ignored), failing on the first problem."""
    items, problems = _scan(path, parse_prompt_item)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise T3SError(f"{problems[0]}{more}")
    return items


def corpus_fingerprint(examples: Sequence[Example]) -> str:
    return digest([[e.id, e.prompt, e.response, e.answer, e.teacher] for e in examples])


def corpus_table(examples: Sequence[Example]) -> pa.Table:
    return pa.table(
        {
            "id": [e.id for e in examples],
            "prompt": [e.prompt if isinstance(e.prompt, str) else json.dumps(e.prompt) for e in examples],
            "prompt_format": ["text" if isinstance(e.prompt, str) else "messages" for e in examples],
            "response": [e.response for e in examples],
            "answer": [e.answer for e in examples],
            "teacher": pa.array([e.teacher for e in examples], type=pa.string()),
        }
    )


def write_corpus(path: str | Path, examples: Sequence[Example]) -> None:
    """Write a corpus as Parquet (our run directories) or JSONL (by the file suffix), atomically."""
    path = Path(path)
    if path.suffix == ".jsonl":
        from t3s.io import write_jsonl

        rows = [
            {"id": e.id, "prompt": e.prompt, "response": e.response, "answer": e.answer}
            | ({"teacher": e.teacher} if e.teacher is not None else {})
            for e in examples
        ]
        write_jsonl(path, rows)
    else:
        write_parquet(path, corpus_table(examples))
