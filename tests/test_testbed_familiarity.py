"""The familiarity sweep (`python -m t3s.testbed.familiarity`): its tables, its options and a whole
level end to end on SmolLM2 with tiny settings, rerun to resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t3s.testbed import familiarity


def row(level: float, t3s: float) -> dict:
    return {
        "level": level, "stage0_accuracy": 0.8125, "bottleneck_step": 6,
        "gate": {"forced_teacher_prefix_accuracy": 0.3359375, "own_style_accuracy": 0.34375},
        "train_accuracy": {"θ0": 0.5, "θb": 0.25, "end": 0.625},
        "heldout_accuracy": {"θ0": 0.25, "θb": 0.0625, "end": 0.375},
        "kept_loss_share": {"t3s": 0.004, "inverse": 0.996},
        "bands": [{"band": "≤ -0.2", "token_share": 0.041, "loss_share": 0.002},
                  {"band": "> 5", "token_share": 0.152, "loss_share": 0.898}],
        "final": {"base": 0.34375, "sft": 0.375, "t3s": t3s, "inverse": 0.0},
    }  # fmt: skip


def test_the_tables_give_each_level_its_shock_loss_share_accuracies_and_bands() -> None:
    text = familiarity.tables([row(0.0, 0.203125), row(0.005, 0.4)])
    lines = text.splitlines()
    assert lines[0].startswith("| teacher share in stage 0 | stage-0 acc | gate (forced / own) | θb |")
    assert lines[0].endswith("| T3S kept loss share | base | sft | t3s | inverse |")
    assert lines[2] == (
        "| 0% | 81.2 | 33.6 / 34.4 | 6 | 50.0 → 25.0 → 62.5 | 25.0 → 6.2 → 37.5 | 0.4 | 34.4 | 37.5 | 20.3 | 0.0 |"
    )
    assert lines[3].startswith("| 0.5% |") and lines[3].endswith("| 40.0 | 0.0 |")
    assert "| teacher share | ≤ -0.2 | > 5 |" in lines
    assert "| 0.5% | 4.1 / 0.2 | 15.2 / 89.8 |" in lines


def test_a_stage0_setting_that_is_not_one_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        familiarity.main(["--stage0", "stepz=3"])
    assert exc.value.code == 2
    assert "--stage0 stepz: stage 0's settings are steps, batch_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        familiarity.main(["--levels", "0.95"])
    assert "--levels 0.95: shares from 0 to 0.9" in capsys.readouterr().err


TINY = [
    "--stage0", "steps=2", "--stage0", "problems=16", "--stage0", "batch_size=4", "--stage0", "eval=4",
    "--set", "testbed.train_problems=12", "--set", "testbed.heldout_problems=8",
    "--set", "testbed.curve_prompts=4", "--set", "testbed.curve_heldout=4", "--set", "testbed.eval_every=2",
    "--set", "testbed.max_new_tokens=16", "--set", "testbed.recipe.steps=4", "--set", "testbed.recipe.batch_size=4",
    "--set", "testbed.recipe.micro_batch_size=4",
]  # fmt: skip


def test_levels_rebuild_stage0_run_the_comparison_and_resume(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("T3S_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "sweep"
    argv = ["--levels", "0,0.25", "--work", str(work), "--base", str(tiny_model), *TINY]
    familiarity.main(argv)
    records = [
        json.loads((work / f"share-{p}" / "stage0" / "stage0.json").read_text()) for p in ("0", "0.25")
    ]
    # On another base than SmolLM2, level 0 is rebuilt too (the shipped student is SmolLM2's).
    assert [r["args"]["teacher_share"] for r in records] == ["0.0", "0.25"]
    assert all(r["args"]["mix_style"] == "words" and r["heldout_problems"] == 4 for r in records)
    result = json.loads((work / "sweep.json").read_text())
    rows = result["rows"]
    assert [r["level"] for r in rows] == [0.0, 0.25]
    assert [r["stage0_accuracy"] for r in rows] == [r["heldout_accuracy"] for r in records]
    for r in rows:
        assert set(r["final"]) == {"base", "sft", "t3s", "inverse"} and r["problems"] == 8  # no RRT
        assert list(r["train_accuracy"]) == ["θ0", "θb", "end"]
        assert sum(b["token_share"] for b in r["bands"]) == pytest.approx(1.0)
        assert r["kept_loss_share"]["t3s"] + r["kept_loss_share"]["inverse"] == pytest.approx(1.0)
    assert "| 25% |" in (work / "sweep.md").read_text()
    built = (work / "share-0.25" / "stage0" / "stage0.json").stat().st_mtime_ns
    familiarity.main(argv)  # resumes: nothing is redone
    assert (work / "share-0.25" / "stage0" / "stage0.json").stat().st_mtime_ns == built
    assert json.loads((work / "sweep.json").read_text())["rows"] == rows
