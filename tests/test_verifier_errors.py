"""Verifier errors (a verifier that raises or times out) are counted apart from wrong answers
everywhere answers are verified, shown in the report, and past a limit stop the stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import arithmetic_rows, importable_module, write_jsonl
from t3s.errors import T3SError
from t3s.evaluation import EvalSettings, evaluate, load_bench
from t3s.verify import Verdict, VerifierPool, load_verifier
from test_eval import FakeBackend, lines

FAILING = r'''
import os
import time

from t3s.verify import Verdict


def _answer(completion):
    if "\\boxed{" in completion:
        return completion.rpartition("\\boxed{")[2].partition("}")[0]
    return completion.rpartition("ANSWER ")[2].strip() or None


def broken(gold, completion):
    return 1 / 0


def boom(gold, completion):
    """Exact match of the answer; the answer BOOM raises, HANG never returns."""
    answer = _answer(completion)
    if answer == "BOOM":
        raise ValueError("cannot read\nBOOM")
    if answer == "HANG":
        time.sleep(3600)
    return Verdict(answer == gold, answer)


def fails_on_golds(gold, completion):
    """Raises for the gold answers listed in $T3S_TEST_BAD_GOLDS (comma-separated)."""
    if gold in os.environ.get("T3S_TEST_BAD_GOLDS", "").split(","):
        raise ValueError(f"gold {gold} unreadable")
    answer = _answer(completion)
    return Verdict(answer == gold, answer)
'''


@pytest.fixture(scope="session")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of `t3s_failing_verifiers`, importable here and in spawned verifier workers."""
    return importable_module(tmp_path_factory.mktemp("failing_verifiers"), "t3s_failing_verifiers", FAILING)


# -- the one count-and-check ---------------------------------------------------------------------
def test_check_counts_errors_and_stops_past_the_limit() -> None:
    from t3s.sampling import check_verifier_errors

    verdicts = [Verdict(False, None, "ZeroDivisionError: division by zero")] + [Verdict(True, "1")] * 19
    assert check_verifier_errors(verdicts, 0.05, "probe step 3", "probe.eval.max_verifier_errors") == 1
    assert check_verifier_errors(verdicts[1:], 0.0, "x", "y") == 0
    with pytest.raises(T3SError) as err:
        check_verifier_errors(verdicts[:10], 0.05, "probe step 3", "probe.eval.max_verifier_errors")
    assert str(err.value) == (
        "probe step 3: 1 of 10 verdicts (10%) are verifier errors (first: ZeroDivisionError: division "
        "by zero); fix the verifier or raise probe.eval.max_verifier_errors"
    )


def test_a_timed_out_verdict_is_a_verifier_error(failing: Path) -> None:
    from t3s.sampling import check_verifier_errors

    pool = VerifierPool(load_verifier("t3s_failing_verifiers:boom"), workers=1, timeout=1.0)
    try:
        verdicts = pool.verify([("1", "ANSWER HANG"), ("1", "ANSWER 1"), ("1", "ANSWER 2")])
    finally:
        pool.close()
    assert [(v.correct, v.error) for v in verdicts] == [
        (False, "timeout after 1 s"),
        (True, None),
        (False, None),
    ]
    with pytest.raises(T3SError, match=r"^eval m: 1 of 3 verdicts \(33%\) .*\(first: timeout after 1 s\)"):
        check_verifier_errors(verdicts, 0.05, "eval m", "--max-verifier-errors")


