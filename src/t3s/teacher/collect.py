"""`t3s teacher`: collect k samples per prompt from each teacher, verify, keep one correct trace each.

Output directory layout:

    OUT/<teacher>/samples.jsonl   the resumable store (every sample ever received, all settings)
    OUT/<teacher>/corpus.jsonl    one kept trace per prompt, t3s corpus format, `teacher` set
    OUT/<teacher>/stats.json      pass rate per prompt, kept/dropped counts, token lengths, failures
    OUT/corpus.jsonl              every teacher's corpus, ids prefixed `<teacher>/` to stay unique
    OUT/stats.json                the per-teacher summaries together

A sample counts as correct only if it stopped by itself (finish reason "stop") and the verifier
accepts its trace; a truncated one is never kept. Among the correct samples of a prompt one is
kept at random, seeded by (seed, teacher, prompt); a prompt without any is dropped and counted.
Verdicts whose verifier raised or timed out are counted (`verifier_errors`); more than
`max_verifier_errors` of a teacher's verdicts stop the command before any corpus is written.

A stored sample's key (`t3s.store`) is (teacher, generation hash, prompt hash, sample index). The
generation hash covers the model and every sampling parameter, so changing one starts a separate key
space in the same file; the number of samples per prompt is not part of it, so asking for more
samples later only tops prompts up. A rerun after a kill sends exactly the requests whose key is
missing; identical prompts share their samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from t3s.backends import BackendOptions, BackendSpec, make_backend
from t3s.data import Example, PromptItem, load_prompts, write_corpus
from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.generation import (
    Backend,
    Completion,
    Job,
    ReasoningFormat,
    SampledSettings,
    SamplingParams,
    sample_seed,
)
from t3s.io import write_json
from t3s.progress import Bar, bar
from t3s.sampling import SampleRecord, check_verifier_errors, verify_samples
from t3s.store import SampleStore
from t3s.tokens import Template
from t3s.verify import VerifierPool, VerifyFn, load_verifier


class TeacherSettings(SampledSettings):
    """Sampling, verification and transport settings shared by every teacher of one command."""

    model_config = ConfigDict(extra="forbid")
    samples: int = Field(16, ge=1, description="samples per prompt and teacher")
    temperature: float = Field(0.6, ge=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: the probability mass kept")
    max_tokens: int = Field(32768, ge=1, description="new tokens per sample")
    seed: int = Field(0, description="the sampling seed")
    reasoning_format: ReasoningFormat = Field(
        "think-tags",
        description="think-tags: <think>reasoning</think> then the answer; content-only: the answer",
    )
    verifier: str = Field("math", description="'math' (math-verify) or module:function")
    verify_timeout: float = Field(10.0, gt=0, description="seconds per answer")
    max_verifier_errors: float = Field(
        0.05, ge=0, le=1, description="stop when more of a teacher's verdicts are verifier errors (fraction)"
    )
    concurrency: int = Field(16, ge=1, description="requests in flight per endpoint")
    timeout: float = Field(3600.0, gt=0, description="seconds per request")
    retries: int = Field(8, ge=0, description="retries on 429, 5xx and connection errors, with backoff")
    batch_size: int = Field(32, ge=1, description="prompts per generate call (vllm:, hf:)")
    template: Template = Field("auto", description="prompt format: auto (chat template if any), chat, plain")
    trust_remote_code: bool = Field(
        False, description="allow custom model code from the checkpoint (off by default)"
    )

    @property
    def max_new_tokens(self) -> int:  # the name SampledSettings.sampling reads; the setting is max_tokens
        return self.max_tokens

    def backend_options(self, teacher: str) -> BackendOptions:
        return BackendOptions(
            template=self.template,
            batch_size=self.batch_size,
            # One generate call per `batch_size` prompts, seeded by its first sample.
            chunk=self.batch_size,
            seed=functools.partial(_call_seed, teacher),
            progress=f"{teacher} batch",
            trust_remote_code=self.trust_remote_code,
            concurrency=self.concurrency,
            timeout=self.timeout,
            retries=self.retries,
        )


def _call_seed(teacher: str, jobs: Sequence[Job], params: SamplingParams) -> int:
    return sample_seed(params.seed, teacher, jobs[0].key, jobs[0].samples[0])


def generation_hash(model: str, params: SamplingParams) -> str:
    """What a teacher's samples depend on besides the prompt: a store key space of its own."""
    return digest(model, params.temperature, params.top_p, params.max_new_tokens, params.seed)


