"""Greedy accuracy of a testbed model, and the competence gate.

The gate asks whether distillation will be a shock or a fresh start: the base student's accuracy
when the first words of the teacher's style are forced on it, next to its accuracy in its own
style. A gate far below the own-style accuracy means the teacher's way of writing needs skills
the student lacks (TESTBED-NOTES.md: column addition gated at 0.19 against 0.92).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from t3s.fingerprint import digest, model_fingerprint
from t3s.io import write_json
from t3s.rundir import RunDir
from t3s.stage import Attempt, Stage
from t3s.testbed.task import STYLE_PREFIX, Numbers, problem_id, prompt, verify
from t3s.verify import Verdict

if TYPE_CHECKING:
    from t3s.dllm.sampler import DiffusionSampling
    from t3s.sampling import SampleRecord


def verify_forced(prefix: str, gold: str, completion: str) -> Verdict:
    """The testbed's verdict on a whole answer: the forced prefix, then what the model wrote."""
    return verify(gold, prefix + completion)


def greedy_records(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Numbers],
    prefix: str = "",
    max_new_tokens: int = 48,
    batch_size: int = 64,
    diffusion: DiffusionSampling | None = None,
) -> list[SampleRecord]:
    """Greedy samples of `problems` with their verdicts, the answer forced to start with `prefix`.

    With `diffusion` settings `model` is a dLLM, sampled by denoising.
    """
    from t3s.backends import BackendOptions, make_backend
    from t3s.generation import SamplingParams
    from t3s.sampling import sample_and_verify
    from t3s.tokens import encode_prompt
    from t3s.verify import VerifierPool

    # The prefix is tokenized on its own, as a response is in training, so the boundary matches.
    forced = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    prompts = [encode_prompt(tokenizer, prompt(p), "plain") + forced for p in problems]
    options = BackendOptions(template="plain", batch_size=batch_size, progress="greedy accuracy")
    if diffusion is None:
        backend = make_backend(model, options, tokenizer=tokenizer)
    else:
        from t3s.dllm.sampler import diffusion_backend

        backend = diffusion_backend(model, tokenizer, diffusion, options)
    pool = VerifierPool(functools.partial(verify_forced, prefix))
    try:
        return sample_and_verify(
            backend,
            [problem_id(p) for p in problems],
            prompts,
            [str(sum(p)) for p in problems],
            SamplingParams(max_new_tokens=max_new_tokens),
            pool,
        ).records
    finally:
        pool.close()


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Numbers],
    prefix: str = "",
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> tuple[float, list[str]]:
    """Greedy accuracy on `problems`, the answer forced to start with `prefix`; also the answers."""
    from t3s.sampling import accuracy

    records = greedy_records(model, tokenizer, problems, prefix, max_new_tokens, batch_size)
    return accuracy(records), [prefix + r.completion for r in records]


def competence_gate(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Numbers],
    teacher: str,
    max_new_tokens: int = 48,
    own_accuracy: float | None = None,
) -> dict[str, Any]:
    """Own-style and forced-prefix accuracy; `own_accuracy` reuses a greedy score of the same problems."""
    if own_accuracy is None:
        own_accuracy, _ = greedy_accuracy(model, tokenizer, problems, max_new_tokens=max_new_tokens)
    forced, _ = greedy_accuracy(model, tokenizer, problems, STYLE_PREFIX[teacher], max_new_tokens)
    return {
        "teacher": teacher,
        "prefix": STYLE_PREFIX[teacher],
        "problems": len(problems),
        "own_style_accuracy": own_accuracy,
        "forced_teacher_prefix_accuracy": forced,
    }


class GateStage(Stage):
    """The competence gate of the run's θ0 into RUN/testbed/gate.json.

    `own_accuracy` is θ0's greedy held-out score from the chain's evaluation: the same problems.
    """

    name = "testbed:gate"

    def __init__(
        self, problems: Sequence[Numbers], teacher: str, max_new_tokens: int, own_accuracy: float
    ) -> None:
        self.problems, self.teacher = problems, teacher
        self.max_new_tokens, self.own_accuracy = max_new_tokens, own_accuracy

    def fingerprint(self, run: RunDir) -> str:
        return digest(
            model_fingerprint(run.base_model()),
            [list(p) for p in self.problems],
            self.teacher,
            self.max_new_tokens,
            self.own_accuracy,
        )

    def outputs_exist(self, run: RunDir) -> bool:
        return run.testbed_gate.exists()

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        import torch

        from t3s.models import load_model, load_tokenizer

        base = run.base_model()
        model = load_model(base, device=torch.device("cpu") if not torch.cuda.is_available() else None)
        gate = competence_gate(
            model, load_tokenizer(base), self.problems, self.teacher, self.max_new_tokens, self.own_accuracy
        )
        if attempt.main:
            write_json(run.testbed_gate, gate)
        return {"summary": gate}
