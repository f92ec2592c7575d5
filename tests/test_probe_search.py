"""The adaptive bottleneck search: its pure decisions, the live probe, resume, greedy answer reuse, replay."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import t3s.backends
from conftest import arithmetic_rows, write_jsonl
from t3s.generation import Completion, OnBatch, SamplingParams
from t3s.probe import AccuracyProbe, ProbeEval, ProbeSettings, choose_bottleneck, probe_fingerprint
from t3s.probe_search import AdaptiveSearch, Point, done, needed, next_step, replay, wilson_lower
from t3s.training import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]


def curve(correct: Sequence[int], total: int = 16) -> dict[int, Point]:
    return {step: Point(c, total) for step, c in enumerate(correct)}


# -- the pure decisions ---------------------------------------------------------------------------
def test_wilson_lower_bound_values() -> None:
    assert wilson_lower(8, 10, 0.975) == pytest.approx(0.4902, abs=1e-4)  # the textbook 95% interval
    assert wilson_lower(13, 16, 0.9) == pytest.approx(0.6608, abs=1e-4)
    assert wilson_lower(0, 16, 0.9) == 0.0


def test_finds_the_minimum_off_the_coarse_grid_and_stops_after_recovery() -> None:
    points = curve([8, 6, 3, 1, 2, 5, 9, 12, 15, 16, 16, 16, 16])  # the shock bottoms out at step 3
    found = replay(list(range(13)), points, AdaptiveSearch(stride=4))
    # Coarse 0, 4 (the running minimum), 8 (recovered: 15/16 bounds above 8/16); refine 3, then 3's
    # other neighbour 2; 5 is never needed.
    assert found.order == [0, 4, 8, 3, 2]
    assert found.bottleneck == 3 == choose_bottleneck([{"step": s, "train_accuracy": p.accuracy}
                                                       for s, p in points.items()])["step"]  # fmt: skip


def test_recovery_needs_the_confidence_bound_and_the_margin() -> None:
    grid = list(range(0, 10, 2))
    # 10/16 after the minimum: above θ0's 8/16, but its 90% lower bound (0.47) is not.
    measured = {0: Point(8, 16), 2: Point(2, 16), 4: Point(10, 16)}
    assert next_step(grid, measured, AdaptiveSearch(stride=1), available=8) == 6
    measured[4] = Point(14, 16)  # lower bound 0.70: recovered, so the coarse phase stops; refine 2
    assert next_step(grid, measured, AdaptiveSearch(stride=1), available=8) is None
    assert done(grid, measured, AdaptiveSearch(stride=1))
    assert next_step(grid, measured, AdaptiveSearch(stride=1, margin=0.25), available=8) == 6


def test_never_stops_before_the_minimum_is_bracketed() -> None:
    # Step 3 is far above θ0 but is the first minimum: the search goes on to the shock at 6, stops
    # at 9 (recovered after that minimum) and refines 5 and 7.
    points = curve([8, 10, 12, 16, 9, 4, 1, 3, 16, 16, 16, 16, 16])
    found = replay(list(range(13)), points, AdaptiveSearch(stride=3))
    assert found.bottleneck == 6 and found.order == [0, 3, 6, 9, 5, 7]


def test_waits_for_training_and_keeps_what_it_may_ask_for() -> None:
    """Live: checkpoints arrive one by one and the unneeded are deleted at once; every step the search
    asks for is still there, and it finds the exhaustive minimum (on random shock curves: falling
    from θ0 to the bottleneck, then recovering)."""
    rng = random.Random(0)
    settings = AdaptiveSearch(stride=3)
    for _ in range(200):
        n = rng.randint(6, 30)
        low = rng.randint(1, n - 1)
        down, up = rng.randint(1, 4), rng.randint(1, 4)
        acc = [min(16, (low - s) * down if s <= low else (s - low) * up) for s in range(n)]
        grid, measured, on_disk = list(range(n)), {}, set()
        for available in grid:
            on_disk.add(available)
            while (step := next_step(grid, measured, settings, available)) is not None:
                assert step in on_disk | {0}
                measured[step] = Point(acc[step], 16)
            on_disk &= needed(grid, measured, settings) | {available}
        assert done(grid, measured, settings)
        bottleneck = min((s for s in measured if s > 0), key=lambda s: (measured[s].accuracy, s))
        assert acc[bottleneck] == min(acc[1:])


def test_default_fingerprint_is_unchanged_and_adaptive_has_its_own() -> None:
    default = probe_fingerprint("tok", "some/hub-name", TrainRecipe(), ProbeSettings())
    assert default == "c69ced6b138a67c0"  # as pinned in test_settings
    exhaustive = ProbeSettings(adaptive=AdaptiveSearch(stride=5))  # unused by the exhaustive search
    assert probe_fingerprint("tok", "some/hub-name", TrainRecipe(), exhaustive) == default
    adaptive = probe_fingerprint("tok", "some/hub-name", TrainRecipe(), ProbeSettings(search="adaptive"))
    assert adaptive != default
    with pytest.raises(ValueError, match="search 'adaptive' has no accuracy to search with fixed_step"):
        ProbeSettings(search="adaptive", fixed_step=3)


# -- the live probe on the tiny model, a fake engine answering along a constructed curve ----------
ROWS = arithmetic_rows(8)
CURVE = [5, 3, 1, 2, 4, 6, 8, 8, 8]  # correct answers of 8 per step: θb = 2, off the stride-3 grid


class CurveEngine:
    """Answers the first CURVE[step] training prompts right, the rest wrong; can be killed at a step."""

    step: ClassVar[int] = 0  # the checkpoint being measured (set around `AccuracyProbe.measure`)
    kill_at: ClassVar[int | None] = None
    measured: ClassVar[list[int]] = []

    def __init__(self, model, tokenizer, batch_size: int = 32, progress=None, *, template="auto") -> None:
        self.tokenizer = tokenizer

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        if CurveEngine.step == CurveEngine.kill_at:
            raise KeyboardInterrupt
        CurveEngine.measured.append(CurveEngine.step)
        out = []
        for ids in prompts:
            a, b = map(int, re.findall(r"What is (\d+)\+(\d+)\?", self.tokenizer.decode(ids))[-1])
            rank = next(i for i, r in enumerate(ROWS) if r["prompt"] == f"What is {a}+{b}?")
            answer = a + b if rank < CURVE[CurveEngine.step] else a + b + 1
            out.append([Completion(f"so \\boxed{{{answer}}}", 4, "stop", "<|im_end|>")])
        if on_batch is not None:
            on_batch(list(range(len(prompts))), out)
        return out


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> type[CurveEngine]:
    monkeypatch.setattr(t3s.backends, "TransformersEngine", CurveEngine)
    monkeypatch.setattr(CurveEngine, "measured", [])
    monkeypatch.setattr(CurveEngine, "kill_at", None)
    original = AccuracyProbe.measure

    def measure(self, model, step, checkpoint, share_from=None):
        CurveEngine.step = step
        return original(self, model, step, checkpoint, share_from)

    monkeypatch.setattr(AccuracyProbe, "measure", measure)
    return CurveEngine


def probe(tiny_model: Path, run: Path, data: Path, search: str) -> dict:
    from t3s import api

    recipe = TrainRecipe(steps=8, batch_size=4, micro_batch_size=2, lr=3e-3, seed=7)
    settings = ProbeSettings(
        search=search,  # type: ignore[arg-type]
        eval=ProbeEval(max_new_tokens=6, verifier="test_teacher_verifiers:boxed_gold", loss=False),
    )
    return api.probe(run, str(tiny_model), data, recipe=recipe, settings=settings)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "probe" / "metrics.jsonl").read_text().splitlines()]


def test_live_adaptive_probe_finds_the_exhaustive_bottleneck_and_resumes_after_a_kill(
    tiny_model: Path, tmp_path: Path, engine: type[CurveEngine]
) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", ROWS)
    exhaustive = probe(tiny_model, tmp_path / "exhaustive", data, "exhaustive")
    assert exhaustive["step"] == 2 and engine.measured == list(range(9))

    engine.measured, engine.kill_at = [], 6  # killed measuring the coarse checkpoint 6
    with pytest.raises(KeyboardInterrupt):
        probe(tiny_model, tmp_path / "adaptive", data, "adaptive")
    assert [r["step"] for r in rows(tmp_path / "adaptive")] == [0, 3]
    engine.kill_at = None
    record = probe(tiny_model, tmp_path / "adaptive", data, "adaptive")
    # Coarse 0, 3, 6 (8/8 bounds above θ0's 5/8: recovered), then 2 and 1 from checkpoints kept on disk.
    assert engine.measured == [0, 3, 6, 2, 1]
    assert [r["step"] for r in rows(tmp_path / "adaptive")] == [0, 3, 6, 2, 1]
    assert record["step"] == 2 and record["search"] == "adaptive"
    assert (record["measured_steps"], record["grid_steps"]) == (5, 9)
    assert record["generated_tokens"] == 5 * 8 * 4 and record["reused_tokens"] == 0
    signal = [json.loads(x) for x in (tmp_path / "adaptive/probe/signal.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in signal) == list(range(9))  # every grid checkpoint, no generation
    assert all(r["own_answer_loss"] > 0 for r in signal + rows(tmp_path / "adaptive"))
    kept = {p.name for p in (tmp_path / "adaptive/probe/checkpoints").glob("checkpoint-*")}
    assert kept == {"checkpoint-2", "checkpoint-8"}  # online: θb and the final one, once refined


# -- greedy answer reuse ----------------------------------------------------------------------------
def test_greedy_reproduces_accepts_the_models_own_answer_and_rejects_another(tokenizer, tiny_model) -> None:
    from transformers import AutoModelForCausalLM

    from t3s.confidence import greedy_reproduces
    from t3s.tokens import TokenizedExample

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompt = tokenizer("What is 12+34?")["input_ids"]
    with torch.inference_mode():
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0].tolist()
    own = TokenizedExample("x", gen, len(prompt), len(gen))
    changed = list(gen)
    changed[-3] = (changed[-3] + 1) % len(tokenizer)
    other = TokenizedExample("y", changed, len(prompt), len(gen))
    assert greedy_reproduces(model, [own, other, own]) == [True, False, True]


def test_a_reused_answer_is_the_one_generation_gives(tokenizer, tiny_model, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from t3s.data import Example
    from t3s.rundir import RunDir
    from t3s.tokens import TokenizeConfig, tokenize_corpus

    examples = [Example(r["id"], r["prompt"], r["response"], r["answer"]) for r in arithmetic_rows(4)]
    items, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig())
    # A model that ends its turn at once (every logit 0 but EOS's): an answer that re-encodes exactly.
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    model.lm_head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.eos_token_id] = 1.0
    other = AutoModelForCausalLM.from_pretrained(tiny_model).eval()  # the random model: another answer
    settings = ProbeEval(max_new_tokens=6, loss=False, verifier="test_teacher_verifiers:boxed_gold")

    def measure(run: Path, m, step: int, share_from: int | None = None) -> dict:
        acc = AccuracyProbe(RunDir(run), examples, items, tokenizer, "auto", settings, fingerprint="fp")
        try:
            return acc.measure(m, step, run, share_from)
        finally:
            acc.verifier.close()

    first = measure(tmp_path / "a", model, 0)
    same = measure(tmp_path / "a", model, 1, share_from=0)  # the same weights reproduce every answer
    assert (same["generated_tokens"], same["reused_tokens"]) == (0, first["generated_tokens"])
    fresh = measure(tmp_path / "b", model, 1)
    assert fresh["generated_tokens"] == first["generated_tokens"] and fresh["reused_tokens"] == 0
    samples = "probe/samples/step-00001.jsonl"
    assert (tmp_path / "a" / samples).read_text() == (tmp_path / "b" / samples).read_text()
    moved = measure(tmp_path / "a", other, 2, share_from=0)  # other weights: answers differ, generated
    assert moved["reused_tokens"] == 0 and moved["generated_tokens"] > 0


# -- the benchmark's replay ---------------------------------------------------------------------------
def test_benchmark_replays_a_stored_exhaustive_probe(tmp_path: Path) -> None:
    probe_dir = tmp_path / "run" / "probe"
    (probe_dir / "samples").mkdir(parents=True)
    correct = [5, 3, 1, 2, 4, 6, 8, 8, 8]
    for step, c in enumerate(correct):
        # Steps 6-8 give identical answers: the replay counts them as reusable from their neighbour.
        text = "same" if step >= 6 else f"answer {step}"
        write_jsonl(
            probe_dir / "samples" / f"step-{step:05d}.jsonl",
            [
                {
                    "id": f"p{i}",
                    "completion": text,
                    "correct": i < c,
                    "num_tokens": 10,
                    "finish_reason": "stop",
                    "stop_token": "<|im_end|>",
                    "error": None,
                }
                for i in range(8)
            ],
        )
    write_jsonl(
        probe_dir / "metrics.jsonl",
        [{"step": s, "train_accuracy": c / 8, "samples": 8} for s, c in enumerate(correct)],
    )
    (probe_dir / "bottleneck.json").write_text(json.dumps({"step": 2}))
    (tmp_path / "partial" / "probe").mkdir(parents=True)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "probe_search.py"),
            str(tmp_path / "run"),
            str(tmp_path / "partial"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[-2] == (
        f"| {tmp_path / 'run'} | 9 ckpts (every 1) | 2 | 2 | 0 / 0 | [0, 3, 6, 2, 1] | 56% | 56% "
        "| n/a (no signal.jsonl) |"
    )
    assert (
        lines[-1]
        == f"| {tmp_path / 'partial'} | no finished probe (no probe/bottleneck.json) | | | | | | | |"
    )
