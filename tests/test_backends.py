"""The one backend factory: each kind it builds, and how in-process engines are called."""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pytest

from t3s.backends import (
    BackendOptions,
    BackendSpec,
    EngineBackend,
    FunctionBackend,
    chunk_seed,
    make_backend,
)
from t3s.errors import T3SError
from t3s.generation import Completion, Job, OnBatch, SamplingParams, TransformersEngine, sample_seed
from t3s.teacher.endpoint import EndpointBackend
from t3s.tokens import encode_prompt


class Sink:
    def __init__(self) -> None:
        self.samples: list[tuple[str, int, Completion]] = []

    def add(self, samples: Sequence[tuple[Job, int, Completion]]) -> None:
        self.samples += [(job.id, k, c) for job, k, c in samples]

    def fail(self, job: Job, sample: int, error: str) -> None:
        raise AssertionError(error)


SHORT = SamplingParams(max_new_tokens=3)


def collect(backend, jobs: Sequence[Job], params: SamplingParams = SHORT):
    sink = Sink()
    backend.collect(jobs, params, sink)
    return sink.samples


def test_a_model_in_memory_generates_with_transformers(tiny_model: Path, tokenizer) -> None:
    from t3s.models import load_model

    model = load_model(str(tiny_model))
    backend = make_backend(model, BackendOptions(batch_size=3, progress="p"), tokenizer=tokenizer)
    assert isinstance(backend, EngineBackend) and backend.engine is None  # built at its first job
    ids = encode_prompt(tokenizer, "What is 1+1?")
    [(id_, k, c)] = collect(backend, [Job("q", ids, "h", (0,))])
    assert (id_, k, 1 <= c.num_tokens <= 3) == ("q", 0, True)
    engine = backend.engine
    assert isinstance(engine, TransformersEngine) and engine.model is model
    assert (engine.batch_size, engine.progress) == (3, "p")
    with pytest.raises(T3SError, match="needs its tokenizer"):
        make_backend(model)


def test_a_checkpoint_is_loaded_only_for_its_first_job(tiny_model: Path, tokenizer) -> None:
    backend = make_backend(BackendSpec("hf", str(tiny_model), "t"), BackendOptions(template="plain"))
    backend.prepare()
    assert backend.model == f"{tiny_model} template=plain"
    assert backend.info() == {"backend": "hf", "model": str(tiny_model), "template": "plain"}
    collect(backend, [])
    assert backend.engine is None
    # Text prompts are encoded with the checkpoint's own tokenizer and the options' template.
    [(_, _, c)] = collect(backend, [Job("q", "What is 1+1?", "h", (0,))])
    assert isinstance(backend.engine, TransformersEngine) and c.finish_reason in ("stop", "length")
    with pytest.raises(T3SError, match="no such directory"):
        make_backend(BackendSpec("hf", "/nonexistent/model")).prepare()


def test_vllm_engines_get_the_options_and_the_templates_stops(
    tiny_model: Path, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}

    class LLM:
        def __init__(self, **kwargs) -> None:
            seen["init"] = kwargs

        def generate(self, requests, sp, use_tqdm=True):
            seen["params"] = sp.kwargs
            out = types.SimpleNamespace(text="4", token_ids=[7, 2], finish_reason="stop")
            return [types.SimpleNamespace(outputs=[out]) for _ in requests]

    class FakeSamplingParams:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=FakeSamplingParams)
    )
    options = BackendOptions(dtype="bf16", engine={"gpu_memory_utilization": 0.3})
    backend = make_backend(
        BackendSpec("vllm", str(tiny_model)), options, tokenizer=tokenizer, tokenizer_path="/tok"
    )
    [(_, _, c)] = collect(backend, [Job("q", [1, 2, 3], "h", (0,))])
    assert seen["init"] == {
        "model": str(tiny_model),
        "dtype": "bfloat16",
        "trust_remote_code": False,
        "tokenizer": "/tok",
        "gpu_memory_utilization": 0.3,
    }
    assert seen["params"]["stop_token_ids"] == [2]
    assert c == Completion("4", 2, "stop", "<|im_end|>")


