"""Greedy accuracy of a testbed model, and the competence gate.

The gate asks whether distillation will be a shock or a fresh start: the base student's accuracy
when the first words of the teacher's style are forced on it, next to its accuracy in its own
style. A gate far below the own-style accuracy means the teacher's way of writing needs skills
the student lacks (TESTBED-NOTES.md: column addition gated at 0.19 against 0.92).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from t3s.testbed.task import STYLE_PREFIX, Numbers, prompt, verify


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Numbers],
    prefix: str = "",
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> tuple[float, list[str]]:
    """Greedy accuracy on `problems`, the answer forced to start with `prefix`; also the answers."""
    from t3s.generation import SamplingParams, TransformersBackend
    from t3s.tokens import encode_prompt

    # The prefix is tokenized on its own, as a response is in training, so the boundary matches.
    forced = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    prompts = [encode_prompt(tokenizer, prompt(p), "plain") + forced for p in problems]
    backend = TransformersBackend(
        model, tokenizer, batch_size=batch_size, progress="greedy accuracy", template="plain"
    )
    outs = [o[0] for o in backend.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))]
    texts = [prefix + o.text for o in outs]
    correct = [
        verify(str(sum(p)), t).correct and o.finish_reason == "stop"
        for p, t, o in zip(problems, texts, outs, strict=True)
    ]
    return sum(correct) / len(correct), texts


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