def _completion(row: dict[str, Any]) -> Completion:
    return Completion(
        row["content"], row.get("num_tokens"), row["finish_reason"], reasoning=row.get("reasoning")
    )


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Two commands appending to the same store would each send the other's missing requests."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise T3SError(f"{out}: another `t3s teacher` command is writing there") from None
        yield


@dataclass
class _Sink:
    """Stores each sample the moment it arrives and moves the progress bar."""

    store: SampleStore
    bar: Bar
    received: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, samples: Sequence[tuple[Job, int, Completion]]) -> None:
        for job, k, c in samples:
            self.store.add(
                {
                    **self.store.space,
                    "prompt_hash": job.key,
                    "sample": k,
                    "prompt_id": job.id,
                    "content": c.text,
                    "reasoning": c.reasoning,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
            self.received += 1
            self.bar.advance(1, also=c.num_tokens or 0)

    def fail(self, job: Job, sample: int, error: str) -> None:
        self.failures.append(f"prompt {job.id!r} sample {sample}: {error}")
        self.bar.advance(1)


@dataclass
class _Collected:
    spec: BackendSpec
    backend: Backend
    store: SampleStore
    requested: int
    received: int
    failures: list[str]

    def sample(self, prompt_hash: str, k: int) -> Completion | None:
        row = self.store.rows.get((prompt_hash, k))
        return None if row is None else _completion(row)


def missing_jobs(prompts: Sequence[PromptItem], store: SampleStore, samples: int) -> list[Job]:
    """One job per distinct prompt with the sample indices the store lacks (identical prompts share)."""
    jobs: dict[str, Job] = {}
    for p in prompts:
        h = digest(p.prompt)
        missing = tuple(k for k in range(samples) if (h, k) not in store.rows)
        if missing and h not in jobs:
            jobs[h] = Job(p.id, p.prompt, h, missing)
    return list(jobs.values())


def _collect_one(
    spec: BackendSpec,
    backend: Backend,
    prompts: Sequence[PromptItem],
    out: Path,
    params: SamplingParams,
) -> _Collected:
    space = {"teacher": spec.name, "generation": generation_hash(backend.model, params)}
    store = SampleStore(out / spec.name / "samples.jsonl", space, key=("prompt_hash",))
    jobs = missing_jobs(prompts, store, params.n)
    requested = sum(len(j.samples) for j in jobs)
    with bar(f"teacher {spec.name}", total=requested, unit="samples", also_unit="tokens") as progress:
        sink = _Sink(store, progress)
        backend.collect(jobs, params, sink)
    return _Collected(spec, backend, store, requested, sink.received, sink.failures)


def _lengths(values: Sequence[int | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"count": len(known), "min": min(known), "mean": sum(known) / len(known), "max": max(known)}


def _select(
    got: _Collected,
    prompts: Sequence[PromptItem],
    settings: TeacherSettings,
    verdicts: dict[tuple[str, int], SampleRecord],
) -> tuple[list[Example], dict[str, Any]]:
    """Keep one correct trace per prompt at random (seeded); the teacher's statistics beside it."""
    name, fmt = got.spec.name, settings.reasoning_format
    errors = check_verifier_errors(
        list(verdicts.values()), settings.max_verifier_errors, f"teacher {name}", "--max-verifier-errors"
    )
    kept: list[Example] = []
    per_prompt: list[dict[str, Any]] = []
    all_tokens: list[int | None] = []
    kept_tokens: list[int | None] = []
    for p in prompts:
        h = digest(p.prompt)
        present = {k: t for k in range(settings.samples) if (t := got.sample(h, k)) is not None}
        correct = [k for k, t in present.items() if t.finish_reason == "stop" and verdicts[(p.id, k)].correct]
        failed = [v.error for k in present if (v := verdicts.get((p.id, k))) is not None and v.error]
        keep = random.Random(digest(settings.seed, name, h, "keep")).choice(correct) if correct else None
        all_tokens += [t.num_tokens for t in present.values()]
        if keep is not None:
            trace = present[keep]
            kept.append(Example(p.id, p.prompt, trace.with_reasoning(fmt), p.answer, teacher=name))
            kept_tokens.append(trace.num_tokens)
        per_prompt.append(
            {
                "id": p.id,
                "samples": len(present),
                "correct": len(correct),
                "truncated": sum(t.finish_reason == "length" for t in present.values()),
                "pass_rate": len(correct) / len(present) if present else None,
                "kept_sample": keep,
            }
            | ({"verifier_errors": len(failed), "verifier_error": failed[0]} if failed else {})
        )
    n_samples = sum(r["samples"] for r in per_prompt)
    n_correct = sum(r["correct"] for r in per_prompt)
    stats = {
        "teacher": name,
        **got.backend.info(),
        "generation": got.store.space["generation"],
        "sampling": {
            "samples": settings.samples,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
            "seed": settings.seed,
        },
        "reasoning_format": fmt,
        "verifier": settings.verifier,
        "prompts": len(prompts),
        "kept": len(kept),
        "dropped": len(prompts) - len(kept),
        "dropped_ids": [r["id"] for r in per_prompt if r["kept_sample"] is None],
        "samples": n_samples,
        "missing_samples": len(prompts) * settings.samples - n_samples,
        "correct": n_correct,
        "truncated": sum(r["truncated"] for r in per_prompt),
        "pass_rate": n_correct / n_samples if n_samples else None,
        "verifier_errors": errors,
        "requested": got.requested,
        "received": got.received,
        "failed": len(got.failures),
        "failures": got.failures[:20],
        "tokens": {"samples": _lengths(all_tokens), "kept": _lengths(kept_tokens)},
        "per_prompt": per_prompt,
    }
    return kept, stats


_VERIFY_CHUNK = 256


def _verify(
    collected: Sequence[_Collected],
    prompts: Sequence[PromptItem],
    settings: TeacherSettings,
    verify_fn: VerifyFn,
) -> list[dict[tuple[str, int], SampleRecord]]:
    """Verified records keyed by (prompt id, sample) of every sample that stopped by itself, per teacher."""
    fmt = settings.reasoning_format
    todo = [
        (i, (p.id, k, p.answer, dataclasses.replace(c, text=c.with_reasoning(fmt))))
        for i, got in enumerate(collected)
        for p in prompts
        for k in range(settings.samples)
        if (c := got.sample(digest(p.prompt), k)) is not None and c.finish_reason == "stop"
    ]
    pool = VerifierPool(verify_fn, timeout=settings.verify_timeout)
    records: list[SampleRecord] = []
    try:
        with bar("verify", total=len(todo), unit="samples") as progress:
            for start in range(0, len(todo), _VERIFY_CHUNK):
                chunk = todo[start : start + _VERIFY_CHUNK]
                records += verify_samples(pool, [sample for _, sample in chunk])
                progress.advance(len(chunk))
    finally:
        pool.close()
    out: list[dict[tuple[str, int], SampleRecord]] = [{} for _ in collected]
    for (i, _), record in zip(todo, records, strict=True):
        out[i][(record.id, record.sample)] = record
    return out


def collect_traces(
    prompts_path: str | Path, specs: Sequence[BackendSpec], out: str | Path, settings: TeacherSettings
) -> dict[str, Any]:
    """Run the whole command; returns the content of OUT/stats.json."""
    out = Path(out)
    prompts = load_prompts(prompts_path)
    params = settings.sampling()
    verify_fn = load_verifier(settings.verifier)
    backends = [make_backend(spec, settings.backend_options(spec.name)) for spec in specs]
    for backend in backends:  # every teacher is checked before hours are spent on the first
        backend.prepare()
    with _exclusive(out):
        collected = [_collect_one(s, b, prompts, out, params) for s, b in zip(specs, backends, strict=True)]
        verdicts = _verify(collected, prompts, settings, verify_fn)
        combined: list[Example] = []
        summary: dict[str, Any] = {"prompts": len(prompts), "teachers": {}}
        # Every teacher is selected (and its verifier errors checked) before any corpus is written.
        selected = [_select(got, prompts, settings, v) for got, v in zip(collected, verdicts, strict=True)]
        for got, (kept, stats) in zip(collected, selected, strict=True):
            write_corpus(out / got.spec.name / "corpus.jsonl", kept)
            write_json(out / got.spec.name / "stats.json", stats)
            combined += [dataclasses.replace(e, id=f"{got.spec.name}/{e.id}") for e in kept]
            summary["teachers"][got.spec.name] = {k: v for k, v in stats.items() if k != "per_prompt"}
        write_corpus(out / "corpus.jsonl", combined)
        write_json(out / "stats.json", summary)
    return summary
