"""Generate answers for prompts and verify them against gold answers: training accuracy and evals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from t3s.generation import Backend, SamplingParams
from t3s.verify import VerifierPool


@dataclass(frozen=True)
class SampleRecord:
    id: str
    sample: int
    completion: str
    extracted: str | None
    correct: bool
    num_tokens: int
    finish_reason: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_and_verify(
    backend: Backend,
    ids: Sequence[str],
    prompts: Sequence[list[int]],
    golds: Sequence[str],
    params: SamplingParams,
    verifier: VerifierPool,
) -> list[SampleRecord]:
    """`params.n` samples per prompt, each verified; a truncated sample is never correct."""
    completions = backend.generate(prompts, params)
    flat = [(i, k, c) for i, cs in enumerate(completions) for k, c in enumerate(cs)]
    verdicts = verifier.verify([(golds[i], c.text) for i, _, c in flat])
    return [
        SampleRecord(
            id=ids[i],
            sample=k,
            completion=c.text,
            extracted=v.extracted,
            correct=v.correct and c.finish_reason == "stop",
            num_tokens=c.num_tokens,
            finish_reason=c.finish_reason,
            error=v.error,
        )
        for (i, k, c), v in zip(flat, verdicts, strict=True)
    ]


def accuracy(records: Sequence[SampleRecord]) -> float:
    """Mean correctness over all samples (avg@k)."""
    return sum(r.correct for r in records) / len(records) if records else float("nan")
