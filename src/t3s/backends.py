"""The one backend factory: every kind of backend the probe, `t3s eval`, teachers and the gate use.

`make_backend` builds a backend from a model already in memory (transformers) or from a spec:
`hf:PATH` (transformers), `vllm:PATH` (offline vLLM), an OpenAI-compatible endpoint, or a Python
function `python:MODULE:FUNCTION`. In-process engines are built at their first job, so a run whose
samples are all stored never loads a model. Their jobs are drawn in generate calls of prompts missing
the same number of samples, `chunk` prompts a call (all of them when None), each call seeded by
`seed(jobs, params)`: a chunked call hands its samples over once it returns, an unchunked call batch
by batch as the engine finishes them, so that a long call can be resumed.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.generation import (
    Backend,
    Completion,
    Engine,
    Job,
    SamplingParams,
    Sink,
    TransformersEngine,
    sample_seed,
    stop_tokens,
)
from t3s.imports import import_callable
from t3s.teacher.endpoint import EndpointBackend
from t3s.tokens import Template, encode_prompt

Kind = Literal["hf", "vllm", "openai", "python"]  # hf: transformers
SeedFn = Callable[[Sequence[Job], SamplingParams], int]


@dataclass(frozen=True)
class BackendSpec:
    kind: Kind
    target: str  # a checkpoint path, an endpoint URL or MODULE:FUNCTION
    name: str = ""  # a teacher's name: in its seeds and messages
    model: str | None = None  # endpoints: the served model's name (default: the only one served)
    api_key_env: str | None = None  # endpoints: the variable holding the key (default OPENAI_API_KEY)


def fixed_seed(jobs: Sequence[Job], params: SamplingParams) -> int:
    return params.seed


def chunk_seed(jobs: Sequence[Job], params: SamplingParams) -> int:
    """A seed of its own per call: resumed or added samples must not repeat earlier draws."""
    return int(digest(params.seed, [(j.id, list(j.samples)) for j in jobs]), 16) % 2**31


@dataclass(frozen=True)
class BackendOptions:
    """How a backend generates; each command fills in its own settings."""

    template: Template = "auto"
    batch_size: int = 32  # transformers: prompts per `model.generate`
    chunk: int | None = None  # engines: prompts per generate call (None: all in one)
    seed: SeedFn = fixed_seed  # engines: the seed of a generate call
    progress: str | None = "generate"  # transformers: the progress bar's label
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    engine: Mapping[str, Any] = field(default_factory=dict)  # more vLLM engine arguments
    concurrency: int = 16  # endpoints: requests in flight
    timeout: float = 3600.0  # endpoints: seconds per request
    retries: int = 8  # endpoints: retries of a request on 429, 5xx and connection errors


def _is_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)


def _calls(jobs: Sequence[Job], size: int | None) -> list[list[Job]]:
    """Jobs missing the same number of samples, `size` at a time (all when None), most samples first."""
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(len(job.samples), []).append(job)
    return [
        group[s : s + (size or len(group))]
        for _, group in sorted(groups.items(), reverse=True)
        for s in range(0, len(group), size or len(group))
    ]


class EngineBackend:
    """An engine in this process (transformers or vLLM) behind the job interface, built at its first job.

    Prompts that are not token ids yet (text, chat messages) are encoded with `tokenizer()` and the
    options' template.
    """

    def __init__(
        self,
        build: Callable[[], Engine],
        options: BackendOptions,
        *,
        tokenizer: Callable[[], Any] | None = None,
        spec: BackendSpec | None = None,
    ) -> None:
        self.build, self.options, self.tokenizer, self.spec = build, options, tokenizer, spec
        # The rendered prompt decides the samples as much as the weights do.
        self.model = f"{spec.target} template={options.template}" if spec else "in-memory model"
        self.engine: Engine | None = None

    def prepare(self) -> None:
        from t3s.models import _check_model_path

        if self.spec is not None:
            _check_model_path(self.spec.target)

    def info(self) -> dict[str, Any]:
        if self.spec is None:
            return {"backend": "hf", "template": self.options.template}
        return {"backend": self.spec.kind, "model": self.spec.target, "template": self.options.template}

    def _token_ids(self, prompt: Any) -> list[int]:
        if _is_token_ids(prompt):
            return prompt  # type: ignore[no-any-return]
        if self.tokenizer is None:
            raise T3SError("this backend takes prompts as token ids")
        return encode_prompt(self.tokenizer(), prompt, self.options.template)

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        if not jobs:
            return
        if self.engine is None:
            self.engine = self.build()
        for call in _calls(jobs, self.options.chunk):
            self._draw(self.engine, call, params, sink)

    def _draw(self, engine: Engine, call: list[Job], params: SamplingParams, sink: Sink) -> None:
        """One generate call: every job of `call` misses the same number of samples."""
        handed: set[int] = set()

        def hand(index: list[int], completions: list[list[Completion]]) -> None:
            handed.update(index)
            sink.add(
                [
                    (call[i], k, c)
                    for i, cs in zip(index, completions, strict=True)
                    for k, c in zip(call[i].samples, cs, strict=True)
                ]
            )

        n, seed = len(call[0].samples), self.options.seed(call, params)
        call_params = params.model_copy(update={"n": n, "seed": seed})
        prompts = [self._token_ids(j.prompt) for j in call]
        if self.options.chunk is None:
            # An unchunked call is handed over batch by batch, so that a kill loses a batch, not the call.
            out = engine.generate(prompts, call_params, on_batch=hand)
        else:
            out = engine.generate(prompts, call_params)
        rest = [i for i in range(len(call)) if i not in handed]
        if rest:
            hand(rest, [out[i] for i in rest])


class FunctionBackend:
    """`fn(prompt, *, sample, rng) -> str`, called once per sample with a deterministically seeded rng."""

    def __init__(self, name: str, ref: str) -> None:
        self.name, self.ref = name, ref
        self.model = f"python:{ref}"
        self.fn: Callable[..., str] | None = None

    def prepare(self) -> None:
        self.fn = import_callable(self.ref, f"teacher {self.name!r}")

    def info(self) -> dict[str, Any]:
        return {"backend": "python", "function": self.ref}

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        assert self.fn is not None, "prepare() first"
        for job in jobs:
            for k in job.samples:
                rng = random.Random(sample_seed(params.seed, self.name, job.key, k))
                prompt = job.prompt if isinstance(job.prompt, str) else [dict(m) for m in job.prompt]
                try:
                    text = self.fn(prompt, sample=k, rng=rng)
                except Exception as exc:  # the user's code: report where it failed, as one line
                    raise T3SError(
                        f"teacher {self.name!r}: {self.ref} raised {type(exc).__name__}: {exc} "
                        f"(prompt {job.id!r}, sample {k})"
                    ) from exc
                if not isinstance(text, str):
                    raise T3SError(
                        f"teacher {self.name!r}: {self.ref} returned {type(text).__name__}, not str "
                        f"(prompt {job.id!r}, sample {k})"
                    )
                sink.add([(job, k, Completion(text))])


def _saved_generation_config(model_path: str) -> Any:
    from transformers import GenerationConfig

    if not (Path(model_path) / "generation_config.json").exists():
        return None
    return GenerationConfig.from_pretrained(model_path)


def vllm_engine(
    model_path: str,
    tokenizer: Any,
    template: Template = "auto",
    *,
    tokenizer_path: str | None = None,
    **engine: Any,
) -> Engine:
    """A vLLM engine over `model_path` that stops where the transformers engine would."""
    from t3s import generation  # looked up at call time, so that a test can substitute VLLMEngine

    stops = stop_tokens(tokenizer, template, _saved_generation_config(model_path))
    return generation.VLLMEngine(model_path, stops, tokenizer=tokenizer_path or model_path, **engine)


def _engine(spec: BackendSpec, tokenizer: Any, options: BackendOptions, tokenizer_path: str | None) -> Engine:
    import torch

    from t3s.models import load_model, resolve_device, resolve_dtype

    if spec.kind == "vllm":
        # vLLM takes dtype names; ours (with aliases such as bf16) are checked and spelled out here.
        dtype = options.dtype
        if dtype != "auto":
            dtype = str(resolve_dtype(dtype, torch.device("cuda"))).removeprefix("torch.")
        return vllm_engine(
            spec.target,
            tokenizer,
            options.template,
            tokenizer_path=tokenizer_path,
            dtype=dtype,
            trust_remote_code=options.trust_remote_code,
            **options.engine,
        )
    device = resolve_device(options.device)
    model = load_model(
        spec.target,
        device=device,
        dtype=resolve_dtype(options.dtype, device),
        trust_remote_code=options.trust_remote_code,
    )
    return TransformersEngine(
        model, tokenizer, options.batch_size, progress=options.progress, template=options.template
    )


def make_backend(
    source: BackendSpec | Any,
    options: BackendOptions | None = None,
    *,
    tokenizer: Any | None = None,
    tokenizer_path: str | None = None,
) -> Backend:
    """The backend for `source`: a spec, or a transformers model already loaded (with its `tokenizer`).

    A checkpoint's `tokenizer` defaults to its own, loaded when first needed; vLLM reads the one at
    `tokenizer_path` (default: the checkpoint's).
    """
    options = options or BackendOptions()
    if not isinstance(source, BackendSpec):
        if tokenizer is None:
            raise T3SError("a model in memory needs its tokenizer to generate")
        model, tok = source, tokenizer
        return EngineBackend(
            lambda: TransformersEngine(
                model, tok, options.batch_size, progress=options.progress, template=options.template
            ),
            options,
            tokenizer=lambda: tok,
        )
    spec = source
    if spec.kind == "python":
        return FunctionBackend(spec.name, spec.target)
    if spec.kind == "openai":
        return EndpointBackend(
            spec.name,
            spec.target,
            model=spec.model,
            api_key_env=spec.api_key_env,
            concurrency=options.concurrency,
            timeout=options.timeout,
            retries=options.retries,
        )

    @functools.cache
    def own_tokenizer() -> Any:
        if tokenizer is not None:
            return tokenizer
        from t3s.models import load_tokenizer

        return load_tokenizer(spec.target, trust_remote_code=options.trust_remote_code)

    return EngineBackend(
        lambda: _engine(spec, own_tokenizer(), options, tokenizer_path),
        options,
        tokenizer=own_tokenizer,
        spec=spec,
    )
