"""`t3s eval` on a model and on a run's trajectory and policies; one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from t3s.cli import main
from t3s.errors import T3SError
from t3s.evaluation import EvalSettings, evaluate_run, load_bench, run_template
from t3s.rundir import RunDir
from test_eval import BENCH_ROWS, SCRIPT, FakeBackend, check_verifier, lines, settings  # noqa: F401


def t3s(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from t3s.cli import main; main()", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "arith.jsonl", BENCH_ROWS)


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model: Path) -> Path:
    """A run as the probe and train leave it: θ0, checkpoints 2 and 4, an `sft` policy model."""
    run = RunDir(tmp_path / "run")
    for step in (2, 4):
        ckpt = run.checkpoints_dir / f"checkpoint-{step}"
        shutil.copytree(tiny_model, ckpt)
        (ckpt / "trainer_state.json").write_text("{}")
    (run.checkpoints_dir / "checkpoint-6").mkdir()  # killed while saving: not a checkpoint
    shutil.copytree(tiny_model, run.train_dir("sft") / "model")
    run.set_stage("tokenize", status="done", config={"template": "plain", "max_length": 64})
    run.set_stage("probe", status="done", model=str(tiny_model))
    run.record("probe", {"base": str(tiny_model), "checkpoints": {"step2": "probe/checkpoints/checkpoint-2"}})
    return run.root


def scripted(tokenizer, tiny_model: Path):
    """θ0 answers as SCRIPT, checkpoint 2 crashes (all wrong), checkpoint 4 and sft recover."""
    right = {"1+1": ["2"], "2+2": ["4"], "3+3": ["6"]}
    crash = {key: ["0"] for key in SCRIPT}

    def factory(path: str) -> FakeBackend:
        script = SCRIPT if path == str(tiny_model) else crash if path.endswith("checkpoint-2") else right
        return FakeBackend(tokenizer, script)

    return factory


@pytest.mark.usefixtures("check_verifier")
def test_run_curve_and_policies(run_dir: Path, bench_file: Path, tiny_model: Path, tokenizer) -> None:
    bench = load_bench(bench_file)
    assert run_template(RunDir(run_dir)) == "plain"
    cfg = settings("t3s_eval_check:exact", template=run_template(RunDir(run_dir)))
    rows = evaluate_run(run_dir, bench, cfg, backend_factory=scripted(tokenizer, tiny_model))
    assert [(r["step"], r["avg@4"], r["maj@4"]) for r in rows] == [
        (0, pytest.approx(5 / 12), pytest.approx(1 / 3)),
        (2, 0.0, 0.0),
        (4, 1.0, 1.0),
    ]
    assert rows[0]["problems"] == 3 and rows[0]["tokens"] == 60 and rows[0]["avg@4_stderr"] > 0
    out = run_dir / "eval" / "arith"
    assert lines(out / "curve.jsonl") == json.loads(json.dumps(rows))
    assert len(lines(out / "step-00002.samples.jsonl")) == 12
    step0 = json.loads((out / "step-00000.json").read_text())
    assert (step0["step"], step0["template"], step0["model"]) == (0, "plain", str(tiny_model))
    assert RunDir(run_dir).stage("eval:arith")["status"] == "done"

    # One step again: nothing to generate, and the curve keeps the other steps.
    def no_backend(path: str):
        raise AssertionError("nothing should be generated")

    again = evaluate_run(run_dir, bench, cfg, steps=[2], backend_factory=no_backend)
    assert [r["step"] for r in again] == [0, 2, 4]
    with pytest.raises(T3SError, match=r"step 3: no such checkpoint .*\(on disk: \[0, 2, 4\]\)"):
        evaluate_run(run_dir, bench, cfg, steps=[3])

    rows = evaluate_run(
        run_dir, bench, cfg, policies=["all"], backend_factory=scripted(tokenizer, tiny_model)
    )
    assert [(r["policy"], r["avg@4"]) for r in rows] == [("sft", 1.0)]
    assert lines(out / "policies.jsonl") == json.loads(json.dumps(rows))
    assert (out / "policy-sft.samples.jsonl").exists()
    with pytest.raises(T3SError, match="policy 't3s': no trained model at"):
        evaluate_run(run_dir, bench, cfg, policies=["t3s"])


def test_run_without_probe_is_refused(tmp_path: Path, bench_file: Path) -> None:
    with pytest.raises(T3SError, match="has no probe"):
        evaluate_run(tmp_path / "empty-run", load_bench(bench_file), EvalSettings())


def test_cli_scores_a_model_and_resumes(
    tmp_path: Path, tiny_model: Path, bench_file: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    args = ["eval", "-m", str(tiny_model), "-b", str(bench_file), "--out", str(out)]
    args += ["--samples", "2", "--temperature", "1.0", "--max-tokens", "3", "--chunk", "2"]
    t3s(*args)
    summary = json.loads((out / "results.json").read_text())
    records = lines(out / "samples.jsonl")
    assert (summary["problems"], summary["samples"], summary["generated"]) == (3, 2, 6)
    assert summary["metrics"]["tokens"] == sum(r["num_tokens"] for r in records)
    assert sorted((r["id"], r["sample"]) for r in records) == [
        (f"q{i}", k) for i in (1, 2, 3) for k in (0, 1)
    ]
    assert all(r["num_tokens"] <= 3 and r["finish_reason"] in ("stop", "length") for r in records)
    assert set(summary["metrics"]) >= {"avg@2", "pass@1", "pass@2", "maj@2", "maj@2_stderr", "tokens"}
    before = (out / "samples.jsonl").read_bytes()
    monkeypatch.setattr(sys, "argv", ["t3s", *args])  # in-process this time: no startup cost
    with pytest.raises(SystemExit) as done:  # typer exits even on success
        main()
    assert done.value.code == 0
    assert json.loads((out / "results.json").read_text())["generated"] == 0
    assert (out / "samples.jsonl").read_bytes() == before


def test_cli_scores_a_run_trajectory(run_dir: Path, bench_file: Path) -> None:
    t3s("eval", "--run", str(run_dir), "-b", str(bench_file), "--samples", "1", "--temperature", "0",
        "--max-tokens", "2")  # fmt: skip
    rows = lines(run_dir / "eval" / "arith" / "curve.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(r["problems"] == 3 and r["samples"] == 1 and r["tokens"] <= 6 for r in rows)
    assert json.loads((run_dir / "eval" / "arith" / "step-00004.json").read_text())["template"] == "plain"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "pass either --model (with --out) or --run"),
        (["-m", "MODEL"], "--model needs --out"),
        (["-m", "MODEL", "-o", "OUT", "--step", "2"], "--step and --policy select models of a run"),
        (["-m", "/nonexistent/model", "-o", "OUT"], "model '/nonexistent/model': no such directory"),
        (["-m", "MODEL", "-o", "OUT", "--samples", "2", "--temperature", "0"], "with temperature 0"),
        (
            ["-m", "MODEL", "-o", "OUT", "--template", "fancy"],
            "--template: Input should be 'auto', 'chat' or 'plain'",
        ),
        (
            ["-m", "MODEL", "-o", "OUT", "--backend", "tgi"],
            "--backend: Input should be 'transformers' or 'vllm'",
        ),
        (
            ["-m", "MODEL", "-o", "OUT", "--verifier", "no_such_mod:f"],
            "verifier 'no_such_mod:f': cannot import",
        ),
        (["-m", "MODEL", "-o", "OUT", "-b", "BAD"], "bad.jsonl:2: field 'answer': missing"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, tiny_model: Path, bench_file: Path, monkeypatch, capsys
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(BENCH_ROWS[0]) + "\n" + '{"id": "x", "problem": "p"}\n')
    subs = {"MODEL": str(tiny_model), "OUT": str(tmp_path / "r.json"), "BAD": str(bad)}
    argv = ["t3s", "eval", *[subs.get(a, a) for a in args]]
    if "-b" not in args:
        argv += ["-b", str(bench_file)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.samples.jsonl").exists()
