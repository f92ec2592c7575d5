"""`t3s mix`: debiased teacher mixing over hand-made `RUN/masks/<policy>/` directories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from t3s.cli import app
from t3s.errors import T3SError
from t3s.mixing import mix_masks, parse_source
from t3s.selection import MASKS_SCHEMA
from test_teacher import cli, subprocess_env


def mask_rows(prefix: str, lengths: list[int]) -> list[dict]:
    """Rows with a 2-token prompt; the response's odd positions are trained."""
    rows = []
    for i, n in enumerate(lengths):
        mask = [0, 0] + [t % 2 for t in range(n - 2)]
        ids = list(range(100 + i, 100 + i + n))
        rows.append(
            {
                "id": f"{prefix}{i}",
                "input_ids": ids,
                "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)],
                "loss_mask": mask,
                "response_start": 2,
                "response_end": n,
            }
        )
    return rows


def make_run(
    root: Path,
    tokenizer: str | None = "tok-a",
    rows: list[dict] | None = None,
    *,
    policy: str = "t3s",
    schema: pa.Schema = MASKS_SCHEMA,
) -> Path:
    root.mkdir(parents=True)
    fingerprints = {"tokenizer": tokenizer} if tokenizer else {}
    (root / "manifest.json").write_text(json.dumps({"fingerprints": {"data": "d", **fingerprints}}))
    masks = root / "masks" / policy
    masks.mkdir(parents=True)
    rows = mask_rows("ex", [5, 6]) if rows is None else rows
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), masks / "data.parquet")
    stats = {"policy": policy, "kept_fraction": 0.8, "per_example": [{"id": "ex0"}]}
    (masks / "stats.json").write_text(json.dumps(stats))
    return root


def test_mix_concatenates_prefixes_ids_and_counts_per_source(tmp_path: Path) -> None:
    # input_ids written as int64 by some other tool are cast to the masked-dataset schema.
    wide = pa.schema(
        [f if f.name != "input_ids" else pa.field("input_ids", pa.list_(pa.int64())) for f in MASKS_SCHEMA]
    )
    r1 = make_run(tmp_path / "r1", rows=mask_rows("ex", [5, 6]))
    qwq = make_run(tmp_path / "runs" / "qwq-run", rows=mask_rows("ex", [4, 7, 8]), schema=wide)
    out = tmp_path / "mixed"
    stats = mix_masks([parse_source(str(r1)), parse_source(f"qwq={qwq}")], "t3s", out)

    table = pq.read_table(out / "data.parquet")
    assert table.schema.equals(MASKS_SCHEMA)
    assert table["id"].to_pylist() == ["r1/ex0", "r1/ex1", "qwq/ex0", "qwq/ex1", "qwq/ex2"]
    assert table["input_ids"].to_pylist()[2] == [100, 101, 102, 103]
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert ds.to_list() == table.to_pylist()
    # Trained tokens: the odd positions of each response (3 and 4 -> 1 and 2; 2, 5 and 6 -> 1, 2, 3).
    assert [(s["name"], s["examples"], s["kept_tokens"], s["response_tokens"]) for s in stats["sources"]] == [
        ("r1", 2, 3, 7),
        ("qwq", 3, 6, 13),
    ]
    assert stats["examples"] == 5 and stats["kept_tokens"] == 9 and stats["kept_fraction"] == 9 / 20
    assert stats["tokenizer"] == "tok-a"
    assert stats["sources"][1]["stats"] == {"policy": "t3s", "kept_fraction": 0.8}  # per_example left out
    assert json.loads((out / "stats.json").read_text()) == stats


def test_mix_refuses_a_run_with_another_tokenizer(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    c = make_run(tmp_path / "c", tokenizer="tok-other")
    with pytest.raises(T3SError) as err:
        mix_masks([parse_source(str(r)) for r in (a, b, c)], "t3s", tmp_path / "out")
    assert str(err.value).startswith(
        f"run {c} used another tokenizer than run {a} (fingerprint tok-other != tok-a)"
    )
    assert not (tmp_path / "out").exists()


def _without_labels(path: Path) -> Path:
    schema = pa.schema([f for f in MASKS_SCHEMA if f.name != "labels"])
    return make_run(
        path, schema=schema, rows=[{k: v for k, v in r.items() if k != "labels"} for r in mask_rows("x", [4])]
    )


def _with_target_mask(path: Path) -> Path:
    schema = MASKS_SCHEMA.append(pa.field("target_mask", pa.list_(pa.int8())))
    return make_run(path, schema=schema, rows=[{**r, "target_mask": [0] * 4} for r in mask_rows("x", [4])])


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda p: make_run(p, tokenizer=None), "manifest.json records no tokenizer fingerprint"),
        (lambda p: make_run(p, policy="sft"), "no masks for policy 't3s'"),
        (_without_labels, "data.parquet: missing column(s) labels"),
        (
            lambda p: make_run(p, rows=[{**r, "loss_mask": [1]} for r in mask_rows("x", [4])]),
            "some row's loss_mask and input_ids have different lengths",
        ),
        (_with_target_mask, "the runs' masks have different columns"),
    ],
)
def test_mix_input_problems_are_named(tmp_path: Path, second, message: str) -> None:
    first = make_run(tmp_path / "first")
    other = second(tmp_path / "second")
    with pytest.raises(T3SError) as err:
        mix_masks([parse_source(str(first)), parse_source(str(other))], "t3s", tmp_path / "out")
    assert message in str(err.value)


def test_mix_needs_distinct_names_and_a_separate_output(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "x" / "run"), make_run(tmp_path / "y" / "run")
    with pytest.raises(T3SError, match="two runs are named 'run'; name them apart with --run NAME=RUN"):
        mix_masks([parse_source(str(a)), parse_source(str(b))], "t3s", tmp_path / "out")
    with pytest.raises(T3SError, match="is the masks directory of run"):
        mix_masks([parse_source(f"a={a}"), parse_source(f"b={b}")], "t3s", a / "masks" / "t3s")
    with pytest.raises(T3SError, match="at least two --run"):
        mix_masks([parse_source(str(a))], "t3s", tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(T3SError, match="exists and is not a masks directory"):
        mix_masks([parse_source(f"a={a}"), parse_source(f"b={b}")], "t3s", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_mix_command(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", rows=mask_rows("y", [3]))
    result = CliRunner().invoke(app, ["mix", "--run", str(a), "--run", str(b), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert f"mixed masks -> {tmp_path / 'm'}" in result.output
    assert pq.read_table(tmp_path / "m" / "data.parquet").num_rows == 3
    c = make_run(tmp_path / "c", tokenizer="tok-c")
    proc = subprocess.run(
        cli("mix", "--run", str(a), "--run", str(c), "--out", str(tmp_path / "n")),
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"run {c} used another tokenizer than run {a}" in proc.stderr
