"""Python-function teachers for `t3s teacher --teacher NAME=python:t3s.testbed.teachers:FN`.

Each writes the exact trace of its style for the problem in the prompt; the testbed's teachers
are reliable by construction, so every sample is correct and the pipeline keeps one per prompt.
"""

from __future__ import annotations

import random

from t3s.data import Prompt
from t3s.testbed.task import STYLES, parse_prompt


def _text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def reverse(prompt: Prompt, *, sample: int, rng: random.Random) -> str:
    return STYLES["reverse"](parse_prompt(_text(prompt)))


def columns(prompt: Prompt, *, sample: int, rng: random.Random) -> str:
    return STYLES["columns"](parse_prompt(_text(prompt)))


def running(prompt: Prompt, *, sample: int, rng: random.Random) -> str:
    return STYLES["running"](parse_prompt(_text(prompt)))
