"""The probe: metrics per checkpoint, bottleneck choice, checkpoint retention, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t3s.errors import T3SError
from t3s.probe import choose_bottleneck

PROBE_ARGS = [
    "--steps", "6", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3",
    "--max-new-tokens", "6", "--eval-prompts", "4", "--seed", "7",
]  # fmt: skip


def t3s(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "t3s.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "probe" / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "model.safetensors")


def test_choose_bottleneck_lowest_accuracy_earliest_tie_never_step0() -> None:
    rows = [{"step": 0, "train_accuracy": 0.0}, {"step": 1, "train_accuracy": 0.5},
            {"step": 2, "train_accuracy": 0.25}, {"step": 3, "train_accuracy": 0.25}]  # fmt: skip
    assert choose_bottleneck(rows)["step"] == 2
    with pytest.raises(T3SError, match="no evaluated checkpoint after step 0"):
        choose_bottleneck(rows[:1])


@pytest.fixture(scope="module")
def all_mode_run(tiny_model: Path, tmp_path_factory) -> Path:
    from conftest import arithmetic_rows, write_jsonl

    root = tmp_path_factory.mktemp("probe")
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(8))
    run = root / "run-all"
    t3s(
        "probe",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--run",
        str(run),
        "--mode",
        "all",
        *PROBE_ARGS,
    )
    return run


def test_metrics_every_step_and_bottleneck_is_the_argmin(all_mode_run: Path) -> None:
    rows = metrics(all_mode_run)
    assert [r["step"] for r in rows] == list(range(7))
    for r in rows:
        assert r["prompts"] == 4 and r["samples"] == 4 and 0 <= r["train_accuracy"] <= 1
        assert r["teacher_forced_loss"] > 0 and r["wall_time"] >= 0
        assert (r["train_loss"] is None) == (r["step"] == 0)
    # The random tiny model learns: teacher-forced loss falls along the trajectory.
    assert rows[-1]["teacher_forced_loss"] < rows[0]["teacher_forced_loss"]
    record = json.loads((all_mode_run / "probe" / "bottleneck.json").read_text())
    assert record["step"] == choose_bottleneck(rows)["step"]
    samples = (all_mode_run / "probe" / "samples" / "step-00003.jsonl").read_text().splitlines()
    assert (
        len(samples) == 4
        and {"completion", "extracted", "correct", "num_tokens"} <= json.loads(samples[0]).keys()
    )


def test_all_mode_keeps_every_checkpoint_with_state_only_on_the_latest(all_mode_run: Path) -> None:
    ckpts = sorted(
        (all_mode_run / "probe" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:])
    )
    assert [p.name for p in ckpts] == [f"checkpoint-{k}" for k in range(1, 7)]
    assert [(p / "optimizer.pt").exists() for p in ckpts] == [False] * 5 + [True]
    assert all((p / "model.safetensors").exists() for p in ckpts)


def test_online_mode_keeps_latest_and_running_minimum(
    tiny_model: Path, tmp_path: Path, all_mode_run: Path
) -> None:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    run = tmp_path / "run"
    t3s(
        "probe",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--run",
        str(run),
        "--keep-step",
        "2",
        *PROBE_ARGS,
    )
    kept = {p.name for p in (run / "probe" / "checkpoints").glob("checkpoint-*")}
    bottleneck = json.loads((run / "probe" / "bottleneck.json").read_text())["step"]
    assert kept == {f"checkpoint-{k}" for k in {6, bottleneck, 2}}
    # Same recipe, same seed: the online probe follows the very same trajectory as the all-mode one.
    keys = ("step", "train_loss", "train_accuracy", "teacher_forced_loss")
    assert [[r[k] for k in keys] for r in metrics(run)] == [
        [r[k] for k in keys] for r in metrics(all_mode_run)
    ]


def test_fixed_step_skips_the_accuracy_search(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    run = tmp_path / "run"
    t3s(
        "probe",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--run",
        str(run),
        "--fixed-step",
        "3",
        *PROBE_ARGS,
    )
    record = json.loads((run / "probe" / "bottleneck.json").read_text())
    assert record["step"] == 3 and record["selected_by"] == "fixed_step"
    assert not (run / "probe" / "metrics.jsonl").exists()
    assert {p.name for p in (run / "probe" / "checkpoints").glob("checkpoint-*")} == {
        "checkpoint-3",
        "checkpoint-6",
    }


def test_killed_probe_resumes_without_duplicate_or_missing_steps(
    tiny_model: Path, tmp_path: Path, all_mode_run: Path
) -> None:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "t3s.cli", "probe", "--model", str(tiny_model), "--data", str(data),
           "--run", str(run), "--mode", "all", *PROBE_ARGS]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics_file = run / "probe" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(run)) < 7, "the probe finished before it could be killed"
    t3s(*cmd[3:])
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(7))
    ref = metrics(all_mode_run)
    assert [r["train_accuracy"] for r in rows] == [r["train_accuracy"] for r in ref]
    for r, q in zip(rows, ref, strict=True):
        assert r["teacher_forced_loss"] == pytest.approx(q["teacher_forced_loss"], rel=1e-4)
    final, final_ref = (
        weights(run / "probe/checkpoints/checkpoint-6"),
        weights(all_mode_run / "probe/checkpoints/checkpoint-6"),
    )
    for name, tensor in final_ref.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-5)


def test_other_corpus_or_tokenizer_is_refused(tiny_model: Path, tmp_path: Path, all_mode_run: Path) -> None:
    from conftest import arithmetic_rows, write_jsonl

    other = write_jsonl(tmp_path / "other.jsonl", arithmetic_rows(8, seed=5))
    proc = t3s(
        "probe", "--model", str(tiny_model), "--data", str(other), "--run", str(all_mode_run), check=False
    )
    assert proc.returncode == 2
    assert f"corpus {other} differs from the one run {all_mode_run} was started with" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_lora_probe_saves_adapters_that_profile_and_train(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    run = tmp_path / "run"
    t3s("probe", "--model", str(tiny_model), "--data", str(data), "--run", str(run), "--lora", "--lora-r", "4",
        "--eval-every", "3", *PROBE_ARGS)  # fmt: skip
    final = run / "probe" / "checkpoints" / "checkpoint-6"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    t3s("profile", "--run", str(run))
    t3s("select", "--run", str(run), "--policy", "t3s")
    t3s("train", "--run", str(run), "--policy", "t3s")
    assert (run / "train" / "t3s" / "model" / "model.safetensors").exists()  # merged, plain checkpoint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "model '/no/such/model': no such directory"),
        (["--steps", "0"], "steps: Input should be greater than or equal to 1"),
        (["--batch-size", "6", "--micro-batch-size", "4"], "not a multiple of micro_batch_size"),
        (["--mode", "sometimes"], "mode: Input should be 'online' or 'all'"),
    ],
)
def test_bad_probe_arguments_are_one_line_errors(
    tiny_model: Path, tmp_path: Path, args: list, message: str
) -> None:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(4))
    base = ["probe", "--model", str(tiny_model), "--data", str(data), "--run", str(tmp_path / "r")]
    proc = t3s(*base, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "r" / "probe" / "bottleneck.json").exists()
