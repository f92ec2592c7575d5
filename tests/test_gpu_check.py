"""benchmarks/gpu_check.sh runs as is: its CPU dry path prints the one table, every stage accounted for."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_path_prints_one_table() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--steps", "1", "--lengths", "64"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    start = lines.index("| stage | seconds | tokens/s | peak memory | status |")
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 :])
    }
    assert list(rows)[:4] == [
        "tiny: probe (train 1 steps + eval)",
        "tiny: profile",
        "tiny: train t3s (masked)",
        "tiny: whole chain",
    ]
    for stage in ("SmolLM2-135M: chain", "tests marked gpu", "vLLM generation"):
        assert rows[stage] == ["–", "–", "–", "skipped (--device cpu)"]
    [profile] = [name for name in rows if name.startswith("tiny: profile 64 tokens")]
    seconds, tok_s, peak, status = rows[profile]
    assert float(seconds) > 0 and float(tok_s) > 0 and peak.endswith(" GB")
    assert status == "ok; naive logits 0.01 GB"  # 64 x 49,152 x 4 bytes
    assert all(
        float(rows[s][0]) > 0 for s in ("tiny: profile", "tiny: train t3s (masked)", "tiny: whole chain")
    )
