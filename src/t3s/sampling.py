"""Generate answers for prompts and verify them against gold answers: training accuracy and evals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from t3s.errors import T3SError
from t3s.generation import Backend, Completion, SamplingParams
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
    stop_token: str | None = None  # the token that ended a "stop" sample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_samples(
    verifier: VerifierPool, samples: Sequence[tuple[str, int, str, Completion]]
) -> list[SampleRecord]:
    """Verify (problem id, sample index, gold answer, completion) tuples; a truncated sample is never correct."""
    verdicts = verifier.verify([(gold, c.text) for _, _, gold, c in samples])
    return [
        SampleRecord(
            id=id_,
            sample=k,
            completion=c.text,
            extracted=v.extracted,
            correct=v.correct and c.finish_reason == "stop",
            num_tokens=c.num_tokens,
            finish_reason=c.finish_reason,
            error=v.error,
            stop_token=c.stop_token,
        )
        for (id_, k, _, c), v in zip(samples, verdicts, strict=True)
    ]


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
    return verify_samples(
        verifier, [(ids[i], k, golds[i], c) for i, cs in enumerate(completions) for k, c in enumerate(cs)]
    )


def accuracy(records: Sequence[SampleRecord]) -> float:
    """Mean correctness over all samples (avg@k)."""
    return sum(r.correct for r in records) / len(records) if records else float("nan")


class Checked(Protocol):
    """A verdict, a sample record or a grouping: anything a verifier may have failed on."""

    @property
    def error(self) -> str | None: ...


def check_verifier_errors(
    records: Sequence[Checked], limit: float, where: str, setting: str, what: str = "verdicts"
) -> int:
    """How many `records` the verifier failed on (it raised or timed out; neither right nor wrong).

    More than a `limit` fraction of them is a T3SError naming `where` and the first error.
    A broken verifier would otherwise score every answer wrong: 0% accuracy everywhere, which the
    probe would read as its bottleneck. `setting` names the knob that raises the limit.
    """
    errors = [r.error for r in records if r.error is not None]
    if records and len(errors) > limit * len(records):
        raise T3SError(
            f"{where}: {len(errors)} of {len(records)} {what} ({len(errors) / len(records):.0%}) are "
            f"verifier errors (first: {' '.join(errors[0].split())}); fix the verifier or raise {setting}"
        )
    return len(errors)