# -- t3s eval ------------------------------------------------------------------------------------
BENCH = [{"id": f"q{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(1, 6)]
# q2's first sample makes the verifier raise: 1 verdict of 20 (5%) is an error, still within the limit.
ANSWERS = {
    "1+1": ["2", "2", "3", "2"],
    "2+2": ["BOOM", "4", "4", "5"],
    "3+3": ["6"],
    "4+4": ["8"],
    "5+5": ["1"],
}


def run_eval(tmp_path: Path, tokenizer, tiny_model: Path, verifier: str, **kw) -> dict:
    cfg = EvalSettings(samples=4, max_new_tokens=5, verifier=verifier, **kw)
    bench = load_bench(write_jsonl(tmp_path / "b.jsonl", BENCH))
    return evaluate(
        str(tiny_model),
        bench,
        cfg,
        tmp_path / "res.json",
        tokenizer=tokenizer,
        backend_factory=lambda path: FakeBackend(tokenizer, ANSWERS),
        label="m",
    )


def test_eval_counts_a_few_verifier_errors_beside_the_accuracy(
    tmp_path: Path, tiny_model: Path, tokenizer, failing: Path
) -> None:
    summary = run_eval(tmp_path, tokenizer, tiny_model, "t3s_failing_verifiers:boom")
    m = summary["metrics"]
    assert m["verifier_errors"] == 1 and m["maj_grouping_errors"] == 0
    assert m["avg@4"] == pytest.approx((3 / 4 + 2 / 4 + 1 + 1 + 0) / 5)  # the error is not correct
    assert [p["verifier_errors"] for p in summary["per_problem"]] == [0, 1, 0, 0, 0]
    assert json.loads((tmp_path / "res.json").read_text())["metrics"]["verifier_errors"] == 1


def test_eval_stops_on_a_broken_verifier_and_reverifies_once_fixed(
    tmp_path: Path, tiny_model: Path, tokenizer, failing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T3S_TEST_BAD_GOLDS", "2,4,6,8,10")
    with pytest.raises(T3SError) as err:
        run_eval(tmp_path, tokenizer, tiny_model, "t3s_failing_verifiers:fails_on_golds")
    assert str(err.value) == (
        "eval m on b: 20 of 20 verdicts (100%) are verifier errors (first: ValueError: gold 2 "
        "unreadable); fix the verifier or raise --max-verifier-errors"
    )
    assert not (tmp_path / "res.json").exists()  # no summary: nothing downstream reads a broken score
    assert len(lines(tmp_path / "res.samples.jsonl")) == 20  # the samples are kept

    # The verifier is fixed (same spec): the failed verdicts are verified again, nothing is generated.
    monkeypatch.setenv("T3S_TEST_BAD_GOLDS", "")
    bench = load_bench(tmp_path / "b.jsonl")

    def no_backend(path: str):
        raise AssertionError("only verification is missing")

    cfg = EvalSettings(samples=4, max_new_tokens=5, verifier="t3s_failing_verifiers:fails_on_golds")
    summary = evaluate(str(tiny_model), bench, cfg, tmp_path / "res.json", tokenizer=tokenizer,
                       backend_factory=no_backend)  # fmt: skip
    assert summary["generated"] == 0 and summary["metrics"]["verifier_errors"] == 0
    assert summary["metrics"]["avg@4"] == pytest.approx((3 / 4 + 2 / 4 + 1 + 1 + 0) / 5)


def test_eval_limit_is_a_setting(tmp_path: Path, tiny_model: Path, tokenizer, failing: Path) -> None:
    with pytest.raises(T3SError, match=r"eval m on b: 1 of 20 verdicts \(5%\) are verifier errors \(first: "
                       r"ValueError: cannot read BOOM\); fix the verifier or raise --max-verifier-errors"):  # fmt: skip
        run_eval(tmp_path, tokenizer, tiny_model, "t3s_failing_verifiers:boom", max_verifier_errors=0.0)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        EvalSettings(max_verifier_errors=1.5)


def test_eval_tables_show_verifier_errors() -> None:
    from rich.console import Console

    from t3s.cli.evaluate import _curve_table, _metrics_table

    metrics = {"avg@1": 0.5, "avg@1_stderr": None, "tokens": 10, "truncated": 0.0, "verifier_errors": 3}
    rows = [{"step": 2, "samples": 1, "maj@1": 0.5, "maj@1_stderr": None, "pass@1": 0.5, "pass@1_stderr": None,
             **metrics}]  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_metrics_table("one", metrics))
    console.print(_curve_table("curve", "step", rows))
    text = console.export_text()
    assert "│ verifier errors │      3 │        │" in text
    assert "┃ verifier errors ┃" in text and "│      0.0% │               3 │" in text


# -- the probe -----------------------------------------------------------------------------------
def probe(
    tmp_path: Path, model: Path, failing: Path, verifier: str, *extra: str, bad_golds: str = ""
) -> subprocess.CompletedProcess:
    """`t3s probe` on 8 prompts, 2 steps, every step measured (greedy, one sample each)."""
    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    env = {
        **os.environ,
        "PYTHONPATH": f"{failing}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "T3S_TEST_BAD_GOLDS": bad_golds,
    }
    args = ["probe", "--model", str(model), "--data", str(data), "--run", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", "--micro-batch-size", "2", "--max-new-tokens", "4", "--verifier", verifier, *extra]  # fmt: skip
    cmd = [sys.executable, "-c", "from t3s.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_probe_stops_on_a_broken_verifier_without_a_metrics_row(
    tmp_path: Path, tiny_model: Path, failing: Path
) -> None:
    proc = probe(tmp_path, tiny_model, failing, "t3s_failing_verifiers:broken")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "error: probe step 0: 8 of 8 verdicts (100%) are verifier errors (first: ZeroDivisionError: "
        "division by zero); fix the verifier or raise probe.eval.max_verifier_errors"
    )
    run = tmp_path / "run" / "probe"
    assert not (run / "metrics.jsonl").exists() or (run / "metrics.jsonl").read_text() == ""
    assert not (run / "bottleneck.json").exists() and not (run / "samples").exists()


def test_probe_counts_a_few_verifier_errors_and_goes_on(
    tmp_path: Path, tiny_model: Path, failing: Path
) -> None:
    golds = [r["answer"] for r in arithmetic_rows(8)]
    bad = next(g for g in golds if golds.count(g) == 1)
    verifier = "t3s_failing_verifiers:fails_on_golds"
    proc = probe(tmp_path, tiny_model, failing, verifier, "--max-verifier-errors", "0.2", bad_golds=bad)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run" / "probe"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["verifier_errors"]) for r in rows] == [(0, 1), (1, 1), (2, 1)]  # 1 of 8: 12.5%
    assert (run / "bottleneck.json").exists()
    samples = [json.loads(line) for line in (run / "samples" / "step-00001.jsonl").read_text().splitlines()]
    assert [s["error"] for s in samples if s["error"]] == [f"ValueError: gold {bad} unreadable"]


def test_probe_limit_is_a_probe_eval_setting() -> None:

    from t3s.probe import ProbeEval, ProbeSettings, probe_fingerprint
    from t3s.training import TrainRecipe

    assert ProbeEval().max_verifier_errors == 0.05
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ProbeEval(max_verifier_errors=2)
    # The limit decides whether a measurement stands, not the trajectory: a probe resumes under another.
    loose = ProbeSettings(eval=ProbeEval(max_verifier_errors=0.5))
    assert probe_fingerprint("t", "m", TrainRecipe(), loose) == probe_fingerprint(
        "t", "m", TrainRecipe(), ProbeSettings()
    )


# -- teacher collection --------------------------------------------------------------------------
def teacher_prompts(tmp_path: Path) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"What is {i}+{10 * i}?", "answer": str(11 * i)} for i in range(1, 5)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_teacher_counts_verifier_errors_per_sample_and_stops_past_the_limit(
    tmp_path: Path, failing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from t3s.teacher.collect import TeacherSettings, collect_traces
    from t3s.teacher.specs import parse_teachers

    specs = parse_teachers(["coin=python:test_teacher:coin_teacher"])
    settings = TeacherSettings(samples=4, verifier="t3s_failing_verifiers:fails_on_golds")
    monkeypatch.setenv("T3S_TEST_BAD_GOLDS", "11")  # p1: 4 of 16 verdicts
    with pytest.raises(T3SError) as err:
        collect_traces(teacher_prompts(tmp_path), specs, tmp_path / "out", settings)
    assert str(err.value) == (
        "teacher coin: 4 of 16 verdicts (25%) are verifier errors (first: ValueError: gold 11 unreadable); "
        "fix the verifier or raise --max-verifier-errors"
    )
    assert not (tmp_path / "out" / "coin" / "corpus.jsonl").exists()
    assert not (tmp_path / "out" / "corpus.jsonl").exists()

    loose = settings.model_copy(update={"max_verifier_errors": 0.25})
    stats = collect_traces(teacher_prompts(tmp_path), specs, tmp_path / "out", loose)["teachers"]["coin"]
    assert stats["verifier_errors"] == 4 and stats["requested"] == 0
    per_prompt = json.loads((tmp_path / "out" / "coin" / "stats.json").read_text())["per_prompt"]
    assert [(p["id"], p.get("verifier_errors", 0)) for p in per_prompt] == [
        ("p1", 4),
        ("p2", 0),
        ("p3", 0),
        ("p4", 0),
    ]


# -- the report ----------------------------------------------------------------------------------
def test_report_shows_verifier_errors(tmp_path: Path) -> None:
    from t3s.report import build_report

    run = tmp_path / "run"
    (run / "probe").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    write_jsonl(run / "probe" / "metrics.jsonl", [
        {"step": s, "train_loss": 1.0, "train_accuracy": 0.5, "verifier_errors": e, "heldout_accuracy": 0.25,
         "heldout_verifier_errors": 7, "mean_tokens": 3.0, "truncated": 0} for s, e in ((0, 0), (1, 2), (2, 1))
    ])  # fmt: skip
    bench = run / "eval" / "aime"
    bench.mkdir(parents=True)
    write_jsonl(bench / "curve.jsonl", [
        {"step": 0, "model": "m", "problems": 30, "samples": 4, "maj_grouping": "math-verify", "avg@4": 0.4,
         "avg@4_stderr": 0.05, "maj@4": 0.5, "maj@4_stderr": 0.1, "mean_tokens": 9.0, "truncated": 0.0,
         "verifier_errors": 5}
    ])  # fmt: skip
    md = build_report([run]).markdown.read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| step | train_loss"))
    assert header.endswith("| verifier_errors | heldout_verifier_errors |")
    assert "| 1 | 1 | – | 50.0% | 3 | 0 | 2 | 7 |" in md
    assert "| 0 | 40.0% ± 5.0% | 50.0% ± 10.0% | 30 | 4 | 9 | 0 | 5 |" in md
    assert "maj@k votes group answers by math-verify." in md
