"""The generate-and-verify service: answers to prompts, verified against gold answers.

The probe's training accuracy, `t3s eval` and the testbed's competence gate all call
`sample_and_verify`; teachers verify their stored traces with `verify_samples`. A truncated sample
is never correct. With a store (`t3s.store`), every sample is appended as soon as the backend hands
it over and it is verified, keyed by (prompt id, prompt key, sample index) within the store's key
space; a rerun takes the stored samples and generates only the missing ones. A stored sample whose
gold answer or verifier changed, or whose verifier failed (raised or timed out), is verified again,
not generated again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.generation import Backend, Completion, Job, SamplingParams
from t3s.progress import Bar, bar
from t3s.store import SampleStore
from t3s.verify import VerifierPool


@dataclass(frozen=True)
class SampleRecord:
    id: str
    sample: int
    completion: str
    extracted: str | None
    correct: bool
    num_tokens: int | None
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


def _stored(row: dict[str, Any]) -> tuple[SampleRecord, Completion]:
    # Samples written before a field was added (stop_token) take its default.
    fields = {k: row[k] for k in SampleRecord.__dataclass_fields__ if k in row}
    return SampleRecord(**fields), Completion(
        row["completion"], row["num_tokens"], row["finish_reason"], row.get("stop_token")
    )


@dataclass(frozen=True)
class Sampled:
    records: list[SampleRecord]  # `params.n` per prompt, in prompt order
    generated: int  # how many of them were generated now (the rest came from the store)


class _Verifier:
    """The sink of the service: verifies what the backend hands over and keeps (and stores) it."""

    def __init__(
        self,
        verifier: VerifierPool,
        ids: Sequence[str],
        golds: Sequence[str],
        where: dict[tuple[str, str], int],
        store: SampleStore | None,
        extra: list[dict[str, Any]],
    ) -> None:
        self.verifier, self.ids, self.golds, self.where = verifier, ids, golds, where
        self.store, self.extra = store, extra
        self.done: dict[tuple[int, int], SampleRecord] = {}
        self.progress: Bar | None = None
        self.generated = 0

    def keep(self, records: Sequence[tuple[int, SampleRecord]]) -> None:
        for i, rec in records:
            self.done[(i, rec.sample)] = rec
            if self.store is not None:
                self.store.add({**rec.to_dict(), **self.extra[i]})

    def verify(self, samples: Sequence[tuple[int, int, Completion]]) -> list[tuple[int, SampleRecord]]:
        """(prompt index, sample index, completion) -> (prompt index, record)."""
        records = verify_samples(self.verifier, [(self.ids[i], k, self.golds[i], c) for i, k, c in samples])
        return [(i, rec) for (i, _, _), rec in zip(samples, records, strict=True)]

    def add(self, samples: Sequence[tuple[Job, int, Completion]]) -> None:
        self.keep(self.verify([(self.where[(job.id, job.key)], k, c) for job, k, c in samples]))
        self.generated += len(samples)
        if self.progress is not None:
            self.progress.advance(len(samples))

    def fail(self, job: Job, sample: int, error: str) -> None:
        raise T3SError(f"prompt {job.id!r}, sample {sample}: {error}")


def verify_key(verifier_spec: str, gold: str) -> str:
    """What a stored verdict was reached with: a sample whose key differs is verified again."""
    return digest(verifier_spec, gold)


def sample_and_verify(
    backend: Backend,
    ids: Sequence[str],
    prompts: Sequence[Any],
    golds: Sequence[str],
    params: SamplingParams,
    verifier: VerifierPool,
    *,
    store: SampleStore | None = None,
    verifier_spec: str = "",
    keys: Sequence[str] | None = None,
    progress: str | None = None,
) -> Sampled:
    """`params.n` verified samples per prompt; only those not in `store` are generated.

    A stored row carries its gold answer, the store's key space, the prompt's key (`keys`, default
    the hash of the prompt) and the hash of (`verifier_spec`, gold answer). `progress` labels a
    progress bar over the samples to generate.
    """
    n = params.n
    keys = [digest(p) for p in prompts] if keys is None else keys
    where = {(id_, key): i for i, (id_, key) in enumerate(zip(ids, keys, strict=True))}
    if len(where) < len(ids):
        raise T3SError("two prompts with the same id and prompt key would share their samples")
    extra = [
        {
            "answer": gold,
            **(store.space if store else {}),
            "prompt": key,
            "verify": verify_key(verifier_spec, gold),
        }
        for gold, key in zip(golds, keys, strict=True)
    ]
    sink = _Verifier(verifier, ids, golds, where, store, extra)
    if store is not None:
        stale = []
        for (id_, key, k), row in store.rows.items():
            i = where.get((id_, key))
            if i is None or not isinstance(k, int) or not 0 <= k < n:
                continue
            rec, completion = _stored(row)
            sink.done[(i, k)] = rec
            # A failed verdict is no verdict: verified again, e.g. once the verifier is fixed.
            if row.get("verify") != extra[i]["verify"] or rec.error is not None:
                stale.append((i, k, completion))
        sink.keep(sink.verify(stale))
    jobs = [
        Job(ids[i], prompts[i], keys[i], missing)
        for i in range(len(ids))
        if (missing := tuple(k for k in range(n) if (i, k) not in sink.done))
    ]
    if jobs:
        total = sum(len(j.samples) for j in jobs)
        with bar(progress, total=total, unit="samples") if progress else contextlib.nullcontext() as shown:
            sink.progress = shown
            backend.collect(jobs, params, sink)
    return Sampled([sink.done[(i, k)] for i in range(len(ids)) for k in range(n)], sink.generated)


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
