import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus, scan_corpus, write_corpus
from t3s.errors import T3SError


def test_loads_jsonl_parquet_and_saved_dataset_alike(tmp_path: Path) -> None:
    import datasets

    rows = arithmetic_rows(5) + arithmetic_rows(2, seed=1, messages=True)
    for i, r in enumerate(rows):
        r["id"] = f"x{i}"
    jsonl = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows))
    plain = [r for r in rows if isinstance(r["prompt"], str)]
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "c.parquet")
    datasets.Dataset.from_list(plain).save_to_disk(str(tmp_path / "ds"))
    assert [e.id for e in jsonl] == [f"x{i}" for i in range(7)]
    assert jsonl[-1].prompt == rows[-1]["prompt"]
    assert load_corpus(tmp_path / "c.parquet") == jsonl[:5]
    assert load_corpus(tmp_path / "ds") == jsonl[:5]


def test_our_parquet_round_trips_message_prompts(tmp_path: Path) -> None:
    examples = load_corpus(write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(3, messages=True)))
    write_corpus(tmp_path / "corpus.parquet", examples)
    assert load_corpus(tmp_path / "corpus.parquet") == examples


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "a", "prompt": "p", "response": "r", "answer": "1"', "c.jsonl:2: malformed JSON"),
        ('{"id": "a", "prompt": "p", "answer": "1"}', "c.jsonl:2: field 'response': missing"),
        ('{"id": "a", "prompt": "  ", "response": "r", "answer": "1"}', "c.jsonl:2: field 'prompt': empty"),
        (
            '{"id": "a", "prompt": "p", "response": ["r"], "answer": "1"}',
            "field 'response': expected a string, got list",
        ),
        ('{"id": "a", "prompt": "p", "response": "r", "answer": null}', "field 'answer': missing"),
        (
            '{"id": "p0", "prompt": "p", "response": "r", "answer": "1"}',
            "field 'id': duplicate id 'p0' (first at",
        ),
        (
            '{"id": "a", "prompt": [{"role": "user"}], "response": "r", "answer": "1"}',
            "message 0 has no string 'content'",
        ),
        (
            '{"id": "a", "prompt": [{"role": "assistant", "content": "x"}], "response": "r", "answer": "1"}',
            "the last prompt message must have role 'user'",
        ),
        ("[1, 2]", "c.jsonl:2: expected a JSON object, got list"),
        (
            '{"id": "a", "prompt": "p", "response": "r", "answer": "1", "teacher": 3}',
            "field 'teacher': expected a string",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(arithmetic_rows(1)[0]) + "\n" + line + "\n")
    with pytest.raises(T3SError) as err:
        load_corpus(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_scan_reports_every_problem_and_keeps_good_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = arithmetic_rows(4)
    rows[1]["answer"] = ""
    del rows[3]["prompt"]
    write_jsonl(path, rows)
    examples, problems = scan_corpus(path)
    assert [e.id for e in examples] == ["p0", "p2"]
    assert [str(p) for p in problems] == [
        f"{path}:2: field 'answer': empty",
        f"{path}:4: field 'prompt': missing",
    ]


def test_numeric_ids_and_answers_become_strings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": 7, "prompt": "p", "response": "r", "answer": 42}])
    (ex,) = load_corpus(path)
    assert (ex.id, ex.answer) == ("7", "42")


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(T3SError, match="no such file"):
        load_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("id\n")
    with pytest.raises(T3SError, match="unknown corpus format"):
        load_corpus(tmp_path / "c.csv")
