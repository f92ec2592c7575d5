"""Stage 0 of the testbed (`python -m t3s.testbed.prepare`): the teacher-style share of its corpus
and the resume of a killed run."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from safetensors.torch import load_file

from conftest import build_tiny_model
from t3s.errors import T3SError
from t3s.testbed import prepare
from t3s.testbed.task import STYLES, TaskSpec, make_problems, style_of

PROBLEMS = make_problems(TaskSpec((3, 4), 10, 49), 2000, 0)


def test_a_zero_teacher_share_is_the_shipped_corpus_and_a_share_takes_only_own_style_answers() -> None:
    shipped = prepare.stage0_rows(PROBLEMS, 0, 0.1, "words")
    rng = random.Random(1)  # the shipped rule: one draw per answer, words below --mix
    assert [r["response"] for r in shipped] == [
        STYLES["words" if rng.random() < 0.1 else "running"](p) for p in PROBLEMS
    ]
    mixed = prepare.stage0_rows(PROBLEMS, 0, 0.1, "words", teacher_share=0.05, teacher_style="reverse")
    styles = Counter(style_of(r["response"]) for r in mixed)
    assert styles["words"] == Counter(style_of(r["response"]) for r in shipped)["words"]
    assert 70 <= styles["reverse"] <= 130 and styles["words"] + styles["reverse"] + styles["running"] == 2000
    for old, new in zip(shipped, mixed, strict=True):  # only own-style answers change style
        assert (
            style_of(new["response"]) == style_of(old["response"]) or style_of(old["response"]) == "running"
        )
    with pytest.raises(T3SError, match="--mix 0.6 and --teacher-share 0.5 must be shares summing to ≤ 1"):
        prepare.stage0_rows(PROBLEMS, 0, 0.6, "words", teacher_share=0.5)


def test_a_killed_stage0_resumes_and_ends_where_an_uninterrupted_one_does(
    tokenizer, tmp_path, monkeypatch
) -> None:
    base = build_tiny_model(tokenizer, tmp_path / "ar")
    args = ["--base", str(base), "--steps", "4", "--save-steps", "2", "--problems", "16", "--batch-size", "4",
            "--eval", "4", "--teacher-share", "0.25"]  # fmt: skip
    prepare.main([*args, "--out", str(tmp_path / "whole")])
    whole = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # the kill lands after training, before the adapter is written

    with monkeypatch.context() as patch:
        patch.setattr(prepare, "greedy_accuracy", killed)
        with pytest.raises(KeyboardInterrupt):
            prepare.main([*args, "--out", str(tmp_path / "parted")])
    trainer_dir = tmp_path / ".parted-trainer"
    # No checkpoint at the last step: resumed there, Trainer would train a step past --steps.
    assert [p.name for p in trainer_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (tmp_path / "parted" / "stage0.json").exists()
    prepare.main([*args, "--out", str(tmp_path / "parted")])
    record = json.loads((tmp_path / "parted" / "stage0.json").read_text())
    assert record["resumed_from_step"] == 2 and record["args"]["teacher_share"] == "0.25"
    assert record["train_seconds"] > 0 and not trainer_dir.exists()
    resumed = load_file(str(tmp_path / "parted" / "adapter_model.safetensors"))
    assert resumed.keys() == whole.keys() and len(whole) > 0
    for name, value in whole.items():
        assert (resumed[name] == value).all(), name
