"""Two CPU processes (torchrun, gloo) do what one does: the same probe, profile, training and eval.

Each two-process job is `torchrun --standalone --nproc_per_node 2 audited_t3s.py ARGS`, the same as
`-m t3s ARGS` with every process's file writes logged: only rank 0 writes a run's artifacts, the
others only their own shares (profile cache shards, partial sample files). Every process runs with
OMP_NUM_THREADS=1, as torchrun sets it, so that one process and two sum in the same order.
Marked `multiprocess`: `make test` runs them; `pytest -m "not multiprocess"` skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import arithmetic_rows, importable_module, write_jsonl
from test_eval import BENCH_ROWS, CHECK_MODULE, SCRIPT, FakeBackend, lines, settings

LAUNCH = Path(__file__).with_name("audited_t3s.py")
VERIFIER = """
import zlib

from t3s.verify import Verdict


def verify(gold, completion):
    # Right or wrong by a checksum: accuracy moves with the completions, so θb is a real choice.
    return Verdict(zlib.crc32((gold + completion).encode()) % 2 == 0, completion.strip() or None)
"""
# What a process other than rank 0 may write: its profile shards, its partial sample files.
OWN_SHARES = re.compile(
    r"(profile/cache/\w+/\.?part-\d+\.parquet\S*"
    r"|probe/\.samples-step-\d+\.process-1\.jsonl"
    r"|eval/\S+\.samples\.process-1\.jsonl)$"
)
EXACT = ("step", "train_accuracy", "verifier_errors", "prompts", "samples", "truncated", "mean_tokens")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    verifier = tmp_path_factory.mktemp("verifier")
    (verifier / "t3s_dist_verifier.py").write_text(VERIFIER)
    path = os.pathsep.join(p for p in (str(verifier), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def launch(
    env: dict[str, str], root: Path, processes: int, *args: str, script: Path = LAUNCH
) -> subprocess.Popen:
    """`t3s ARGS` (or `python SCRIPT ARGS`) in one process, or under torchrun in several, writes
    logged to ROOT/../audit-* (stderr only, for a script of its own)."""
    cmd = [sys.executable, str(script)]
    if processes > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*torchrun, f"--nproc_per_node={processes}", str(script)]
    audit = audit_dir(root)
    audit.mkdir(exist_ok=True)
    log = open(audit / "stderr.log", "a")  # noqa: SIM115 (the child writes it; a pipe could fill up)
    return subprocess.Popen(
        # `--`: torchrun would read t3s's `--run` as an abbreviation of its own --run-path.
        [*cmd, "--", *args],
        env={**env, "T3S_AUDIT_DIR": str(audit), "T3S_AUDIT_ROOT": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )


def audit_dir(root: Path) -> Path:
    return root.with_name(f"audit-{root.name}")


def t3s(env: dict[str, str], root: Path, processes: int, *args: str, script: Path = LAUNCH) -> None:
    proc = launch(env, root, processes, *args, script=script)
    assert proc.wait(timeout=600) == 0, (audit_dir(root) / "stderr.log").read_text()[-4000:]


def other_ranks_wrote(root: Path) -> list[str]:
    """Files written by processes other than rank 0 that are not their own shares."""
    logs = [p for p in audit_dir(root).glob("rank-*.log") if p.name != "rank-0.log"]
    assert logs, "no second process ran"
    writes = [line.split("\t") for p in logs for line in p.read_text().splitlines()]
    return [f"{event} {path}" for event, path in writes if not OWN_SHARES.search(path)]


@pytest.fixture(scope="module")
def model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, whose turns also end at a newline: some answers stop, some run to the limit."""
    path = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("model") / "m"))
    config = json.loads((path / "generation_config.json").read_text())
    stops = [config["eos_token_id"], 198]  # 198: "\n" in SmolLM2's vocabulary
    (path / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": stops}))
    return path


def write_config(root: Path, model: Path) -> Path:
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(70))  # over 64 examples: two profile shards
    cfg = {
        "run_dir": str(root / "run"),
        "model": str(model),
        "data": str(data),
        "recipe": {"steps": 4, "batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "seed": 1},
        "probe": {"eval": {"prompts": 4, "max_new_tokens": 6, "verifier": "t3s_dist_verifier:verify"}},
        "policies": ["t3s"],
        "save_every": 2,
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def chain(processes: int, model: Path, env: dict[str, str], factory: pytest.TempPathFactory) -> Path:
    """`t3s run` of the shared config in `processes` processes; returns its run directory."""
    root = factory.mktemp(f"procs{processes}") / "root"
    root.mkdir()
    t3s(env, root, processes, "run", str(write_config(root, model)))
    return root / "run"


@pytest.fixture(scope="module")
def one(model: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chain(1, model, env, tmp_path_factory)


@pytest.fixture(scope="module")
def two(model: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chain(2, model, env, tmp_path_factory)


def metrics(run: Path) -> list[dict]:
    return lines(run / "probe" / "metrics.jsonl")


def assert_same_probe(got: Path, want: Path) -> None:
    rows, ref = metrics(got), metrics(want)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # one row per step: no process wrote its own
    for r, w in zip(rows, ref, strict=True):
        assert {k: r[k] for k in EXACT} == {k: w[k] for k in EXACT}
        assert r["train_loss"] == w["train_loss"] or r["train_loss"] == pytest.approx(
            w["train_loss"], rel=1e-6
        )
        assert r["teacher_forced_loss"] == pytest.approx(w["teacher_forced_loss"], rel=1e-9)
    for step in range(5):
        name = f"samples/step-{step:05d}.jsonl"
        assert lines(got / "probe" / name) == lines(want / "probe" / name)
    chosen = json.loads((got / "probe" / "bottleneck.json").read_text())
    expected = json.loads((want / "probe" / "bottleneck.json").read_text())
    assert (chosen["step"], chosen["train_accuracy"]) == (expected["step"], expected["train_accuracy"])


def assert_same_models(got: Path, want: Path) -> None:
    assert pq.read_table(got / "masks/t3s/data.parquet").equals(
        pq.read_table(want / "masks/t3s/data.parquet")
    )
    for name in ("t3s", "rrt"):
        ref = load_file(want / "train" / name / "model" / "model.safetensors")
        new = load_file(got / "train" / name / "model" / "model.safetensors")
        assert new.keys() == ref.keys()
        for key, tensor in ref.items():
            torch.testing.assert_close(new[key], tensor, rtol=0, atol=1e-5)


def assert_same_profile(got: Path, want: Path) -> None:
    """Same rows, same float32 values (NaN outside the responses, in the same places)."""
    a, b = pq.read_table(got), pq.read_table(want)
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        if name.startswith(("logprob_", "entropy_")) or name == "delta":
            for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True):
                assert np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32), equal_nan=True)
        else:
            assert a.column(name).equals(b.column(name)), name


def copy_run(run: Path, root: Path) -> Path:
    root.mkdir()
    return Path(shutil.copytree(run, root / "run"))


# -- the whole chain -------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_two_processes_probe_profile_and_train_like_one(one: Path, two: Path) -> None:
    assert len({r["train_accuracy"] for r in metrics(one)}) > 1, "θb would be a tie"
    assert_same_probe(two, one)
    assert_same_profile(two / "profile" / "profile.parquet", one / "profile" / "profile.parquet")
    assert_same_models(two, one)
    manifest = json.loads((two / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())


@pytest.mark.multiprocess
def test_only_rank_zero_writes_the_run(two: Path) -> None:
    assert other_ranks_wrote(two.parent) == []
    shares = (audit_dir(two.parent) / "rank-1.log").read_text()
    assert "probe/.samples-step-00000.process-1.jsonl" in shares  # it measured its share of prompts
    assert re.search(r"profile/cache/\w+/part-00001\.parquet", shares)  # and scored its shard
    assert not [p for p in two.rglob("*") if ".process-" in p.name]


# -- one stage at a time, on copies of the one-process run -------------------------------------------
@pytest.mark.multiprocess
def test_profile_sharded_over_two_processes_is_exact(one: Path, env: dict[str, str], tmp_path: Path) -> None:
    run = copy_run(one, tmp_path / "root")
    shutil.rmtree(run / "profile")
    t3s(env, run.parent, 2, "profile", "--run", str(run))
    assert_same_profile(run / "profile" / "profile.parquet", one / "profile" / "profile.parquet")
    assert other_ranks_wrote(run.parent) == []
    # Shard 1 (examples 64-69) of θ0 and of θb was scored by the second process, and only there.
    for rank, count in (("0", 0), ("1", 2)):
        log = (audit_dir(run.parent) / f"rank-{rank}.log").read_text()
        assert len(re.findall(r"rename-to\trun/profile/cache/\w+/part-00001\.parquet", log)) == count


def write_uneven_masks(run: Path) -> None:
    """Four examples keeping 1, 2, 4 and 8 response tokens: the global batch is all four, two per
    process, and no two of them keep as many tokens as the other two."""
    from t3s.rundir import RunDir
    from t3s.selection import write_masks

    table = pq.read_table(RunDir(run).tokens).slice(0, 4)
    keeps = []
    for k, (start, end) in enumerate(
        zip(table.column("response_start").to_pylist(), table.column("response_end").to_pylist(), strict=True)
    ):
        assert end - start >= 2**k
        keep = np.zeros(len(table.column("input_ids")[k]), dtype=bool)
        keep[start : start + 2**k] = True
        keeps.append(keep)
    write_masks(RunDir(run).masks_dir("uneven"), table, keeps, {"policy": "uneven"})


@pytest.mark.multiprocess
def test_masked_training_normalises_by_the_global_kept_token_count(
    one: Path, model: Path, env: dict[str, str], tmp_path: Path
) -> None:
    models = {}
    for processes in (1, 2):
        run = copy_run(one, tmp_path / f"root{processes}")
        write_uneven_masks(run)
        t3s(env, run.parent, processes, "train", "--run", str(run), "--policy", "uneven")
        models[processes] = load_file(run / "train" / "uneven" / "model" / "model.safetensors")
        if processes == 2:
            assert other_ranks_wrote(run.parent) == []
    base = load_file(model / "model.safetensors")
    assert not all(torch.equal(tensor, base[key]) for key, tensor in models[1].items())
    for key, tensor in models[1].items():
        torch.testing.assert_close(models[2][key], tensor, rtol=0, atol=1e-5)


@pytest.mark.multiprocess
def test_killed_two_process_run_resumes(two: Path, model: Path, env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = write_config(root, model)
    run = root / "run"
    proc = launch(env, root, 2, "run", str(config))
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (run / "probe" / "metrics.jsonl").exists() and len(metrics(run)) >= 3:
            break  # checkpoint 2 is saved and measured
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "probe" / "bottleneck.json").exists(), "the probe finished before it could be killed"
    t3s(env, root, 2, "run", str(config))
    assert_same_probe(run, two)
    assert_same_models(run, two)
    assert other_ranks_wrote(root) == []
    assert not [p for p in run.rglob("*") if ".process-" in p.name]


# -- eval --------------------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_eval_sharded_over_two_processes_like_one(one: Path, env: dict[str, str], tmp_path: Path) -> None:
    bench = write_jsonl(
        tmp_path / "bench.jsonl",
        [{"id": f"q{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(6)],
    )
    args = ["--samples", "2", "--temperature", "0.1", "--max-tokens", "4", "--chunk", "2"]
    args += ["--verifier", "t3s_dist_verifier:verify", "--step", "0", "--step", "4"]
    out = {}
    for processes in (1, 2):
        run = copy_run(one, tmp_path / f"root{processes}")
        t3s(env, run.parent, processes, "eval", "--run", str(run), "-b", str(bench), *args)
        out[processes] = run / "eval" / "bench"
    assert other_ranks_wrote(out[2].parents[2]) == []
    assert (
        "eval/bench/step-00004.samples.process-1.jsonl"
        in (audit_dir(out[2].parents[2]) / "rank-1.log").read_text()
    )
    for label in ("step-00000", "step-00004"):
        samples = {n: lines(out[n] / f"{label}.samples.jsonl") for n in (1, 2)}
        assert len(samples[2]) == len(samples[1]) == 12  # 6 problems x 2 samples, each once
        by_key = {n: {(r["id"], r["sample"]): r for r in samples[n]} for n in (1, 2)}
        assert by_key[2] == by_key[1]
        summary = {n: json.loads((out[n] / f"{label}.json").read_text()) for n in (1, 2)}
        assert summary[2]["metrics"] == summary[1]["metrics"]
        assert summary[2]["per_problem"] == summary[1]["per_problem"]
        assert summary[2]["generated"] == 12
    curve = {
        n: [{k: v for k, v in r.items() if k != "model"} for r in lines(out[n] / "curve.jsonl")]
        for n in (1, 2)
    }
    assert curve[2] == curve[1] and 0 < curve[1][0]["avg@2"] < 1
    assert not list(out[2].glob("*.process-*"))


def test_eval_resumes_from_the_partial_samples_of_a_killed_job(
    tmp_path: Path, tiny_model: Path, tokenizer
) -> None:
    """Samples a killed multi-process evaluation left in its processes' files are not drawn again."""
    from t3s.evaluation import evaluate, load_bench

    importable_module(tmp_path, "t3s_dist_check", CHECK_MODULE)
    cfg = settings("t3s_dist_check:exact", chunk=1)
    bench = load_bench(write_jsonl(tmp_path / "arith.jsonl", BENCH_ROWS))
    out, samples = tmp_path / "res.json", tmp_path / "res.samples.jsonl"
    first = evaluate(
        str(tiny_model),
        bench,
        cfg,
        out,
        tokenizer=tokenizer,
        backend_factory=lambda p: FakeBackend(tokenizer, SCRIPT),
    )
    rows = lines(samples)
    write_jsonl(tmp_path / "res.samples.process-0.jsonl", rows[:4])
    write_jsonl(tmp_path / "res.samples.process-1.jsonl", rows[4:])
    samples.unlink()

    def no_backend(path: str):
        raise AssertionError("nothing should be generated")

    again = evaluate(str(tiny_model), bench, cfg, out, tokenizer=tokenizer, backend_factory=no_backend)
    assert again["generated"] == 0 and again["metrics"] == first["metrics"]
    assert lines(samples) == rows
    assert not list(tmp_path.glob("*.process-*"))


@pytest.mark.multiprocess
def test_a_process_that_cannot_see_its_group_stops(tmp_path: Path) -> None:
    """accelerate's state created bare before t3s asks: each process would do (and write) all the work."""
    script = tmp_path / "bare.py"
    script.write_text(
        "from accelerate import PartialState\nPartialState()\nfrom t3s import distributed\ndistributed.state()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode != 0
    # The first process to fail ends the job: the other may be stopped before it says so too.
    assert re.search(
        r"t3s\.errors\.T3SError: process [01] of a 2-process launch sees 1 process\(es\) \(DistributedType\.NO\); "
        "accelerate's state was created before t3s joined the group",
        proc.stderr,
    )


# -- sampled probe answers ---------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_sampled_probe_answers_do_not_depend_on_the_process_count(
    model: Path, env: dict[str, str], tmp_path: Path
) -> None:
    # Each process samples its share of the prompts in batches of its own; every (prompt, sample)
    # draws from a stream of its own, so the answers are those of one process.
    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(16))
    args = ["-m", str(model), "-d", str(data), "--steps", "2", "--batch-size", "4", "--micro-batch-size", "2",
            "--lr", "3e-3", "--eval-prompts", "6", "--samples", "2", "--temperature", "1.0", "--top-p", "0.95",
            "--max-new-tokens", "6", "--verifier", "t3s_dist_verifier:verify"]  # fmt: skip
    runs = {}
    for processes in (1, 2):
        root = tmp_path / f"root{processes}"
        root.mkdir()
        t3s(env, root, processes, "probe", *args, "--run", str(root / "run"))
        runs[processes] = root / "run"
    for step in range(3):
        name = f"samples/step-{step:05d}.jsonl"
        got, want = lines(runs[2] / "probe" / name), lines(runs[1] / "probe" / name)
        assert len(want) == 12 and got == want
    assert len({r["completion"] for r in lines(runs[1] / "probe" / "samples/step-00000.jsonl")}) > 6
    assert [r["train_accuracy"] for r in metrics(runs[2])] == [r["train_accuracy"] for r in metrics(runs[1])]
