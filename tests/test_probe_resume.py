"""The probe's accuracy sampling resumes like `t3s eval`: a measurement killed midway keeps the batches
it verified, and measuring the same checkpoint again generates only the prompts still missing.

A fake engine stands in for the transformers one behind `make_backend`: it answers every prompt
`\\boxed{a+b}` when a+b is even and a wrong sum otherwise, logs the prompts it generates for, and can
be killed after a number of batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

import t3s.backends
from conftest import arithmetic_rows
from t3s.data import Example
from t3s.generation import Completion, OnBatch, SamplingParams
from t3s.probe import AccuracyProbe, ProbeEval
from t3s.rundir import RunDir
from t3s.tokens import TokenizeConfig, tokenize_corpus

SETTINGS = ProbeEval(batch_size=2, loss=False, verifier="test_teacher_verifiers:boxed_gold")


class FakeEngine:
    generated: ClassVar[list[str]] = []  # every prompt a generate call was made for, across engines
    kill_after: ClassVar[int | None] = None  # batches handed over before a KeyboardInterrupt

    def __init__(self, model, tokenizer, batch_size: int = 32, progress=None, *, template="auto") -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size

    def _answer(self, ids: list[int]) -> Completion:
        a, b = map(int, re.findall(r"What is (\d+)\+(\d+)\?", self.tokenizer.decode(ids))[-1])
        answer = a + b if (a + b) % 2 == 0 else a + b + 1
        return Completion(f"so \\boxed{{{answer}}}", 4, "stop", "<|im_end|>")

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            if start // self.batch_size == FakeEngine.kill_after:
                raise KeyboardInterrupt  # the probe is killed in the middle of a generate call
            batch = list(range(start, min(start + self.batch_size, len(prompts))))
            FakeEngine.generated += [self.tokenizer.decode(prompts[i]) for i in batch]
            done = [[self._answer(prompts[i])] * params.n for i in batch]
            if on_batch is not None:
                on_batch(batch, done)
            out += done
        return out


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> type[FakeEngine]:
    monkeypatch.setattr(t3s.backends, "TransformersEngine", FakeEngine)
    monkeypatch.setattr(FakeEngine, "generated", [])
    monkeypatch.setattr(FakeEngine, "kill_after", None)
    return FakeEngine


@pytest.fixture
def data(tokenizer) -> tuple[list[Example], list]:
    examples = [Example(r["id"], r["prompt"], r["response"], r["answer"]) for r in arithmetic_rows(6)]
    items, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig())
    return examples, items


def measure(root: Path, data, tokenizer, step: int = 3, fingerprint: str = "fp") -> dict:
    examples, items = data
    probe = AccuracyProbe(RunDir(root), examples, items, tokenizer, "auto", SETTINGS, fingerprint=fingerprint)
    try:
        return probe.measure(object(), step, root)  # the fake engine never looks at the model
    finally:
        probe.verifier.close()


def test_a_killed_measurement_resumes_from_its_stored_samples(
    tmp_path: Path, tokenizer, data, engine: type[FakeEngine]
) -> None:
    reference = measure(tmp_path / "whole", data, tokenizer)
    assert 0 < reference["train_accuracy"] < 1 and len(engine.generated) == 6
    prompts = list(engine.generated)

    engine.generated, engine.kill_after = [], 2
    with pytest.raises(KeyboardInterrupt):
        measure(tmp_path / "run", data, tokenizer)
    assert engine.generated == prompts[:4]  # two batches were verified and stored before the kill
    probe_dir = tmp_path / "run" / "probe"
    assert [p.name for p in probe_dir.iterdir()] == [".samples-step-00003.process-0.jsonl"]

    engine.generated, engine.kill_after = [], None
    row = measure(tmp_path / "run", data, tokenizer)
    assert engine.generated == prompts[4:]  # only the missing prompts are generated
    assert row == reference
    samples = "samples/step-00003.jsonl"
    assert (probe_dir / samples).read_text() == (tmp_path / "whole" / "probe" / samples).read_text()
    assert not list(probe_dir.glob(".samples-*"))  # the step's row is in: its store is gone


@pytest.mark.parametrize("other", [{"fingerprint": "another-probe"}, {"step": 4}])
def test_stored_samples_serve_only_their_own_probe_and_step(
    tmp_path: Path, tokenizer, data, engine: type[FakeEngine], other: dict
) -> None:
    engine.kill_after = 2
    with pytest.raises(KeyboardInterrupt):
        measure(tmp_path, data, tokenizer)
    engine.generated, engine.kill_after = [], None
    measure(tmp_path, data, tokenizer, **other)
    assert len(engine.generated) == 6  # another probe's (or checkpoint's) samples are not reused
