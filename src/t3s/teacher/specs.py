"""Teacher specs and the backends behind one interface.

A spec is `NAME=TARGET`: `http(s)://HOST:PORT/v1` (an OpenAI-compatible endpoint),
`vllm:PATH` (offline vLLM), `hf:PATH` (transformers), `python:MODULE:FUNCTION`, or a bare checkpoint
PATH (vLLM when installed, else transformers). A backend receives jobs (the samples of one prompt
still missing from the store) and hands every finished sample to a sink as soon as it has it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal, Protocol

from t3s.data import Prompt
from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.generation import SamplingParams
from t3s.imports import import_callable

Kind = Literal["openai", "vllm", "hf", "python"]
ReasoningFormat = Literal["think-tags", "content-only"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPEC_HELP = (
    "NAME=http://HOST:PORT/v1, NAME=vllm:PATH, NAME=hf:PATH, NAME=python:MODULE:FUNCTION or NAME=PATH"
)


@dataclass(frozen=True)
class Trace:
    """One sample as the teacher returned it; reasoning sent in a separate field is kept apart."""

    content: str
    reasoning: str | None = None
    num_tokens: int | None = None
    finish_reason: str = "stop"

    def text(self, reasoning_format: ReasoningFormat) -> str:
        if reasoning_format == "think-tags" and self.reasoning:
            return f"<think>\n{self.reasoning}\n</think>\n\n{self.content}"
        return self.content


@dataclass(frozen=True)
class Job:
    """The samples of one prompt that are not in the store yet."""

    prompt_id: str
    prompt: Prompt
    prompt_hash: str
    samples: tuple[int, ...]


class Sink(Protocol):
    def add(self, job: Job, sample: int, trace: Trace) -> None: ...

    def fail(self, job: Job, sample: int, error: str) -> None: ...


class TeacherBackend(Protocol):
    # What produced the samples (model name, path or function): part of the store's key.
    model: str

    def prepare(self) -> None:
        """Check the teacher is usable (reachable, model served) before any sampling starts."""

    def info(self) -> dict[str, Any]:
        """A description for the statistics; never a secret."""

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None: ...


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    kind: Kind
    target: str
    model: str | None = None  # endpoints: the served model's name (default: the only one served)
    api_key_env: str | None = None  # endpoints: the variable holding the key (default OPENAI_API_KEY)


def parse_teacher(spec: str) -> TeacherSpec:
    name, sep, target = spec.partition("=")
    if not sep or not target:
        raise T3SError(f"--teacher {spec!r}: expected {_SPEC_HELP}")
    if not _NAME.match(name):
        raise T3SError(f"--teacher {spec!r}: name {name!r} must be letters, digits, '_', '.', '-'")
    if target.startswith(("http://", "https://")):
        return TeacherSpec(name, "openai", target.rstrip("/"))
    for kind in ("vllm", "hf", "python"):
        if target.startswith(f"{kind}:"):
            rest = target[len(kind) + 1 :]
            if not rest or (kind == "python" and rest.count(":") != 1):
                raise T3SError(f"--teacher {spec!r}: expected {_SPEC_HELP}")
            return TeacherSpec(name, kind, rest)  # type: ignore[arg-type]
    if "://" in target:
        raise T3SError(f"--teacher {spec!r}: only http:// and https:// endpoints are supported")
    return TeacherSpec(name, "vllm" if importlib.util.find_spec("vllm") else "hf", target)


def _assignments(values: Sequence[str], option: str, teachers: Sequence[TeacherSpec]) -> dict[str, str]:
    """`NAME=VALUE` for one endpoint teacher, or a bare VALUE for every endpoint teacher."""
    names = [t.name for t in teachers]
    endpoints = [t.name for t in teachers if t.kind == "openai"]
    out: dict[str, str] = {}
    for value in values:
        name, sep, rhs = value.partition("=")
        if not sep:
            out.update({n: value for n in endpoints if n not in out})
            continue
        if name not in names:
            raise T3SError(f"{option} {value!r}: no teacher named {name!r} (teachers: {', '.join(names)})")
        if name not in endpoints:
            raise T3SError(f"{option} {value!r}: teacher {name!r} is not an http(s) endpoint")
        out[name] = rhs
    return out


def parse_teachers(
    specs: Sequence[str], models: Sequence[str] = (), api_key_envs: Sequence[str] = ()
) -> list[TeacherSpec]:
    """The `--teacher`, `--teacher-model [NAME=]MODEL` and `--api-key-env [NAME=]VAR` options together."""
    if not specs:
        raise T3SError(f"give at least one --teacher {_SPEC_HELP}")
    teachers = [parse_teacher(s) for s in specs]
    names = [t.name for t in teachers]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise T3SError(f"--teacher: the name {dup[0]!r} is used twice")
    model = _assignments(models, "--teacher-model", teachers)
    key = _assignments(api_key_envs, "--api-key-env", teachers)
    return [dataclasses.replace(t, model=model.get(t.name), api_key_env=key.get(t.name)) for t in teachers]


def sample_seed(seed: int, teacher: str, prompt_hash: str, sample: int) -> int:
    """The seed of one sample: reruns ask for (and a Python teacher produces) the same sample again."""
    return int(digest(seed, teacher, prompt_hash, sample), 16) % 2**31


# -- a Python function ---------------------------------------------------------------------------
TeacherFn = Callable[..., str]


class PythonBackend:
    """`fn(prompt, *, sample, rng) -> str`, called once per sample with a deterministically seeded rng."""

    def __init__(self, teacher: str, ref: str) -> None:
        self.teacher, self.ref = teacher, ref
        self.model = f"python:{ref}"
        self.fn: TeacherFn | None = None

    def prepare(self) -> None:
        self.fn = import_callable(self.ref, f"teacher {self.teacher!r}")

    def info(self) -> dict[str, Any]:
        return {"backend": "python", "function": self.ref}

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        assert self.fn is not None, "prepare() first"
        for job in jobs:
            for k in job.samples:
                rng = random.Random(sample_seed(params.seed, self.teacher, job.prompt_hash, k))
                prompt = job.prompt if isinstance(job.prompt, str) else [dict(m) for m in job.prompt]
                try:
                    text = self.fn(prompt, sample=k, rng=rng)
                except Exception as exc:  # the user's code: report where it failed, as one line
                    raise T3SError(
                        f"teacher {self.teacher!r}: {self.ref} raised {type(exc).__name__}: {exc} "
                        f"(prompt {job.prompt_id!r}, sample {k})"
                    ) from exc
                if not isinstance(text, str):
                    raise T3SError(
                        f"teacher {self.teacher!r}: {self.ref} returned {type(text).__name__}, not str "
                        f"(prompt {job.prompt_id!r}, sample {k})"
                    )
                sink.add(job, k, Trace(text))


# -- offline vLLM and transformers ---------------------------------------------------------------
class OfflineBackend:
    """A checkpoint generated in this process from `encode_prompt` token ids, `batch_size` prompts at a time.

    The model is loaded only when some sample is missing, so a finished run never loads it again.
    """

    def __init__(
        self,
        teacher: str,
        kind: Literal["vllm", "hf"],
        path: str,
        *,
        template: Any = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        self.teacher, self.kind, self.path = teacher, kind, path
        self.template, self.batch_size, self.trust_remote_code = template, batch_size, trust_remote_code
        # The rendered prompt decides the samples as much as the weights do.
        self.model = f"{path} template={template}"

    def prepare(self) -> None:
        from t3s.models import _check_model_path

        _check_model_path(self.path)

    def info(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.path, "template": self.template}

    def _engine(self, tokenizer: Any) -> Any:
        from t3s.generation import TransformersBackend, vllm_backend
        from t3s.models import load_model

        if self.kind == "vllm":
            return vllm_backend(self.path, tokenizer, self.template, trust_remote_code=self.trust_remote_code)
        model = load_model(self.path, trust_remote_code=self.trust_remote_code)
        return TransformersBackend(
            model, tokenizer, self.batch_size, progress=f"{self.teacher} batch", template=self.template
        )

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        from t3s.models import load_tokenizer
        from t3s.tokens import encode_prompt

        if not jobs:
            return
        tokenizer = load_tokenizer(self.path, trust_remote_code=self.trust_remote_code)
        engine = self._engine(tokenizer)
        # One generate call serves prompts missing the same number of samples (n per prompt).
        ordered = sorted(jobs, key=lambda j: len(j.samples))
        for n, group in groupby(ordered, key=lambda j: len(j.samples)):
            same_n = list(group)
            for start in range(0, len(same_n), self.batch_size):
                chunk = same_n[start : start + self.batch_size]
                first = chunk[0]
                chunk_params = dataclasses.replace(
                    params,
                    n=n,
                    seed=sample_seed(params.seed, self.teacher, first.prompt_hash, first.samples[0]),
                )
                prompts = [encode_prompt(tokenizer, j.prompt, self.template) for j in chunk]
                for job, completions in zip(chunk, engine.generate(prompts, chunk_params), strict=True):
                    for k, c in zip(job.samples, completions, strict=True):
                        sink.add(job, k, Trace(c.text, None, c.num_tokens, c.finish_reason))


def make_backend(spec: TeacherSpec, settings: Any) -> TeacherBackend:
    """The backend for `spec`; `settings` is the command's TeacherSettings."""
    if spec.kind == "python":
        return PythonBackend(spec.name, spec.target)
    if spec.kind == "openai":
        from t3s.teacher.endpoint import EndpointBackend

        return EndpointBackend(
            spec.name,
            spec.target,
            model=spec.model,
            api_key_env=spec.api_key_env,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            retries=settings.retries,
        )
    return OfflineBackend(
        spec.name,
        spec.kind,
        spec.target,
        template=settings.template,
        batch_size=settings.batch_size,
        trust_remote_code=settings.trust_remote_code,
    )
