"""Greedy accuracy of a testbed model, and the competence gate.

The gate asks whether distillation will be a shock or a fresh start: the base student's accuracy
when the first words of the teacher's style are forced on it, next to its accuracy in its own
style. A gate far below the own-style accuracy means the teacher's way of writing needs skills
the student lacks (TESTBED-NOTES.md: column addition gated at 0.19 against 0.92).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from t3s.testbed.task import STYLE_PREFIX, Numbers, problem_id, prompt, verify
from t3s.verify import Verdict


def verify_forced(prefix: str, gold: str, completion: str) -> Verdict:
    """The testbed's verdict on a whole answer: the forced prefix, then what the model wrote."""
    return verify(gold, prefix + completion)


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Numbers],
    prefix: str = "",
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> tuple[float, list[str]]:
    """Greedy accuracy on `problems`, the answer forced to start with `prefix`; also the answers."""
    from t3s.backends import BackendOptions, make_backend
    from t3s.generation import SamplingParams
    from t3s.sampling import accuracy, sample_and_verify
    from t3s.tokens import encode_prompt
    from t3s.verify import VerifierPool

    # The prefix is tokenized on its own, as a response is in training, so the boundary matches.
    forced = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    prompts = [encode_prompt(tokenizer, prompt(p), "plain") + forced for p in problems]
    options = BackendOptions(template="plain", batch_size=batch_size, progress="greedy accuracy")
    backend = make_backend(model, options, tokenizer=tokenizer)
    pool = VerifierPool(functools.partial(verify_forced, prefix))
    try:
        records = sample_and_verify(
            backend,
            [problem_id(p) for p in problems],
            prompts,
            [str(sum(p)) for p in problems],
            SamplingParams(max_new_tokens=max_new_tokens),
            pool,
        ).records
    finally:
        pool.close()
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