def test_endpoints_and_python_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "k")
    options = BackendOptions(concurrency=3, timeout=5.0, retries=1)
    spec = BackendSpec("openai", "http://h:1/v1", "r1", model="m", api_key_env="MY_KEY")
    endpoint = make_backend(spec, options)
    assert isinstance(endpoint, EndpointBackend)
    assert (endpoint.teacher, endpoint.url, endpoint.model) == ("r1", "http://h:1/v1", "m")
    assert (endpoint.concurrency, endpoint.timeout, endpoint.retries) == (3, 5.0, 1)
    assert endpoint.info()["api_key_env"] == "MY_KEY"

    from test_teacher import coin_teacher

    fn = make_backend(BackendSpec("python", "test_teacher:coin_teacher", "toy"))
    assert isinstance(fn, FunctionBackend) and fn.model == "python:test_teacher:coin_teacher"
    fn.prepare()
    samples = collect(fn, [Job("p", "What is 2+3?", "h", (1, 3))], SamplingParams(seed=5))
    # Each sample draws from its own rng, seeded by (seed, teacher, prompt key, sample index).
    expected = [
        ("p", k, coin_teacher("What is 2+3?", sample=k, rng=random.Random(sample_seed(5, "toy", "h", k))))
        for k in (1, 3)
    ]
    assert [(id_, k, c.text) for id_, k, c in samples] == expected


class ScriptedEngine:
    """Records each generate call (prompts, n, seed) and reports batches of two when asked to."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], int, int]] = []
        self.reported: list[list[int]] = []

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        self.calls.append((list(prompts), params.n, params.seed))
        out = [[Completion(f"{p[0]}.{k}", 1) for k in range(params.n)] for p in prompts]
        for start in range(0, len(prompts), 2):
            if on_batch is not None:
                batch = list(range(start, min(start + 2, len(prompts))))
                self.reported.append(batch)
                on_batch(batch, [out[i] for i in batch])
        return out


def test_engine_calls_group_prompts_missing_as_many_samples() -> None:
    jobs = [
        Job(f"q{i}", [i], f"h{i}", samples) for i, samples in enumerate([(0, 1), (1,), (0, 1), (0, 1), (1,)])
    ]
    params = SamplingParams(n=2, temperature=1.0, seed=9)
    engine = ScriptedEngine()
    chunked = EngineBackend(lambda: engine, BackendOptions(chunk=2, seed=chunk_seed))
    samples = collect(chunked, jobs, params)
    # Two samples missing first, `chunk` prompts a call, each call with a seed of its own.
    assert [(prompts, n) for prompts, n, _ in engine.calls] == [([[0], [2]], 2), ([[3]], 2), ([[1], [4]], 1)]
    assert engine.calls[0][2] == chunk_seed(jobs[0:3:2], params) != engine.calls[1][2]
    assert engine.reported == []  # a chunked call hands its samples over when it returns
    assert [(id_, k, c.text) for id_, k, c in samples[:4]] == [
        ("q0", 0, "0.0"),
        ("q0", 1, "0.1"),
        ("q2", 0, "2.0"),
        ("q2", 1, "2.1"),
    ]
    assert ("q4", 1, "4.0") in [(id_, k, c.text) for id_, k, c in samples]  # sample indices as asked

    engine = ScriptedEngine()
    collect(EngineBackend(lambda: engine, BackendOptions()), jobs[:4:2] + jobs[3:4], params)
    assert [(len(prompts), n, seed) for prompts, n, seed in engine.calls] == [
        (3, 2, 9)
    ]  # one call, params.seed
    assert engine.reported == [[0, 1], [2]]  # handed over batch by batch
