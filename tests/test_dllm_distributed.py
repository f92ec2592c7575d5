"""dLLM training in two CPU processes (torchrun, gloo) reaches the weights one process reaches
accumulating the same global batch: the same masks are drawn for the same examples, and every
micro-batch's loss is normalised by the step's global loss-token count (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import arithmetic_rows, build_tiny_model, write_jsonl
from t3s.dllm.a2d import convert_checkpoint
from test_distributed import t3s

pytestmark = pytest.mark.multiprocess
JOB = Path(__file__).with_name("dllm_train_job.py")


@pytest.fixture(scope="module")
def inputs(tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dllm-dist")
    dllm = root / "a2d"
    convert_checkpoint(str(build_tiny_model(tokenizer, root / "ar")), dllm)
    rows = arithmetic_rows(12)
    for i, r in enumerate(rows):
        r["response"] += " Done." * (i % 4)  # unequal lengths: each micro-batch counts its own tokens
    return dllm, write_jsonl(root / "c.jsonl", rows)


@pytest.mark.parametrize("objective", ["mdm", "block"])
def test_two_processes_train_a_dllm_like_one_accumulating(inputs, tmp_path: Path, objective: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    weights = {}
    for processes in (1, 2):
        root = tmp_path / f"procs{processes}"
        root.mkdir()
        t3s(env, root, processes, *map(str, inputs), str(root / "out"), objective, script=JOB)
        weights[processes] = load_file(root / "out" / "checkpoint-3" / "model.safetensors")
    assert weights[1].keys() == weights[2].keys()
    start = load_file(inputs[0] / "model.safetensors")
    apart = {name: (weights[2][name] - tensor).abs().max().item() for name, tensor in weights[1].items()}
    assert max(apart.values()) <= 1e-5, apart
    assert any(not torch.equal(weights[1][n], start[n]) for n in start)  # it trained
