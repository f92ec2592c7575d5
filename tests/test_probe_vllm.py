"""The probe's vLLM path on the CPU: a fake engine stands in for vLLM behind `vllm_engine`.

The fake records the model directory each engine is built over and answers the first
`CORRECT[k]` prompts of its k-th engine right, so the metrics rows and θb are known exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import t3s.generation
from t3s.errors import T3SError
from t3s.generation import Completion, SamplingParams

CORRECT = [1, 0, 3]  # θ0, step 1, step 2: step 1 is the bottleneck


def probe(*args: str) -> None:
    from t3s.cli import app

    app(["probe", *args], standalone_mode=False)


def base_args(model: Path, tmp_path: Path) -> list[str]:
    from conftest import arithmetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    return ["--model", str(model), "--data", str(data), "--run", str(tmp_path / "run"), "--backend", "vllm",
            "--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3",
            "--eval-prompts", "4", "--max-new-tokens", "6", "--mode", "all", "--seed", "7"]  # fmt: skip


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch, tokenizer) -> list[dict]:
    built: list[dict] = []

    class FakeVLLM:
        def __init__(
            self, model_path: str, stops: dict[int, str], *, dtype="auto", trust_remote_code=False, **engine
        ) -> None:
            self.k = len(built)
            built.append({"model": model_path, "stops": stops, "engine": engine})

        def generate(self, prompts, params: SamplingParams, on_batch=None) -> list[list[Completion]]:
            out = []
            for j, ids in enumerate(prompts):
                a, b = map(int, re.findall(r"What is (\d+)\+(\d+)\?", tokenizer.decode(ids))[-1])
                answer = a + b if j < CORRECT[self.k] else 0
                out.append([Completion(f"\\boxed{{{answer}}}", 4, "stop", "<|im_end|>")] * params.n)
            return out

    monkeypatch.setattr(t3s.generation, "VLLMEngine", FakeVLLM)
    return built


def test_vllm_probe_measures_theta0_from_its_own_directory_then_each_checkpoint(
    tiny_model: Path, tmp_path: Path, engines: list[dict]
) -> None:
    probe(*base_args(tiny_model, tmp_path))
    checkpoints = tmp_path / "run" / "probe" / "checkpoints"
    assert [e["model"] for e in engines] == [
        str(tiny_model.resolve()),
        str(checkpoints / "checkpoint-1"),
        str(checkpoints / "checkpoint-2"),
    ]
    for e in engines:  # the engine's tokenizer is the checkpoint's own; it stops at <|im_end|>
        assert e["engine"] == {"tokenizer": e["model"], "gpu_memory_utilization": 0.3}
        assert e["stops"] == {2: "<|im_end|>"}
    rows = [json.loads(line) for line in (tmp_path / "run/probe/metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_accuracy"], r["truncated"]) for r in rows] == [
        (0, 0.25, 0),
        (1, 0.0, 0),
        (2, 0.75, 0),
    ]
    assert json.loads((tmp_path / "run/probe/bottleneck.json").read_text())["step"] == 1
    samples = (tmp_path / "run/probe/samples/step-00002.jsonl").read_text().splitlines()
    assert [json.loads(s)["stop_token"] for s in samples] == ["<|im_end|>"] * 4


def test_vllm_probe_refuses_lora_before_it_starts(
    tiny_model: Path, tmp_path: Path, engines: list[dict]
) -> None:
    with pytest.raises(T3SError) as err:
        probe(*base_args(tiny_model, tmp_path), "--lora")
    assert str(err.value) == (
        "probe.eval.backend 'vllm' cannot load the LoRA probe's checkpoints (bare adapters); "
        "use backend 'transformers' with recipe.lora, or train all weights"
    )
    assert engines == [] and not (tmp_path / "run" / "probe" / "checkpoints").exists()
