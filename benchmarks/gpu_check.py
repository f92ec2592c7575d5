"""The GPU check behind `benchmarks/gpu_check.sh`: every GPU path of t3s once, timed, in one table.

Stages (default, CUDA; about 8 minutes on one H100/H200):
  1. `t3s run` chain (probe in bf16, profile, select, masked training of the t3s policy) on a tiny
     random Llama over SmolLM2's tokenizer, then on SmolLM2-135M-Instruct;
  2. the tests marked `gpu` (pytest -m gpu);
  3. greedy generation with vLLM from SmolLM2-135M, if vllm is importable;
  4. `t3s profile` tokens/s against its limit (half a bare forward) and peak memory, at 8K and 32K
     tokens per sequence (`benchmarks/profile_throughput.py`).

`--device cpu` is the dry path: float32, the tiny model only, 256- and 512-token sequences, no
vLLM and no CUDA tests (listed as skipped); it checks the script itself in a few minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import profile_throughput as pt  # this directory is on sys.path when the script runs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    stage: str
    seconds: float | None = None
    tok_s: float | None = None
    peak: int | None = None
    status: str = "ok"


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def table(rows: list[Row]) -> str:
    lines = ["| stage | seconds | tokens/s | peak memory | status |", "|---|---|---|---|---|"]
    for r in rows:
        peak = None if r.peak is None else r.peak / 1e9
        lines.append(
            f"| {r.stage} | {_cell(r.seconds, '{:.1f}')} | {_cell(r.tok_s, '{:.0f}')} "
            f"| {_cell(peak, '{:.2f} GB')} | {r.status} |"
        )
    return "\n".join(lines)


def tiny_model(out: Path, tokenizer_path: str) -> str:
    """A random 2-layer Llama (hidden 64) over SmolLM2's vocabulary and tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from t3s.models import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768 + 64,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def corpus(path: Path, n: int) -> Path:
    """`n` testbed additions answered in the teacher's "reverse" style."""
    from t3s.testbed.task import STYLES, TaskSpec, make_problems, problem_id, prompt

    rows = [
        {"id": problem_id(p), "prompt": prompt(p), "response": STYLES["reverse"](p), "answer": str(sum(p))}
        for p in make_problems(TaskSpec(), n, seed=0)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _peak_reset(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _peak(cuda: bool) -> int:
    import torch

    return int(torch.cuda.max_memory_allocated()) if cuda else pt._vm_hwm_bytes()


def chain(label: str, model: str, work: Path, cuda: bool, steps: int, examples: int) -> list[Row]:
    """`t3s run` (probe, profile, select, train t3s) in this process; one row per stage."""
    import pyarrow.parquet as pq

    from t3s.config import load_config
    from t3s.pipeline import run_pipeline

    run = work / f"run-{label}"
    cfg = {
        "run_dir": str(run), "model": model, "data": str(corpus(work / f"{label}.jsonl", examples)),
        "tokenize": {"template": "plain", "max_length": 160},
        "recipe": {"steps": steps, "batch_size": 16, "micro_batch_size": 16, "lr": 1e-4, "seed": 0,
                   "freeze_embeddings": True, "mixed_precision": "auto"},
        "probe": {"mode": "online", "eval": {"every": max(1, steps // 3), "prompts": 16 if cuda else 4,
                                             "max_new_tokens": 48 if cuda else 8,
                                             "verifier": "t3s.testbed.task:verify"}},
        "policies": ["t3s"], "rrt": False,
    }  # fmt: skip
    path = work / f"{label}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg), encoding="utf-8")
    _peak_reset(cuda)
    start = time.perf_counter()
    run_pipeline(load_config(path, []))
    total = time.perf_counter() - start
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    stages = manifest["stages"]
    tokens = sum(len(r) for r in pq.read_table(run / "tokens.parquet").column("input_ids").to_pylist())
    trained = steps * 16 * tokens / examples  # tokens per step x steps (the corpus is cycled)
    scored = len(stages["profile"]["summary"]["models"]) * tokens
    rows = [
        Row(f"{label}: probe (train {steps} steps + eval)", stages["probe"]["seconds"]),
        Row(f"{label}: profile", stages["profile"]["seconds"], scored / stages["profile"]["seconds"]),
        Row(f"{label}: train t3s (masked)", stages["train:t3s"]["seconds"], trained / stages["train:t3s"]["seconds"]),
        Row(f"{label}: whole chain", total, peak=_peak(cuda)),
    ]  # fmt: skip
    return rows


def gpu_tests() -> Row:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(ROOT / "tests")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    status = last if done.returncode == 0 else f"FAILED: {last}"
    return Row("tests marked gpu", time.perf_counter() - start, status=status)


def vllm_generation(model: str, prompts: int = 64, new_tokens: int = 64) -> Row:
    from t3s.generation import SamplingParams, VLLMEngine
    from t3s.models import load_tokenizer

    tok = load_tokenizer(model)
    ids = [tok(f"What is {i} + {2 * i}?")["input_ids"] for i in range(prompts)]
    engine = VLLMEngine(model, {tok.eos_token_id: tok.eos_token}, gpu_memory_utilization=0.3)
    start = time.perf_counter()
    out = engine.generate(ids, SamplingParams(max_new_tokens=new_tokens))
    seconds = time.perf_counter() - start
    made = sum(c.tokens for samples in out for c in samples)
    return Row(f"vLLM greedy generation ({prompts} prompts)", seconds, made / seconds)


def profile_rows(model: str, label: str, lengths: list[int], work: Path, device: str) -> list[Row]:
    rows = []
    thetab = pt.model_copy(model, work / f"thetab-{label}", noise=1e-3)
    for length in lengths:
        r = pt.throughput(model, thetab, length, length, 1, work, device, None)
        mem = pt.peak_memory(model, length, None, device, None)
        rows.append(
            Row(
                f"{label}: profile {length} tokens (ratio to bare/2: {r['ratio']:.2f}, scoring {r['scoring_ratio']:.2f})",
                length / r["profile_tok_s"][0], r["profile_tok_s"][0], mem["peak_bytes"],
                f"ok; naive logits {mem['naive_logits_bytes'] / 1e9:.2f} GB",
            )
        )  # fmt: skip
    return rows


def attempt(rows: list[Row], name: str, fn: Callable[[], Any]) -> None:
    """Run one stage; a failure is a row of the table, and the check goes on to the next stage."""
    try:
        out = fn()
        rows.extend(out if isinstance(out, list) else [out])
    except Exception as exc:  # reported in the table and in the exit status
        rows.append(Row(name, status=f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=None, help="probe/training steps (cuda 12, cpu 2)")
    ap.add_argument("--lengths", type=int, nargs="*", default=None, help="profile lengths (cuda 8192 32768)")
    args = ap.parse_args(argv)
    import torch

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for the dry path", file=sys.stderr)
        return 2
    if not cuda:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry path must not touch a GPU, even where one exists
    steps = args.steps or (12 if cuda else 2)
    lengths = args.lengths if args.lengths is not None else ([8192, 32768] if cuda else [256, 512])
    from t3s.testbed.smollm2 import smollm2_path

    smollm2 = str(smollm2_path())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="t3s-gpu-check-") as tmp:
        work = Path(tmp)
        tiny = tiny_model(work / "tiny", smollm2)
        attempt(rows, "tiny: chain", lambda: chain("tiny", tiny, work, cuda, steps, 64 if cuda else 32))
        if cuda:
            attempt(
                rows, "SmolLM2-135M: chain", lambda: chain("SmolLM2-135M", smollm2, work, cuda, steps, 256)
            )
            attempt(rows, "tests marked gpu", gpu_tests)
            if importlib.util.find_spec("vllm") is not None:
                attempt(rows, "vLLM generation", lambda: vllm_generation(smollm2))
            else:
                rows.append(Row("vLLM generation", status="skipped: vllm not importable"))
            attempt(
                rows,
                "SmolLM2-135M: profile",
                lambda: profile_rows(smollm2, "SmolLM2-135M", lengths, work, "cuda"),
            )
        else:
            rows += [Row("SmolLM2-135M: chain", status="skipped (--device cpu)"),
                     Row("tests marked gpu", status="skipped (--device cpu)"),
                     Row("vLLM generation", status="skipped (--device cpu)")]  # fmt: skip
            attempt(rows, "tiny: profile", lambda: profile_rows(tiny, "tiny", lengths, work, "cpu"))
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nt3s GPU check on {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print(table(rows))
    return 1 if any(r.status.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
