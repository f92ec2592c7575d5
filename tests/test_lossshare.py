"""The loss-share diagnostic: where θ0's teacher-forced loss sits, from the profile alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t3s.analysis.lossshare import (
    by_class,
    delta_bands,
    kept_loss_share,
    loss_share,
    low_share_warning,
    token_class,
)
from t3s.selection import SelectOptions, select, select_run
from test_selection import profile

NAN = float("nan")


def test_bands_put_each_upper_edge_inside_its_band() -> None:
    delta = np.array([-0.3, -0.2, 0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 6.0])
    nll = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    rows = {r["band"]: r for r in delta_bands(delta, nll)}
    assert [r["tokens"] for r in rows.values()] == [2, 1, 2, 2, 1, 1]
    assert list(rows) == ["≤ -0.2", "(-0.2, 0]", "(0, 0.5]", "(0.5, 2]", "(2, 5]", "> 5"]
    assert rows["(-0.2, 0]"]["loss_share"] == pytest.approx(2 / 10)
    assert rows["(0, 0.5]"]["mean_nll"] == pytest.approx(1.0)
    assert sum(r["token_share"] for r in rows.values()) == pytest.approx(1.0)


def test_classes_count_tokens_loss_and_anchors() -> None:
    delta = np.array([1.0, -1.0, 2.0, 3.0])
    nll = np.array([1.0, 1.0, 2.0, 4.0])
    classes = np.array([token_class(t) for t in ["\n", " 12", " 3", " So"]])
    rows = {r["class"]: r for r in by_class(delta, nll, classes, threshold=0.0)}
    assert rows["format"]["tokens"] == 1 and rows["format"]["anchor_share"] == 1.0
    assert rows["digits"]["tokens"] == 2 and rows["digits"]["anchor_share"] == 0.5
    assert rows["digits"]["loss_share"] == pytest.approx(3 / 8)
    assert rows["words"]["mean_delta"] == 3.0


def test_kept_loss_share_reads_theta0_loss_on_the_kept_response_tokens() -> None:
    table = pa.table({"logprob_base": [[NAN, -1.0, -3.0], [NAN, NAN, -4.0]]})
    keeps = [np.array([0, 1, 0], bool), np.array([0, 0, 1], bool)]
    assert kept_loss_share(table, keeps) == pytest.approx(5 / 8)
    assert kept_loss_share(pa.table({"input_ids": [[1]]}), [np.array([1], bool)]) is None
    assert loss_share(np.array([0.0]), np.array([True])) != loss_share(
        np.array([0.0]), np.array([True])
    )  # NaN


def test_warning_fires_under_five_percent_only() -> None:
    assert low_share_warning("t3s", 0.004) == (
        "policy t3s keeps tokens that carry 0.4% of θ0's teacher-forced loss (under 5%): "
        "the masked objective has almost nothing left to learn"
    )
    assert low_share_warning("t3s", 0.06) is None
    assert low_share_warning("sft", None) is None


def _run(root: Path, table: pa.Table) -> Path:
    (root / "profile").mkdir(parents=True)
    pq.write_table(table, root / "profile" / "profile.parquet")
    pq.write_table(
        table.select(["id", "input_ids", "response_start", "response_end"]).append_column(
            "truncated", pa.array([False] * table.num_rows)
        ),
        root / "tokens.parquet",
    )
    return root


def test_select_records_the_share_and_warns_when_little_is_left(tmp_path: Path, capsys) -> None:
    table = profile()
    # Make the anchors carry nearly all of θ0's loss: every kept (non-anchor) token is almost certain.
    base = [np.asarray(v, np.float32) for v in table.column("logprob_base").to_pylist()]
    delta = [np.asarray(v, np.float32) for v in table.column("delta").to_pylist()]
    base = [
        np.where(d > 0, -8.0, np.where(np.isnan(b), b, -0.001)).astype(np.float32)
        for b, d in zip(base, delta, strict=True)
    ]
    table = table.set_column(
        table.column_names.index("logprob_base"),
        "logprob_base",
        pa.array([b.tolist() for b in base], table.schema.field("logprob_base").type),
    )
    run = _run(tmp_path / "run", table)
    select_run(run, SelectOptions(policy="t3s"))
    stats = json.loads((run / "masks" / "t3s" / "stats.json").read_text())
    keeps = select(table, SelectOptions(policy="t3s"))
    assert stats["theta0_loss_share"] == pytest.approx(kept_loss_share(table, keeps))
    assert stats["theta0_loss_share"] < 0.01
    assert "policy t3s keeps tokens that carry" in capsys.readouterr().err
    select_run(run, SelectOptions(policy="inverse"))
    stats = json.loads((run / "masks" / "inverse" / "stats.json").read_text())
    assert stats["theta0_loss_share"] == pytest.approx(1 - kept_loss_share(table, keeps))
    assert "policy inverse" not in capsys.readouterr().err


def test_doctests() -> None:
    import doctest

    import t3s.analysis.lossshare

    result = doctest.testmod(t3s.analysis.lossshare)
    assert result.attempted > 0 and result.failed == 0


def test_report_shows_the_loss_tables(tmp_path: Path) -> None:
    from t3s.report import Section, _loss_share_items, render_markdown

    data = {
        "threshold": 0.0, "anchor_share": 0.35, "anchor_loss_share": 0.996, "low_share": 0.05,
        "bands": delta_bands(np.array([-1.0, 1.0]), np.array([1.0, 3.0])),
        "classes": by_class(np.array([-1.0, 1.0]), np.array([1.0, 3.0]), np.array(["digits", "words"]), 0.0),
        "policies": {"t3s": {"kept_token_share": 0.65, "loss_share": 0.004, "warning": "w"}},
    }  # fmt: skip
    md = render_markdown("r", [Section("tokens", _loss_share_items(data))], "")
    assert "| t3s | 65.0% | 0.4% | low: little left to learn |" in md
    assert "| ≤ -0.2 | 50.0% | 25.0% | 1 |" in md
    assert "| words | 50.0% | 75.0% | 100.0% | 1 |" in md
