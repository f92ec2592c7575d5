"""The resumable sample store: one JSON line per teacher sample, appended durably as it arrives.

A sample's key is (teacher, prompt hash, sample index, generation hash). The generation hash
covers the model and every sampling parameter, so changing one starts a separate key space in
the same file; the number of samples per prompt is not part of it, so asking for more samples
later only tops prompts up. A rerun after a kill sends exactly the requests whose key is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from t3s.fingerprint import digest
from t3s.generation import SamplingParams
from t3s.io import append_jsonl, read_jsonl
from t3s.teacher.specs import Job, Trace


def generation_hash(model: str, params: SamplingParams) -> str:
    return digest(model, params.temperature, params.top_p, params.max_new_tokens, params.seed)


class SampleStore:
    """The samples of one teacher under one generation hash, read from and appended to a JSONL file."""

    def __init__(self, path: str | Path, teacher: str, generation: str) -> None:
        self.path = Path(path)
        self.teacher, self.generation = teacher, generation
        self.samples: dict[tuple[str, int], Trace] = {}
        for row in read_jsonl(self.path):
            if row.get("teacher") == teacher and row.get("generation") == generation:
                # First wins: a key is written once by construction, and never replaced.
                self.samples.setdefault((row["prompt_hash"], row["sample"]), _trace(row))

    def add(self, job: Job, sample: int, trace: Trace) -> None:
        key = (job.prompt_hash, sample)
        if key in self.samples:
            return
        append_jsonl(
            self.path,
            {
                "teacher": self.teacher,
                "generation": self.generation,
                "prompt_hash": job.prompt_hash,
                "sample": sample,
                "prompt_id": job.prompt_id,
                "content": trace.content,
                "reasoning": trace.reasoning,
                "num_tokens": trace.num_tokens,
                "finish_reason": trace.finish_reason,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        self.samples[key] = trace


def _trace(row: dict[str, Any]) -> Trace:
    return Trace(row["content"], row.get("reasoning"), row.get("num_tokens"), row["finish_reason"])
